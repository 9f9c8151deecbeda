"""The public messages of the output topics; their JSON Schemas are the contract with consumers.

Every id here is a uuid5 under one fixed namespace, derived from the event (never the wall clock
or randomness), so replaying ``feedback.raw`` reproduces the same records byte for byte.
"""

from __future__ import annotations

import base64
import uuid
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from pipeline.ids import uuid5_str

__all__ = [
    "MAX_RESULT_TRIGGERS",
    "RECORD_NAMESPACE",
    "TRAINING_UNIT",
    "DeadLetter",
    "DeadLetterReason",
    "Erasure",
    "PreferenceUnit",
    "ScoredUnit",
    "Signal",
    "SignalValue",
    "TrainTrigger",
    "TrainingUnit",
    "TriggerRange",
    "TripletOrigin",
    "TripletUnit",
    "dead_letter",
    "deterministic_id",
    "erasure_id",
    "record_json_schemas",
    "signal_id",
]

# uuid5(NAMESPACE_DNS, "records.feedstream"), written out so it can never drift.
RECORD_NAMESPACE = uuid.UUID("8337371b-0279-5c1c-aa9a-005deb23349a")

SignalValue = bool | float | str
TripletOrigin = Literal["ranking_outcome", "search_event"]
Weight = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def to_json(model: BaseModel) -> bytes:
    """JSON bytes of a record, straight from pydantic's serializer (the stream's hot path)."""
    return model.__pydantic_serializer__.to_json(model)


def deterministic_id(kind: str, *parts: str | int) -> str:
    """A uuid5 of a kind and its parts; each part is length-prefixed so no tuple aliases another."""
    name = "|".join(f"{len(s)}:{s}" for s in (kind, *(str(p) for p in parts)))
    return uuid5_str(RECORD_NAMESPACE, name)


def signal_id(*, event_id: str, subject: str, key: str) -> str:
    """One signal per (event, subject, key): an event may carry one outcome per candidate."""
    return deterministic_id("signal", event_id, subject, key)


class _Record(BaseModel):
    """Output records are immutable and reject unknown fields, so the schema is the whole truth."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- feedback.signals ----------------------------------------------------------------------------


class Signal(_Record):
    """One scalar piece of feedback about one subject, whatever contract it arrived through."""

    signal_id: str
    event_id: str
    tenant: str
    domain: str
    contract: str = Field(description="The contract of the raw event (e.g. ranking_outcome).")
    key: str = Field(description="Flattened dot key, or a field name such as outcome/score/event_type.")
    value: SignalValue
    reason: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    optimize: Literal["max", "min"] | None = None
    subject: str = Field(description="What the signal is about: inference id, seeker->candidate, case...")
    received_at: AwareDatetime


# --- feedback.triplets ---------------------------------------------------------------------------


class _Unit(_Record):
    unit_id: str = Field(description="Deterministic: a replay yields the same id.")
    domain: str
    tenant: str | None = Field(description="None when the unit belongs to the shared pool.")
    event_id: str = Field(description="The raw event that produced this unit.")
    received_at: AwareDatetime
    counts: bool = Field(description="Whether the unit advances the domain's train threshold.")


class TripletUnit(_Unit):
    """anchor prefers positive over negative, pulled by ``weight``."""

    kind: Literal["triplet"] = "triplet"
    anchor: str
    positive: str
    negative: str
    weight: Weight
    origin: TripletOrigin


class PreferenceUnit(_Unit):
    """A correction: for ``anchor`` the corrected output is chosen over the original one."""

    kind: Literal["preference"] = "preference"
    anchor: str = Field(description="module:case_id")
    chosen: Any = Field(description="The corrected output.")
    rejected: Any = Field(description="The original output.")
    weight: Weight = 1.0


class ScoredUnit(_Unit):
    """A scored input/output pair (seed 003); seed-sourced entries train but do not count."""

    kind: Literal["scored"] = "scored"
    task_id: str
    inputs: dict[str, Any] | None = None
    output: str | None = None
    score: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    source: str
    metadata: dict[str, Any] | None = None


TrainingUnit = Annotated[TripletUnit | PreferenceUnit | ScoredUnit, Field(discriminator="kind")]
TRAINING_UNIT: TypeAdapter[TrainingUnit] = TypeAdapter(TrainingUnit)


# --- train.triggers ------------------------------------------------------------------------------


class TriggerRange(_Record):
    """Where the trainer finds the units of this trigger: one partition, offsets inclusive."""

    topic: str = Field(default="feedback.triplets", description="feedback.triplets (with any TOPIC_PREFIX).")
    partition: int = Field(ge=0)
    start_offset: int = Field(ge=0)
    end_offset: int = Field(ge=0, description="Inclusive.")


class TrainTrigger(_Record):
    """Ask the trainer to fine-tune a domain on the units in ``range``."""

    trigger_id: str = Field(description="uuid5 of (domain, sequence).")
    domain: str
    reason: Literal["threshold", "manual", "repartition"] = Field(
        description="threshold: pending reached it; manual: POST /v1/train; repartition: the domain's "
        "units moved to another partition of feedback.triplets, so the open range was closed."
    )
    count: int = Field(ge=0, description="Counted units in the range.")
    threshold: int = Field(ge=1)
    sequence: int = Field(ge=1, description="1, 2, 3... per domain.")
    range: TriggerRange
    emitted_at: AwareDatetime = Field(description="Time of the event that caused the trigger.")


# --- feedback.dlq --------------------------------------------------------------------------------


DeadLetterReason = Literal["schema_violation", "processing_failure", "size_violation"]
#: What a dead letter's ``error`` text is cut to (an exception's message may quote its input).
MAX_DEAD_LETTER_ERROR_CHARS = 4096


class DeadLetter(_Record):
    """A message a stage could not process, kept verbatim (or its head, if it could not fit) for replay."""

    stage: str
    reason: DeadLetterReason = Field(
        description="schema_violation: undecodable or invalid input; processing_failure: a rule "
        "raised; size_violation: an output the input produced is over its topic's size limit."
    )
    error_type: str
    error: str = Field(description="The error's message (at most 4096 characters).")
    original: str = Field(description="Base64 of the original message bytes (see original_truncated).")
    original_size: int = Field(ge=0, description="Length of the original message in bytes.")
    original_truncated: bool = Field(
        default=False, description="True when only the head of the original fits the dead-letter topic."
    )
    topic: str
    partition: int
    offset: int
    key: str | None = Field(default=None, description="The original key as text (its head if over 16 KiB).")
    failed_at: AwareDatetime

    def original_bytes(self) -> bytes:
        return base64.b64decode(self.original)


#: Longest key text a dead letter keeps (the record's own key is cut the same way).
MAX_DEAD_LETTER_KEY_BYTES = 16 * 1024


def dead_letter(
    *,
    stage: str,
    reason: DeadLetterReason,
    error: BaseException,
    original: bytes,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    failed_at: AwareDatetime,
    max_original_bytes: int | None = None,
) -> DeadLetter:
    """Build a DeadLetter from what a consumer has in hand (raw bytes and the exception).

    ``max_original_bytes`` keeps only the head of a bigger original (``original_truncated``).
    """
    kept = original if max_original_bytes is None else original[: max(0, max_original_bytes)]
    message = str(error) or type(error).__name__
    return DeadLetter(
        stage=stage,
        reason=reason,
        error_type=type(error).__name__,
        error=message[:MAX_DEAD_LETTER_ERROR_CHARS],
        original=base64.b64encode(kept).decode("ascii"),
        original_size=len(original),
        original_truncated=len(kept) < len(original),
        topic=topic,
        partition=partition,
        offset=offset,
        key=None
        if key is None
        else key[:MAX_DEAD_LETTER_KEY_BYTES].decode("utf-8", errors="backslashreplace"),
        failed_at=failed_at,
    )


# --- feedback.units and feedback.results (internal: between the stages, and back to the ingest) ---


class UnitsBatch(_Record):
    """The training units one raw event produced, routed by domain to the counting stage."""

    kind: Literal["units"] = "units"
    request_id: str
    event_id: str
    tenant: str | None
    domain: str
    contract: str
    received_at: AwareDatetime
    units: list[TrainingUnit] = Field(default_factory=list)
    reply: bool = Field(default=True, description="False for copies (the shared pool): no result.")
    chunk: int = Field(default=0, ge=0, description="Index of this message among the event's chunks.")
    chunks: int = Field(
        default=1, ge=1, description="Messages the event's units were split into (each under a byte budget)."
    )
    request_events: int | None = Field(
        default=None, ge=1, description="Raw events of the request, when the envelope says (completeness)."
    )


class TrainRequest(_Record):
    """``POST /v1/train``: force a trigger, ordered with the counts of its domain."""

    kind: Literal["train"] = "train"
    request_id: str
    tenant: str
    domain: str
    requested_at: AwareDatetime


UnitsMessage = Annotated[UnitsBatch | TrainRequest, Field(discriminator="kind")]
UNITS_MESSAGE: TypeAdapter[UnitsMessage] = TypeAdapter(UnitsMessage)


#: Triggers a result carries at most (the last ones); ``triggers_total`` says how many there were.
MAX_RESULT_TRIGGERS = 16


class StageResult(_Record):
    """What the counting stage did with one chunk of a raw event's units, or a train request.

    An event whose units were split into ``chunks`` messages has one result per chunk (its
    ``units_generated`` counts that chunk's units); the event is done once every chunk's result is in.
    """

    request_id: str
    event_id: str | None = None
    domain: str
    kind: Literal["units", "train"]
    units_generated: int = Field(ge=0)
    units_counted: int = Field(ge=0)
    pending: int = Field(ge=0)
    threshold: int = Field(ge=1)
    triggers: list[TrainTrigger] = Field(
        default_factory=list, description="The last (at most 16) triggers this chunk caused, in order."
    )
    triggers_total: int = Field(default=0, ge=0, description="All triggers this chunk caused.")
    chunk: int = Field(default=0, ge=0)
    chunks: int = Field(default=1, ge=1)
    request_events: int | None = Field(default=None, ge=1, description="Raw events of the request, if known.")


class Erasure(BaseModel):
    """A feedback entry erased by its tenant (``DELETE /api/v1/feedback/{id}``): the store removes it
    and keeps a deleted marker; trainers drop the units whose ``event_id`` is ``entry_id``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["erasure"] = "erasure"
    erasure_id: str = Field(description="uuid5 of the entry id: one erasure per entry, however often asked.")
    tenant: str
    entry_id: str = Field(description="The erased entry (seed 003 `id`, the raw event's `event_id`).")
    task_id: str = Field(description="The entry's task (its domain on the other topics).")
    requested_at: AwareDatetime
    request_id: str
    correlation_id: str


def erasure_id(entry_id: str) -> str:
    return deterministic_id("erasure", entry_id)


def record_json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of each output topic's value, keyed by the (unprefixed) topic name."""
    return {
        "feedback.signals": Signal.model_json_schema(),
        "feedback.triplets": TRAINING_UNIT.json_schema(),
        "train.triggers": TrainTrigger.model_json_schema(),
        "feedback.dlq": DeadLetter.model_json_schema(),
        "feedback.units": UNITS_MESSAGE.json_schema(),
        "feedback.results": StageResult.model_json_schema(),
        "feedback.erasures": Erasure.model_json_schema(),
    }
