"""The canonical envelope of ``feedback.raw``: frozen, versioned message types of their own.

The HTTP ingest and the publisher library both write these (through :mod:`pipeline.contracts`),
so the stream treats both alike. Everything the stream needs to stay deterministic on replay
(resolved label grades, the tenant's feedback mode at receipt) is frozen into the envelope when it
is accepted.

These are *wire* types, apart from the API's request models (:mod:`pipeline.api.contracts`):
decoding checks only what the stream needs to process an event (JSON types, required fields, the
``contract`` tag), never the API's policy limits (id lengths, weight caps, UUID spellings, feedback
depth...). An API rule can then tighten without dead-lettering events already on the topic; every
stored ``schema_version`` must keep decoding (``tests/unit/test_wire_compat.py``).

msgspec does the decoding and encoding: a tagged union on ``contract``, one ``Struct`` per contract.
A contract added through the registry brings its own envelope type (a subclass of :class:`Envelope`
with its ``tag``); :class:`RawCodec` decodes any set of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from functools import reduce
from typing import Annotated, Any, Literal, TypeAlias, cast

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from pipeline.tenants import FeedbackMode
from pipeline.wire.names import Contract
from pipeline.wire.records import SpanId, TraceId  # seeds 002 and 003 may name the call they rate

__all__ = [
    "RAW_TYPES",
    "SCHEMA_VERSION",
    "Contract",
    "CorrectionEnvelope",
    "CorrectionPayload",
    "Envelope",
    "FeedbackMode",
    "InferenceFeedbackEnvelope",
    "InferenceFeedbackPayload",
    "Origin",
    "RankingOutcomeEnvelope",
    "RankingOutcomePayload",
    "RawCodec",
    "RawEvent",
    "ResolvedOutcome",
    "ScoreSource",
    "ScoredOutputEnvelope",
    "ScoredOutputPayload",
    "SearchEventEnvelope",
    "SearchEventPayload",
    "SearchEventType",
    "array_parts",
    "correction_key",
    "decode",
    "encode",
    "encode_array",
    "inference_feedback_key",
    "is_array",
    "kafka_headers",
    "ranking_outcome_key",
    "scored_output_key",
    "search_anchor",
    "search_event_key",
    "stamped",
]

#: The envelope version every event written today carries (stored examples of each in tests/data/wire).
SCHEMA_VERSION = 1


Origin: TypeAlias = Literal["http", "publisher"]

ScoreSource: TypeAlias = Literal["sdk", "user_rating", "auto_eval", "seed"]


class SearchEventType(StrEnum):
    """What happened to a search result (seed 004's nine options)."""

    RESULT_HELPFUL = "result_helpful"
    RESULT_NOT_HELPFUL = "result_not_helpful"
    PASSAGE_USED = "passage_used"
    READ_ABANDONED = "read_abandoned"
    DUPLICATE_RESULT = "duplicate_result"
    STALE_RESULT = "stale_result"
    SPAM_OR_LOW_QUALITY = "spam_or_low_quality"
    MISSING_EXPECTED_SOURCE = "missing_expected_source"
    UNSAFE_OR_POLICY_ISSUE = "unsafe_or_policy_issue"


class _Wire(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Frozen; unknown fields are an error (a typo in a producer must not pass silently)."""


class Envelope(_Wire, frozen=True, kw_only=True, tag_field="contract"):
    """What every raw event carries, whatever its contract (the subclass's ``tag`` names it)."""

    schema_version: Literal[1] = 1
    event_id: Annotated[str, Meta(description="UUIDv7, unique per raw event.")]
    tenant: str
    domain: Annotated[str, Meta(description="Training domain (seed 003: the task id).")]
    received_at: Annotated[datetime, Meta(extra_json_schema={"format": "date-time"})]
    correlation_id: str
    request_id: str
    origin: Origin
    request_events: (
        Annotated[
            int,
            Meta(
                ge=1,
                description="Raw events the request became (set by the intake), so any reader of the "
                "results can tell when a request is complete.",
            ),
        ]
        | None
    ) = None

    @property
    def contract(self) -> str:
        """The contract's name (the ``contract`` tag on the wire)."""
        return cast(str, type(self).__struct_config__.tag)


# --- seed 000 -------------------------------------------------------------------------------------


class ResolvedOutcome(_Wire, frozen=True, kw_only=True):
    """A seed 000 item with its label resolved against the tenant at receipt."""

    index: Annotated[int, Meta(ge=0, description="Position of the item in the request.")]
    candidate_id: str
    outcome: str
    grade: Annotated[float, Meta(ge=0, le=3)]
    positive: bool
    weight: Annotated[float, Meta(ge=0)]


class RankingOutcomePayload(_Wire, frozen=True, kw_only=True):
    """The outcomes of one seeker from one request (keyed by domain and seeker on Kafka)."""

    seeker_id: str
    items: Annotated[list[ResolvedOutcome], Meta(min_length=1)]


class RankingOutcomeEnvelope(Envelope, frozen=True, kw_only=True, tag=Contract.RANKING_OUTCOME.value):
    payload: RankingOutcomePayload


# --- seed 001 -------------------------------------------------------------------------------------


class CorrectionPayload(_Wire, frozen=True, kw_only=True):
    """A correction with the tenant's feedback mode when it arrived; the outputs are free-form JSON."""

    case_id: str
    module: str
    original_output: Any
    corrected_output: Any
    actor: dict[str, Any]
    feedback_mode: Annotated[FeedbackMode, Meta(description="The tenant's mode when the correction arrived.")]


class CorrectionEnvelope(Envelope, frozen=True, kw_only=True, tag=Contract.CORRECTION.value):
    payload: CorrectionPayload


# --- seed 002 -------------------------------------------------------------------------------------


class InferenceFeedbackPayload(_Wire, frozen=True, kw_only=True):
    """One item of a seed 002 array, as accepted (``feedback`` flattens to the signals)."""

    id: str
    feedback: dict[str, Any]
    tags: dict[str, str] | None = None
    optimize: Literal["max", "min"] = "max"
    trace_id: TraceId | UnsetType = UNSET
    span_id: SpanId | UnsetType = UNSET


class InferenceFeedbackEnvelope(Envelope, frozen=True, kw_only=True, tag=Contract.INFERENCE_FEEDBACK.value):
    payload: InferenceFeedbackPayload


# --- seed 003 -------------------------------------------------------------------------------------


class ScoredOutputPayload(_Wire, frozen=True, kw_only=True):
    """A scored output of a task; ``entry_id`` is the id returned to the caller (seed 003 ``id``)."""

    task_id: str
    inputs: dict[str, Any] | None = None
    output: str | None = None
    score: float | None = None
    source: ScoreSource = "sdk"
    metadata: dict[str, Any] | None = None
    entry_id: Annotated[str, Meta(description="The id returned to the caller (seed 003 `id`).")]
    trace_id: TraceId | UnsetType = UNSET
    span_id: SpanId | UnsetType = UNSET


class ScoredOutputEnvelope(Envelope, frozen=True, kw_only=True, tag=Contract.SCORED_OUTPUT.value):
    payload: ScoredOutputPayload


# --- seed 004 -------------------------------------------------------------------------------------


class SearchEventPayload(_Wire, frozen=True, kw_only=True):
    """What happened to a search result; ``session_id`` is always set (body, header or generated)."""

    event_type: SearchEventType
    agent_context: dict[str, Any] | None = None
    doc_id: str | None = None
    passage_id: str | None = None
    search_id: str | None = None
    session_id: Annotated[str, Meta(description="From the body, X-Session-ID, or generated.")]
    notes: str | None = None
    query: str | None = None
    rank: int | None = None


class SearchEventEnvelope(Envelope, frozen=True, kw_only=True, tag=Contract.SEARCH_EVENT.value):
    payload: SearchEventPayload


# --- codec ----------------------------------------------------------------------------------------

#: Any raw event: the envelope of a built-in or a registered contract (tell them apart by type).
RawEvent: TypeAlias = Envelope
#: The built-in envelope types, in the order the schema lists them.
RAW_TYPES: tuple[type[Envelope], ...] = (
    RankingOutcomeEnvelope,
    CorrectionEnvelope,
    InferenceFeedbackEnvelope,
    ScoredOutputEnvelope,
    SearchEventEnvelope,
)
_ENCODER = msgspec.json.Encoder()


class RawCodec:
    """Decode bytes of ``feedback.raw`` into one of ``types`` (tagged by ``contract``)."""

    def __init__(self, types: Sequence[type[Envelope]]) -> None:
        self.types = tuple(types)
        self._decoder: msgspec.json.Decoder[Envelope] = msgspec.json.Decoder(self.union_type())

    def decode(self, data: bytes) -> Envelope:
        """Raises ``msgspec.ValidationError`` (a ValueError) for bytes that are not an envelope."""
        return self._decoder.decode(data)

    def json_schema(self) -> dict[str, Any]:
        """A record's JSON Schema (draft 2020-12): one envelope (``$defs/Envelope``: ``oneOf`` the
        contracts' envelopes, discriminated by ``contract``) or a non-empty array of them."""
        (refs,), defs = msgspec.json.schema_components([self.union_type()], ref_template="#/$defs/{name}")
        members = refs.get("anyOf", [refs])
        mapping = {cast(str, t.__struct_config__.tag): f"#/$defs/{t.__name__}" for t in self.types}
        defs["Envelope"] = {
            "oneOf": members,
            "discriminator": {"propertyName": "contract", "mapping": mapping},
        }
        one = {"$ref": "#/$defs/Envelope"}
        return {
            "$defs": defs,
            "oneOf": [one, {"type": "array", "minItems": 1, "items": one}],
        }

    def union_type(self) -> Any:
        """``A | B | ...`` of the envelope types (msgspec decodes a union of tagged structs by tag)."""
        types: list[Any] = list(self.types)
        return reduce(lambda a, b: a | b, types)


_BUILTIN = RawCodec(RAW_TYPES)


def decode(data: bytes) -> Envelope:
    """Parse bytes of ``feedback.raw`` into a built-in envelope (raises msgspec.ValidationError).

    The stream decodes through the contract registry (:func:`pipeline.contracts.decode`), which
    also knows contracts registered beside the built-in five.
    """
    return _BUILTIN.decode(data)


def encode(event: Envelope) -> bytes:
    return _ENCODER.encode(event)


# --- one request, one record: an array of envelopes ---------------------------------------------
# A request of several events of a contract that holds no keyed state in the stream (seed 002) is
# written as ONE record: a JSON array of the envelopes it would have written one by one (the same
# bytes each). One acknowledged write instead of a transaction over a record per item; the stream
# splits it and handles each envelope as if it had come alone (each is decoded, processed and, if
# it fails, dead-lettered on its own).

_PARTS: msgspec.json.Decoder[list[msgspec.Raw]] = msgspec.json.Decoder(list[msgspec.Raw])


def is_array(value: bytes) -> bool:
    """Whether a ``feedback.raw`` value is an array of envelopes (else it is one envelope)."""
    return value[:1] == b"[" or (value[:1].isspace() and value.lstrip()[:1] == b"[")


def array_parts(value: bytes) -> list[bytes]:
    """The envelopes of an array record, each as its own bytes (not decoded: one that is off the
    contract must fail alone). Raises ``msgspec.ValidationError`` unless a non-empty JSON array."""
    parts = _PARTS.decode(value)
    if not parts:
        raise msgspec.ValidationError("an empty array of envelopes")
    return [bytes(part) for part in parts]


def encode_array(encoded: Sequence[bytes]) -> bytes:
    """The value of an array record from its envelopes' bytes."""
    return b"[" + b",".join(encoded) + b"]"


def stamped(event: Envelope, request_events: int) -> Envelope:
    """The event with how many raw events its request became (set just before writing)."""
    return msgspec.structs.replace(event, request_events=request_events)


def kafka_headers(event: Envelope) -> list[tuple[str, bytes]]:
    return [
        ("correlation_id", event.correlation_id.encode()),
        ("request_id", event.request_id.encode()),
        ("event_id", event.event_id.encode()),
        ("contract", event.contract.encode()),
        ("tenant", event.tenant.encode()),
    ]


# --- Kafka keys: everything the stream must see in order shares a key (so a partition) -----------


def search_anchor(payload: SearchEventPayload) -> str:
    """What a search event's triplets hang on: the ranked list, else the query, else the session."""
    if payload.search_id:
        return f"search:{payload.search_id}"
    if payload.query:
        return f"query:{payload.query}"
    return f"session:{payload.session_id}"


def ranking_outcome_key(event: RankingOutcomeEnvelope) -> str:
    return f"{event.domain}/{event.payload.seeker_id}"


def correction_key(event: CorrectionEnvelope) -> str:
    return f"{event.domain}/{event.payload.case_id}"


def inference_feedback_key(event: InferenceFeedbackEnvelope) -> str:
    return event.payload.id


def scored_output_key(event: ScoredOutputEnvelope) -> str:
    return f"{event.domain}/{event.payload.entry_id}"


def search_event_key(event: SearchEventEnvelope) -> str:
    return f"{event.domain}/{search_anchor(event.payload)}"
