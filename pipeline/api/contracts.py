"""The API types of the five public feedback contracts (seeds 000-004): pydantic request and answer models.

They hold the API's policy (id lengths, weight caps, canonical UUIDs, feedback that flattens), which
may tighten over time. What goes to Kafka is converted by the intake into the wire types of
:mod:`pipeline.wire.envelope`, which never re-run these validators on replay. The OpenAPI examples
are data files (``pipeline/api/examples/<Model>.json``); error wording is in :mod:`pipeline.api.wording`;
which contract a body is for is decided by the registry (:mod:`pipeline.contracts`). No I/O here
beyond reading the example files once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.config import JsonValue

from pipeline.ids import canonical_uuid
from pipeline.limits import (
    MAX_DOMAIN_CHARS,
    MAX_ID_CHARS,
    MAX_KEYS_PER_ITEM,
    MAX_LABEL_CHARS,
    MAX_TAGS,
    MAX_TEXT_CHARS,
    MAX_UUID_INPUT_CHARS,
    MAX_WEIGHT,
)
from pipeline.rules.flatten import FlatEntry, FlattenError, feedback_ids, flatten_feedback
from pipeline.wire.envelope import Contract, ScoreSource, SearchEventType

__all__ = [
    "Access",
    "Contract",
    "CorrectionError",
    "CorrectionErrorCode",
    "CorrectionRequest",
    "CorrectionResponse",
    "ErrorBody",
    "ErrorDetail",
    "InferenceFeedbackEvent",
    "InferenceFeedbackResult",
    "ItemError",
    "RankingOutcomeItem",
    "RankingOutcomeRequest",
    "RankingOutcomeResponse",
    "RateLimit",
    "ScoredOutputRequest",
    "ScoredOutputResponse",
    "SearchEventRequest",
    "SearchEventResponse",
    "SearchEventType",
    "SearchUsage",
    "examples",
]

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"


@cache
def _example_file(name: str) -> tuple[str, ...]:
    data = json.loads((EXAMPLES_DIR / f"{name}.json").read_text(encoding="utf-8"))
    assert isinstance(data, list), f"{name}.json must hold a JSON array of examples"
    return tuple(json.dumps(e) for e in data)


def examples(name: str) -> list[JsonValue]:
    """The OpenAPI examples of one model (a fresh copy each time: callers may change what they get)."""
    return [json.loads(e) for e in _example_file(name)]


def _canonical_uuid(value: str) -> str:
    """Canonical lower-case hyphenated form, so ids compare equal however the caller spelled them.

    Strict (:func:`pipeline.ids.canonical_uuid`): ``uuid.UUID`` accepts hyphens anywhere.
    """
    canon = canonical_uuid(value)
    if canon is None:
        if len(value) > MAX_UUID_INPUT_CHARS:
            raise ValueError(f"must be a UUID (at most {MAX_UUID_INPUT_CHARS} characters)")
        raise ValueError("must be a UUID such as '550e8400-e29b-41d4-a716-446655440000'")
    return canon


NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
#: Identifiers that become Kafka keys, state keys or triplet members (pipeline.limits).
IdStr = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
LabelStr = Annotated[str, StringConstraints(min_length=1, max_length=MAX_LABEL_CHARS)]
DomainStr = Annotated[str, StringConstraints(min_length=1, max_length=MAX_DOMAIN_CHARS)]
TextStr = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]
UuidStr = Annotated[
    str,
    StringConstraints(max_length=MAX_UUID_INPUT_CHARS),
    AfterValidator(_canonical_uuid),
    Field(json_schema_extra={"format": "uuid"}),
]


def _w3c_id(digits: int, what: str) -> Callable[[str], str]:
    """The check of a W3C id of ``digits`` lowercase hex digits, not all zeros (trace 32, span 16)."""
    pattern, zeros = re.compile(f"[0-9a-f]{{{digits}}}"), "0" * digits

    def check(value: str) -> str:
        if not pattern.fullmatch(value) or value == zeros:
            raise ValueError(f"must be a W3C {what}: {digits} lowercase hexadecimal digits, not all zeros")
        return value

    return check


#: The trace of the LLM call feedback is about (as Langfuse and Phoenix attach scores to traces and
#: spans): carried to the signals and units so a trainer or dashboard joins feedback to the call.
TraceIdStr = Annotated[
    str,
    AfterValidator(_w3c_id(32, "trace id")),
    Field(
        json_schema_extra={"pattern": "^[0-9a-f]{32}$"},
        description="W3C trace id of the call this feedback is about (32 lowercase hex digits, "
        "not all zeros).",
    ),
]
SpanIdStr = Annotated[
    str,
    AfterValidator(_w3c_id(16, "span id")),
    Field(
        json_schema_extra={"pattern": "^[0-9a-f]{16}$"},
        description="Its span (16 hex digits); needs trace_id.",
    ),
]


def _span_needs_trace(model: Any) -> Any:
    """A model's ``span_id`` only with its ``trace_id`` (the models that describe an LLM call)."""
    if model.span_id is not None and model.trace_id is None:
        raise ValueError("'span_id' needs 'trace_id' (a span id means nothing outside its trace)")
    return model


class _Request(BaseModel):
    """Requests reject unknown fields: a typo must not be silently dropped."""

    model_config = ConfigDict(extra="forbid")


# --- seed 000: ranking outcomes ------------------------------------------------------------------


class RankingOutcomeItem(_Request):
    """One match outcome; the label is checked against the tenant later (tenant labels vary)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": examples("RankingOutcomeItem")})

    seeker_id: IdStr
    candidate_id: IdStr
    outcome: LabelStr
    weight: float = Field(default=1.0, ge=0, le=MAX_WEIGHT, strict=True, allow_inf_nan=False)


class RankingOutcomeRequest(_Request):
    """Seed 000 body: a domain and at least one outcome."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": examples("RankingOutcomeRequest")}
    )

    domain: DomainStr
    items: list[RankingOutcomeItem] = Field(min_length=1)


class RankingOutcomeResponse(BaseModel):
    """Seed 000 answer: counts of accepted outcomes and generated/pending triplets."""

    model_config = ConfigDict(json_schema_extra={"examples": examples("RankingOutcomeResponse")})

    accepted: int = Field(ge=0)
    triplets_generated: int = Field(ge=0)
    triplets_pending_train: int = Field(ge=0)


# --- seed 001: corrections -----------------------------------------------------------------------


class CorrectionRequest(_Request):
    """Seed 001 body: every field is required; the outputs are free-form JSON."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": examples("CorrectionRequest")},
    )

    case_id: IdStr
    module: IdStr
    original_output: Any
    corrected_output: Any
    actor: dict[str, Any]


class CorrectionResponse(BaseModel):
    """Seed 001 success answer."""

    model_config = ConfigDict(json_schema_extra={"examples": examples("CorrectionResponse")})

    feedback_id: str
    received_at: datetime


class CorrectionErrorCode(StrEnum):
    """Seed 001 error codes; we answer UNAUTHENTICATED for missing/unknown keys."""

    MISSING_REQUIRED_FIELD = "MISSING_REQUIRED_FIELD"
    INVALID_FIELD = "INVALID_FIELD"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    EXPIRED_TOKEN = "EXPIRED_TOKEN"  # in seed 001; we never produce it (API keys do not expire)
    SCOPE_INSUFFICIENT = "SCOPE_INSUFFICIENT"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    RATE_LIMITED = "RATE_LIMITED"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class CorrectionError(BaseModel):
    """Seed 001 error answer (flat, with the caller's correlation id echoed)."""

    model_config = ConfigDict(json_schema_extra={"examples": examples("CorrectionError")})

    error_code: CorrectionErrorCode
    message: str
    correlation_id: str | None = None
    request_id: str


# --- seed 002: inference feedback ----------------------------------------------------------------


#: The feedback dict the validator flattened last and its entries (one slot: the intake asks for
#: them right after validating the item; identity, not equality, so it is never another dict's).
_LAST_FLATTENED: list[tuple[dict[str, Any], list[FlatEntry]] | None] = [None]


class InferenceFeedbackEvent(_Request):
    """One item of the seed 002 array; ``feedback`` must flatten (checked here, per item)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": examples("InferenceFeedbackEvent")},
    )

    id: UuidStr
    feedback: dict[str, Any]
    tags: (
        Annotated[
            dict[
                Annotated[str, StringConstraints(max_length=MAX_LABEL_CHARS)],
                Annotated[str, StringConstraints(max_length=MAX_ID_CHARS)],
            ],
            Field(max_length=MAX_TAGS),
        ]
        | None
    ) = None
    optimize: Literal["max", "min"] = "max"
    trace_id: TraceIdStr | None = None
    span_id: SpanIdStr | None = None

    _traced = model_validator(mode="after")(_span_needs_trace)

    @field_validator("feedback")
    @classmethod
    def _feedback_flattens(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Reject unsupported values at validation time, so each item fails on its own.

        At most ``MAX_KEYS_PER_ITEM`` flattened keys of at most ``MAX_ID_CHARS`` characters each
        (every key becomes a signal and a feedback id).
        """
        try:
            entries = flatten_feedback(value, max_keys=MAX_KEYS_PER_ITEM, max_key_chars=MAX_ID_CHARS)
        except FlattenError as err:
            raise ValueError(str(err)) from None
        _LAST_FLATTENED[0] = (value, entries)
        return value

    def entries(self) -> list[FlatEntry]:
        """The flattened feedback (cannot fail: validation already flattened it once). Right after
        validation (the intake's next step) the validator's own result is reused, not redone."""
        last = _LAST_FLATTENED[0]
        if last is not None and last[0] is self.feedback:
            return list(last[1])
        return flatten_feedback(self.feedback)

    def feedback_ids(self) -> dict[str, str]:
        """Flattened key -> deterministic feedback id, as the response and the stream both use."""
        return feedback_ids(self.id, [entry.key for entry in self.entries()])


class ItemError(BaseModel):
    """Per-item failure of a seed 002 batch (the HTTP status stays 200)."""

    status_code: int
    message: str


class InferenceFeedbackResult(BaseModel):
    """Seed 002 per-item answer: exactly one of ``feedback_ids`` and ``error`` is set."""

    model_config = ConfigDict(json_schema_extra={"examples": examples("InferenceFeedbackResult")})

    feedback_ids: dict[str, str] | None = None
    error: ItemError | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.feedback_ids is None) == (self.error is None):
            raise ValueError("exactly one of 'feedback_ids' and 'error' must be set")
        return self

    @classmethod
    def ok(cls, feedback_ids: Mapping[str, str]) -> InferenceFeedbackResult:
        return cls(feedback_ids=dict(feedback_ids))

    @classmethod
    def failed(cls, status_code: int, message: str) -> InferenceFeedbackResult:
        return cls(error=ItemError(status_code=status_code, message=message))


# --- seed 003: scored outputs --------------------------------------------------------------------


Score = Annotated[float, Field(ge=0.0, le=1.0, strict=True, allow_inf_nan=False)]


class ScoredOutputRequest(_Request):
    """Seed 003 body; the task id is the domain. A score outside [0, 1] is a 422 (see helper)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": examples("ScoredOutputRequest")})

    task_id: UuidStr
    inputs: dict[str, Any] | None = None
    output: str | None = None
    score: Score | None = None
    source: ScoreSource = "sdk"
    metadata: dict[str, Any] | None = None
    trace_id: TraceIdStr | None = None
    span_id: SpanIdStr | None = None

    _traced = model_validator(mode="after")(_span_needs_trace)


class ScoredOutputResponse(BaseModel):
    """Seed 003 answer: the stored entry with its id and creation time (fields in seed order)."""

    model_config = ConfigDict(json_schema_extra={"examples": examples("ScoredOutputResponse")})

    id: str
    task_id: str
    inputs: dict[str, Any] | None = None
    output: str | None = None
    score: float | None = None
    source: ScoreSource = "sdk"
    metadata: dict[str, Any] | None = None
    created_at: datetime

    @classmethod
    def from_request(
        cls, request: ScoredOutputRequest, *, id: str, created_at: datetime
    ) -> ScoredOutputResponse:
        return cls(id=id, created_at=created_at, **request.model_dump(exclude={"trace_id", "span_id"}))


# --- seed 004: search events ---------------------------------------------------------------------


class SearchEventRequest(_Request):
    """Seed 004 body; only ``event_type`` is required (the seed's curl sends ``{}``, which fails)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": examples("SearchEventRequest")},
    )

    event_type: SearchEventType
    agent_context: dict[str, Any] | None = None
    doc_id: UuidStr | None = None
    passage_id: UuidStr | None = None
    search_id: UuidStr | None = None
    session_id: UuidStr | None = None
    notes: TextStr | None = None
    query: TextStr | None = None
    rank: int | None = Field(default=None, ge=1, strict=True)


class RateLimit(BaseModel):
    limit_rps: int
    remaining: int
    reset_at: str


class Access(BaseModel):
    rate_limit: RateLimit
    tier: str


class SearchUsage(BaseModel):
    approx_tokens: int
    bytes_returned: int
    requests: int


class SearchEventResponse(BaseModel):
    """Seed 004 answer (its read-only ``$schema`` link is not emitted, and ignored on input)."""

    model_config = ConfigDict(json_schema_extra={"examples": examples("SearchEventResponse")})

    accepted: bool
    access: Access
    feedback_id: str
    request_id: str
    session_id: str
    usage: SearchUsage | None = None


# --- errors for contracts without their own shape ------------------------------------------------


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any | None = None


class ErrorBody(BaseModel):
    """Generic error answer for contracts that define no error shape (000, 002 whole-body, 003, 004)."""

    model_config = ConfigDict(json_schema_extra={"examples": examples("ErrorBody")})

    error: ErrorDetail
    correlation_id: str | None = None
    request_id: str


# --- training results (POST /v1/domains/{domain}/trainings) -----------------------------------------


class TrainingReport(BaseModel):
    """A trainer says it trained on a trigger of the domain: which (``sequence``, and optionally its
    ``trigger_id`` as a check), the model it made, and how it scored."""

    model_config = ConfigDict(extra="forbid", strict=False)

    sequence: int = Field(ge=1, description="The trigger's sequence in the domain (train.triggers).")
    trigger_id: str | None = Field(
        default=None, max_length=64, description="The trigger's id; when given it must match the sequence."
    )
    model_version: str = Field(min_length=1, max_length=256)
    metrics: dict[Annotated[str, StringConstraints(min_length=1, max_length=128)], float] = Field(
        default_factory=dict, max_length=64, description="Evaluation metrics by name (at most 64)."
    )
    completed_at: AwareDatetime | None = Field(
        default=None, description="When training ended (default: now)."
    )
