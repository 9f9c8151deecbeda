"""The public messages of the output topics; their JSON Schemas are the contract with consumers.

Every id here is a uuid5 under one fixed namespace, derived from the event (never the wall clock
or randomness), so replaying ``feedback.raw`` reproduces the same records byte for byte.

The records are frozen msgspec ``Struct``s (unknown fields refused, tagged unions on ``kind``),
encoded and decoded straight from bytes by module-level encoders and decoders: the stream builds
and writes several of them per event, and pydantic cost it about a sixth of its CPU. msgspec checks
the ``Meta`` constraints (``ge``, ``le``, aware times) when it *decodes*, not when a record is
built: the rules that build a record from a value a wire event can carry check it themselves
(:func:`pipeline.rules.triplets.scored_unit`, the finite weights of ``expand_outcomes``).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, TypeAlias, TypeVar, cast

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from pipeline.ids import uuid5_namer

__all__ = [
    "MAX_RESULT_TRIGGERS",
    "RECORD_NAMESPACE",
    "TRAINING_UNIT",
    "UNITS_MESSAGE",
    "AwareDatetime",
    "DeadLetter",
    "DeadLetterReason",
    "Erasure",
    "InputOffset",
    "PreferenceUnit",
    "RawUnitsBatch",
    "ScoredUnit",
    "Signal",
    "SignalValue",
    "SpanId",
    "StageResult",
    "TraceId",
    "TrainRequest",
    "TrainTrigger",
    "TrainingUnit",
    "TriggerRange",
    "TripletOrigin",
    "TripletUnit",
    "UnitsBatch",
    "UnitsMessage",
    "dead_letter",
    "decoder",
    "deterministic_id",
    "erasure_id",
    "from_json",
    "input_offset_key",
    "input_offset_topic",
    "latest_training",
    "record_json_schemas",
    "record_uuid5",
    "signal_id",
    "to_builtins",
    "to_json",
]

# uuid5(NAMESPACE_DNS, "records.feedstream"), written out so it can never drift.
RECORD_NAMESPACE = uuid.UUID("8337371b-0279-5c1c-aa9a-005deb23349a")

SignalValue: TypeAlias = bool | float | str
TripletOrigin: TypeAlias = Literal["ranking_outcome", "search_event"]
#: A time with a zone (decoding refuses a naive one); UTC is written with ``Z``, as pydantic did.
AwareDatetime: TypeAlias = Annotated[datetime, Meta(tz=True)]
Weight: TypeAlias = Annotated[float, Meta(ge=0)]
#: The trace of the LLM call feedback is about (seeds 002, 003), when the caller named it: absent
#: otherwise (msgspec omits UNSET fields), so records without one are what they always were.
TraceId: TypeAlias = Annotated[str, Meta(description="W3C trace id of the call the feedback is about.")]
SpanId: TypeAlias = Annotated[str, Meta(description="W3C span id of that call within its trace.")]

_ENCODER = msgspec.json.Encoder()
R = TypeVar("R")


def to_json(record: Struct) -> bytes:
    """JSON bytes of a record (the stream's hot path: one C call, no intermediate dict)."""
    return _ENCODER.encode(record)


def to_builtins(record: Struct) -> Any:
    """A record as JSON-ready Python values (dicts, lists, ``Z`` times as strings): for answers."""
    return msgspec.to_builtins(record)


_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def decoder(type_: type[R]) -> msgspec.json.Decoder[R]:
    """The (cached) JSON decoder of a record type or union; raises ``msgspec.ValidationError``."""
    dec = _DECODERS.get(type_)
    if dec is None:
        dec = _DECODERS[type_] = msgspec.json.Decoder(type_)
    return dec


def from_json(type_: type[R], data: bytes | str) -> R:
    """Decode and validate ``data`` as ``type_`` (a ``msgspec.ValidationError``, a ValueError, if not)."""
    return decoder(type_).decode(data)


#: ``name -> uuid5(RECORD_NAMESPACE, name)``: every id below (a hot path may build its name itself).
record_uuid5 = uuid5_namer(RECORD_NAMESPACE)


def deterministic_id(kind: str, *parts: str | int) -> str:
    """A uuid5 of a kind and its parts; each part is length-prefixed so no tuple aliases another."""
    name = f"{len(kind)}:{kind}"
    for part in parts:
        s = part if part.__class__ is str else str(part)
        name += f"|{len(s)}:{s}"
    return record_uuid5(name)


def signal_id(*, event_id: str, subject: str, key: str) -> str:
    """One signal per (event, subject, key): an event may carry one outcome per candidate."""
    return deterministic_id("signal", event_id, subject, key)


class _Record(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Output records are immutable and reject unknown fields, so the schema is the whole truth."""


def _tag(record: Struct) -> str:
    return cast(str, type(record).__struct_config__.tag)


# --- feedback.signals ----------------------------------------------------------------------------


class Signal(_Record, frozen=True, kw_only=True):
    """One scalar piece of feedback about one subject, whatever contract it arrived through."""

    signal_id: str
    event_id: str
    tenant: str
    domain: str
    contract: Annotated[str, Meta(description="The contract of the raw event (e.g. ranking_outcome).")]
    key: Annotated[
        str, Meta(description="Flattened dot key, or a field name such as outcome/score/event_type.")
    ]
    value: SignalValue
    reason: str | None = None
    tags: dict[str, str] = {}
    optimize: Literal["max", "min"] | None = None
    subject: Annotated[
        str, Meta(description="What the signal is about: inference id, seeker->candidate, case...")
    ]
    received_at: AwareDatetime
    trace_id: TraceId | UnsetType = UNSET
    span_id: SpanId | UnsetType = UNSET


# --- feedback.triplets ---------------------------------------------------------------------------


class _Unit(_Record, frozen=True, kw_only=True, tag_field="kind"):
    unit_id: Annotated[str, Meta(description="Deterministic: a replay yields the same id.")]
    domain: str
    tenant: Annotated[str | None, Meta(description="None when the unit belongs to the shared pool.")]
    event_id: Annotated[str, Meta(description="The raw event that produced this unit.")]
    received_at: AwareDatetime
    counts: Annotated[bool, Meta(description="Whether the unit advances the domain's train threshold.")]

    @property
    def kind(self) -> str:
        """The unit's kind (the ``kind`` tag on the wire)."""
        return _tag(self)


class TripletUnit(_Unit, frozen=True, kw_only=True, tag="triplet"):
    """anchor prefers positive over negative, pulled by ``weight``."""

    anchor: str
    positive: str
    negative: str
    weight: Weight
    origin: TripletOrigin


class PreferenceUnit(_Unit, frozen=True, kw_only=True, tag="preference"):
    """A correction: for ``anchor`` the corrected output is chosen over the original one."""

    anchor: Annotated[str, Meta(description="module:case_id")]
    chosen: Annotated[Any, Meta(description="The corrected output.")]
    rejected: Annotated[Any, Meta(description="The original output.")]
    weight: Weight = 1.0


class ScoredUnit(_Unit, frozen=True, kw_only=True, tag="scored"):
    """A scored input/output pair (seed 003); seed-sourced entries train but do not count."""

    task_id: str
    inputs: dict[str, Any] | None = None
    output: str | None = None
    score: Annotated[float, Meta(ge=0, le=1)] | None = None
    source: str
    metadata: dict[str, Any] | None = None
    trace_id: TraceId | UnsetType = UNSET
    span_id: SpanId | UnsetType = UNSET


TrainingUnit: TypeAlias = TripletUnit | PreferenceUnit | ScoredUnit
#: Decodes one ``feedback.triplets`` value (tagged by ``kind``).
TRAINING_UNIT: msgspec.json.Decoder[TrainingUnit] = msgspec.json.Decoder(TrainingUnit)


# --- train.triggers ------------------------------------------------------------------------------


class TriggerRange(_Record, frozen=True, kw_only=True):
    """Where the trainer finds the units of this trigger: one partition, offsets inclusive."""

    topic: Annotated[str, Meta(description="feedback.triplets (with any TOPIC_PREFIX).")] = (
        "feedback.triplets"
    )
    partition: Annotated[int, Meta(ge=0)]
    start_offset: Annotated[int, Meta(ge=0)]
    end_offset: Annotated[int, Meta(ge=0, description="Inclusive.")]


class TrainTrigger(_Record, frozen=True, kw_only=True):
    """Ask the trainer to fine-tune a domain on the units in ``range``."""

    trigger_id: Annotated[str, Meta(description="uuid5 of (domain, sequence).")]
    domain: str
    reason: Annotated[
        Literal["threshold", "manual", "repartition", "max_wait"],
        Meta(
            description="threshold: pending reached it; manual: POST /v1/train; repartition: the domain's "
            "units moved to another partition of feedback.triplets, so the open range was closed; "
            "max_wait: the oldest pending unit waited the domain's max_wait (with min_units pending)."
        ),
    ]
    count: Annotated[int, Meta(ge=0, description="Counted units in the range.")]
    threshold: Annotated[int, Meta(ge=1)]
    sequence: Annotated[int, Meta(ge=1, description="1, 2, 3... per domain.")]
    range: TriggerRange
    emitted_at: Annotated[datetime, Meta(tz=True, description="Time of the event that caused the trigger.")]


# --- feedback.dlq --------------------------------------------------------------------------------


DeadLetterReason: TypeAlias = Literal["schema_violation", "processing_failure", "size_violation"]
#: What a dead letter's ``error`` text is cut to (an exception's message may quote its input).
MAX_DEAD_LETTER_ERROR_CHARS = 4096


class DeadLetter(_Record, frozen=True, kw_only=True):
    """A message a stage could not process, kept verbatim (or its head, if it could not fit) for replay."""

    stage: str
    reason: Annotated[
        DeadLetterReason,
        Meta(
            description="schema_violation: undecodable or invalid input; processing_failure: a rule "
            "raised; size_violation: an output the input produced is over its topic's size limit."
        ),
    ]
    error_type: str
    error: Annotated[str, Meta(description="The error's message (at most 4096 characters).")]
    original: Annotated[
        str, Meta(description="Base64 of the original message bytes (see original_truncated).")
    ]
    original_size: Annotated[int, Meta(ge=0, description="Length of the original message in bytes.")]
    original_truncated: Annotated[
        bool, Meta(description="True when only the head of the original fits the dead-letter topic.")
    ] = False
    topic: str
    partition: int
    offset: int
    key: Annotated[str | None, Meta(description="The original key as text (its head if over 16 KiB).")] = None
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
    failed_at: datetime,
    max_original_bytes: int | None = None,
) -> DeadLetter:
    """Build a DeadLetter from what a consumer has in hand (raw bytes and the exception).

    ``max_original_bytes`` keeps only the head of a bigger original (``original_truncated``).
    """
    if failed_at.tzinfo is None:
        raise ValueError("failed_at needs a time zone")
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


#: Headers of a dead letter (Kafka Connect's ``__connect.errors.*`` in our namespace): what tools filter
#: on without decoding the body. The original record's own headers follow them, unchanged.
DLQ_HEADER = "feedstream.dlq."
#: The header a replayed record carries: ``<dlq partition>:<dlq offset>`` of its dead letter.
REPLAY_HEADER = "feedstream.replay.of"
#: What the exception message header is cut to (the body keeps 4096 characters).
MAX_DLQ_HEADER_MESSAGE_BYTES = 512


def dead_letter_headers(
    letter: DeadLetter, original: Sequence[tuple[str, bytes]] = ()
) -> list[tuple[str, bytes]]:
    """The typed headers of ``letter``, then the original record's headers (ours dropped: a replayed
    record that fails again gets fresh ones)."""
    return [
        (DLQ_HEADER + "stage", letter.stage.encode()),
        (DLQ_HEADER + "reason", letter.reason.encode()),
        (DLQ_HEADER + "topic", letter.topic.encode()),
        (DLQ_HEADER + "partition", str(letter.partition).encode()),
        (DLQ_HEADER + "offset", str(letter.offset).encode()),
        (DLQ_HEADER + "exception.class", letter.error_type.encode()),
        (
            DLQ_HEADER + "exception.message",
            letter.error.encode()[:MAX_DLQ_HEADER_MESSAGE_BYTES].decode("utf-8", "ignore").encode(),
        ),
        *original_headers(original),
    ]


def original_headers(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """A dead letter's headers without ours (typed and replay): the original record's, to replay."""
    return [(k, v) for k, v in headers if not k.startswith(DLQ_HEADER) and k != REPLAY_HEADER]


# --- feedback.units and feedback.results (internal: between the stages, and back to the ingest) ---


class UnitsBatch(_Record, frozen=True, kw_only=True, tag_field="kind", tag="units"):
    """The training units one raw event produced, routed by domain to the counting stage."""

    request_id: str
    event_id: str
    tenant: str | None
    domain: str
    contract: str
    received_at: AwareDatetime
    units: list[TrainingUnit] = []
    reply: Annotated[bool, Meta(description="False for copies (the shared pool): no result.")] = True
    chunk: Annotated[int, Meta(ge=0, description="Index of this message among the event's chunks.")] = 0
    chunks: Annotated[
        int, Meta(ge=1, description="Messages the event's units were split into (each under a byte budget).")
    ] = 1
    request_events: (
        Annotated[
            int, Meta(ge=1, description="Raw events of the request, when the envelope says (completeness).")
        ]
        | None
    ) = None

    @property
    def kind(self) -> str:
        return _tag(self)


class RawUnitsBatch(UnitsBatch, frozen=True, kw_only=True, tag="units"):
    """A :class:`UnitsBatch` whose units stay JSON (``msgspec.Raw``): the count stage reads the
    batch and passes each unit's bytes through to ``feedback.triplets`` as they came; the expand
    stage writes chunks from units it encoded once. Same wire format as UnitsBatch."""

    units: list[msgspec.Raw] = []  # type: ignore[assignment]


class TrainRequest(_Record, frozen=True, kw_only=True, tag_field="kind", tag="train"):
    """``POST /v1/train``: force a trigger, ordered with the counts of its domain."""

    request_id: str
    tenant: str
    domain: str
    requested_at: AwareDatetime

    @property
    def kind(self) -> str:
        return _tag(self)


UnitsMessage: TypeAlias = UnitsBatch | TrainRequest
#: Decodes one ``feedback.units`` value (tagged by ``kind``), units decoded too.
UNITS_MESSAGE: msgspec.json.Decoder[UnitsMessage] = msgspec.json.Decoder(UnitsMessage)


#: Triggers a result carries at most (the last ones); ``triggers_total`` says how many there were.
MAX_RESULT_TRIGGERS = 16


class StageResult(_Record, frozen=True, kw_only=True):
    """What the counting stage did with one chunk of a raw event's units, or a train request.

    An event whose units were split into ``chunks`` messages has one result per chunk (its
    ``units_generated`` counts that chunk's units); the event is done once every chunk's result is in.
    """

    request_id: str
    event_id: str | None = None
    domain: str
    kind: Literal["units", "train"]
    units_generated: Annotated[int, Meta(ge=0)]
    units_counted: Annotated[int, Meta(ge=0)]
    pending: Annotated[int, Meta(ge=0)]
    threshold: Annotated[int, Meta(ge=1)]
    triggers: Annotated[
        list[TrainTrigger], Meta(description="The last (at most 16) triggers this chunk caused, in order.")
    ] = []
    triggers_total: Annotated[int, Meta(ge=0, description="All triggers this chunk caused.")] = 0
    chunk: Annotated[int, Meta(ge=0)] = 0
    chunks: Annotated[int, Meta(ge=1)] = 1
    request_events: Annotated[int, Meta(ge=1, description="Raw events of the request, if known.")] | None = (
        None
    )


class Erasure(_Record, frozen=True, kw_only=True, tag_field="kind", tag="erasure"):
    """A feedback entry erased by its tenant (``DELETE /api/v1/feedback/{id}``): the store removes it
    and keeps a deleted marker; trainers drop the units whose ``event_id`` is ``entry_id``."""

    erasure_id: Annotated[
        str, Meta(description="uuid5 of the entry id: one erasure per entry, however often asked.")
    ]
    tenant: str
    entry_id: Annotated[
        str, Meta(description="The erased entry (seed 003 `id`, the raw event's `event_id`).")
    ]
    task_id: Annotated[str, Meta(description="The entry's task (its domain on the other topics).")]
    requested_at: AwareDatetime
    request_id: str
    correlation_id: str


def erasure_id(entry_id: str) -> str:
    return deterministic_id("erasure", entry_id)


# --- feedback.dlq.replays (operators: `feedstream dlq replay`) --------------------------------------


class DlqReplay(_Record, frozen=True, kw_only=True):
    """A dead letter replayed to its stage's input, written in the same transaction as the replayed
    record: a replay skips every dead letter that already has one (compacted, keyed by the letter)."""

    dlq_partition: Annotated[int, Meta(ge=0, description="The dead letter's partition of feedback.dlq.")]
    dlq_offset: Annotated[int, Meta(ge=0, description="The dead letter's offset.")]
    stage: str
    reason: DeadLetterReason
    to_topic: Annotated[str, Meta(description="Where the original was written again.")]
    to_partition: Annotated[int, Meta(ge=0)]
    replayed_at: AwareDatetime


def dlq_replay_key(dlq_partition: int, dlq_offset: int) -> bytes:
    """One key per dead letter: ``<partition>:<offset>`` of feedback.dlq."""
    return f"{dlq_partition}:{dlq_offset}".encode()


# --- train.completed (trainers: "I trained on trigger N") ------------------------------------------


class TrainingResult(_Record, frozen=True, kw_only=True):
    """A trainer reports that it trained a model on a trigger's range (POST /v1/domains/{d}/trainings)."""

    training_id: Annotated[str, Meta(description="uuid5 of (domain, trigger_id, model_version).")]
    domain: str
    trigger_id: str
    sequence: Annotated[int, Meta(ge=1, description="The trigger's sequence in its domain.")]
    model_version: Annotated[str, Meta(min_length=1, max_length=256)]
    metrics: Annotated[
        dict[str, float], Meta(description="Evaluation metrics by name (at most 64).", max_length=64)
    ] = {}
    tenant: str
    completed_at: AwareDatetime
    reported_at: AwareDatetime


def training_id(domain: str, trigger_id: str, model_version: str) -> str:
    return deterministic_id("training", domain, trigger_id, model_version)


def latest_training(kept: TrainingResult | None, candidate: TrainingResult) -> TrainingResult:
    """A domain's last training: the newest trigger's (highest ``sequence``), then the latest
    report; a trainer reporting an older trigger late never hides the newer one (the topic's order
    is the order of reports, not of triggers)."""
    if kept is None or (candidate.sequence, candidate.reported_at) >= (kept.sequence, kept.reported_at):
        return candidate
    return kept


# --- a stage changelog's input offset ---------------------------------------------------------------

#: Changelog keys of input offsets start so: table keys never start with a NUL byte followed by it.
INPUT_OFFSET_PREFIX = b"\x00offset/"


class InputOffset(_Record, frozen=True):
    """Where a stage partition's input stands: the next offset of ``feedback.raw`` / ``feedback.units``
    to process, written in every batch's transaction beside its outputs (key ``\\u0000offset/<topic>``).
    The stage restores it with its table and starts there: the outputs, the table and the progress
    commit or abort together. The consumer group's offsets follow after each commit, for monitoring."""

    next_offset: Annotated[int, Meta(ge=0)]


def input_offset_key(topic: str) -> bytes:
    """The changelog key of ``topic``'s offset (one per input topic and partition)."""
    return INPUT_OFFSET_PREFIX + topic.encode()


def input_offset_topic(key: bytes | None) -> str | None:
    """The input topic an offset key names; None for a table key (readers of a changelog skip those)."""
    if key is None or not key.startswith(INPUT_OFFSET_PREFIX):
        return None
    return key[len(INPUT_OFFSET_PREFIX) :].decode()


def struct_json_schema(*types: Any) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a type, or ``anyOf`` several, with ``$defs`` (msgspec's)."""
    refs, defs = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    schema: dict[str, Any] = dict(refs[0]) if len(refs) == 1 else {"anyOf": list(refs)}
    if "$ref" in schema and len(schema) == 1:  # one struct: its own schema on top, the rest as $defs
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = dict(defs.pop(name))
    if defs:
        schema["$defs"] = defs
    return schema


def record_json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of each output topic's value, keyed by the (unprefixed) topic name."""
    return {
        "feedback.signals": struct_json_schema(Signal),
        "feedback.triplets": struct_json_schema(TrainingUnit),
        "train.triggers": struct_json_schema(TrainTrigger),
        "feedback.dlq": struct_json_schema(DeadLetter),
        "feedback.units": struct_json_schema(UnitsMessage),
        "feedback.results": struct_json_schema(StageResult),
        "feedback.erasures": struct_json_schema(Erasure),
        "feedback.dlq.replays": struct_json_schema(DlqReplay),
        "train.completed": struct_json_schema(TrainingResult),
    }
