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
    "RECORD_NAMESPACE",
    "TRAINING_UNIT",
    "DeadLetter",
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
    reason: Literal["threshold", "manual"]
    count: int = Field(ge=0, description="Counted units in the range.")
    threshold: int = Field(ge=1)
    sequence: int = Field(ge=1, description="1, 2, 3... per domain.")
    range: TriggerRange
    emitted_at: AwareDatetime = Field(description="Time of the event that caused the trigger.")


# --- feedback.dlq --------------------------------------------------------------------------------


class DeadLetter(_Record):
    """A message a stage could not process, kept verbatim so it can be inspected and replayed."""

    stage: str
    reason: str
    error_type: str
    original: str = Field(description="Base64 of the original message bytes.")
    topic: str
    partition: int
    offset: int
    key: str | None = None
    failed_at: AwareDatetime

    def original_bytes(self) -> bytes:
        return base64.b64decode(self.original)


def dead_letter(
    *,
    stage: str,
    error: BaseException,
    original: bytes,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    failed_at: AwareDatetime,
) -> DeadLetter:
    """Build a DeadLetter from what a consumer has in hand (raw bytes and the exception)."""
    return DeadLetter(
        stage=stage,
        reason=str(error) or type(error).__name__,
        error_type=type(error).__name__,
        original=base64.b64encode(original).decode("ascii"),
        topic=topic,
        partition=partition,
        offset=offset,
        key=None if key is None else key.decode("utf-8", errors="backslashreplace"),
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


class TrainRequest(_Record):
    """``POST /v1/train``: force a trigger, ordered with the counts of its domain."""

    kind: Literal["train"] = "train"
    request_id: str
    tenant: str
    domain: str
    requested_at: AwareDatetime


UnitsMessage = Annotated[UnitsBatch | TrainRequest, Field(discriminator="kind")]
UNITS_MESSAGE: TypeAdapter[UnitsMessage] = TypeAdapter(UnitsMessage)


class StageResult(_Record):
    """What the counting stage did with one raw event or train request (keyed by request id)."""

    request_id: str
    event_id: str | None = None
    domain: str
    kind: Literal["units", "train"]
    units_generated: int = Field(ge=0)
    units_counted: int = Field(ge=0)
    pending: int = Field(ge=0)
    threshold: int = Field(ge=1)
    triggers: list[TrainTrigger] = Field(default_factory=list)


def record_json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of each output topic's value, keyed by the (unprefixed) topic name."""
    return {
        "feedback.signals": Signal.model_json_schema(),
        "feedback.triplets": TRAINING_UNIT.json_schema(),
        "train.triggers": TrainTrigger.model_json_schema(),
        "feedback.dlq": DeadLetter.model_json_schema(),
        "feedback.units": UNITS_MESSAGE.json_schema(),
        "feedback.results": StageResult.model_json_schema(),
    }
