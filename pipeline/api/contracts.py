"""The five public feedback contracts (seeds 000-004) as pydantic models, plus body classification.

Seeds 000, 001, 002 and 004 share ``POST /v1/feedback``; :func:`classify` decides which contract a
body is meant for, so the HTTP layer can answer in that contract's own error shape. Seed 003 has
its own path and needs no classification. Nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict, JsonValue

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
from pipeline.rules.flatten import FlatEntry, FlattenError, feedback_id, flatten_feedback

__all__ = [
    "Access",
    "Classified",
    "ClassifyOutcome",
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
    "classify",
    "correction_error_code",
    "describe_validation_error",
    "first_missing_field",
    "is_score_range_error",
    "validate_inference_item",
]


class Contract(StrEnum):
    """Which public API contract a request follows (the seed number is in the comment)."""

    RANKING_OUTCOME = "ranking_outcome"  # seed 000
    CORRECTION = "correction"  # seed 001
    INFERENCE_FEEDBACK = "inference_feedback"  # seed 002
    SCORED_OUTPUT = "scored_output"  # seed 003
    SEARCH_EVENT = "search_event"  # seed 004


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


class _Request(BaseModel):
    """Requests reject unknown fields: a typo must not be silently dropped."""

    model_config = ConfigDict(extra="forbid")


# --- seed 000: ranking outcomes ------------------------------------------------------------------

_SEED_000_ITEMS: list[JsonValue] = [
    {"seeker_id": "u_alice", "candidate_id": "u_bob", "outcome": "accepted"},
    {"seeker_id": "u_alice", "candidate_id": "u_carl", "outcome": "rejected"},
    {"seeker_id": "u_alice", "candidate_id": "u_dan", "outcome": "converted", "weight": 2.0},
]
_SEED_000_REQUEST: JsonDict = {"domain": "dating", "items": _SEED_000_ITEMS}


class RankingOutcomeItem(_Request):
    """One match outcome; the label is checked against the tenant later (tenant labels vary)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_SEED_000_ITEMS[2]]})

    seeker_id: IdStr
    candidate_id: IdStr
    outcome: LabelStr
    weight: float = Field(default=1.0, ge=0, le=MAX_WEIGHT, strict=True, allow_inf_nan=False)


class RankingOutcomeRequest(_Request):
    """Seed 000 body: a domain and at least one outcome."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_SEED_000_REQUEST]})

    domain: DomainStr
    items: list[RankingOutcomeItem] = Field(min_length=1)


class RankingOutcomeResponse(BaseModel):
    """Seed 000 answer: counts of accepted outcomes and generated/pending triplets."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"accepted": 3, "triplets_generated": 6, "triplets_pending_train": 4218}]
        }
    )

    accepted: int = Field(ge=0)
    triplets_generated: int = Field(ge=0)
    triplets_pending_train: int = Field(ge=0)


# --- seed 001: corrections -----------------------------------------------------------------------


class CorrectionRequest(_Request):
    """Seed 001 body: every field is required; the outputs are free-form JSON."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "case_id": "string",
                    "module": "intent_classifier",
                    "original_output": {},
                    "corrected_output": {},
                    "actor": {},
                }
            ]
        },
    )

    case_id: IdStr
    module: IdStr
    original_output: Any
    corrected_output: Any
    actor: dict[str, Any]


class CorrectionResponse(BaseModel):
    """Seed 001 success answer."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"feedback_id": "string", "received_at": "2019-08-24T14:15:22Z"}]}
    )

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

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error_code": "MISSING_REQUIRED_FIELD",
                    "message": "Field 'case_id' is required.",
                    "correlation_id": "8f3c-b21",
                    "request_id": "req_01JZP4...",
                },
                {
                    "error_code": "SCOPE_INSUFFICIENT",
                    "message": "Token lacks scope 'extract.quote'.",
                    "correlation_id": "8f3c-b21",
                    "request_id": "req_01JZP4...",
                },
            ]
        }
    )

    error_code: CorrectionErrorCode
    message: str
    correlation_id: str | None = None
    request_id: str


# --- seed 002: inference feedback ----------------------------------------------------------------


class InferenceFeedbackEvent(_Request):
    """One item of the seed 002 array; ``feedback`` must flatten (checked here, per item)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "019503a1-b2c3-7d4e-8f01-234567890abc",
                    "feedback": {"helpful": True, "rating": 4.5},
                    "optimize": "max",
                },
                {
                    "id": "019503a2-d4e5-7f60-a1b2-c3d4e5f60718",
                    "feedback": {
                        "thumbs_up": True,
                        "relevance": 0.92,
                        "comment": "Answered the question clearly",
                        "accuracy": {"score": 4, "reason": "Correct but could include more detail"},
                    },
                    "tags": {"evaluator": "human", "task": "question-answering"},
                },
                # seed 002's other request examples: two events in one request, then nested feedback
                {"id": "019503a1-b2c3-7d4e-8f01-234567890abc", "feedback": {"helpful": True}},
                {
                    "id": "019503a2-d4e5-7f60-a1b2-c3d4e5f60718",
                    "feedback": {"quality": 4.5},
                    "optimize": "max",
                },
                {
                    "id": "019503a1-b2c3-7d4e-8f01-234567890abc",
                    "feedback": {
                        "evaluation": {"quality": {"precision": 0.95, "recall": 0.87}},
                        "helpful": True,
                    },
                },
            ]
        },
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

    @field_validator("feedback")
    @classmethod
    def _feedback_flattens(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Reject unsupported values at validation time, so each item fails on its own.

        At most ``MAX_KEYS_PER_ITEM`` flattened keys of at most ``MAX_ID_CHARS`` characters each
        (every key becomes a signal and a feedback id).
        """
        try:
            flatten_feedback(value, max_keys=MAX_KEYS_PER_ITEM, max_key_chars=MAX_ID_CHARS)
        except FlattenError as err:
            raise ValueError(str(err)) from None
        return value

    def entries(self) -> list[FlatEntry]:
        """The flattened feedback (cannot fail: validation already flattened it once)."""
        return flatten_feedback(self.feedback)

    def feedback_ids(self) -> dict[str, str]:
        """Flattened key -> deterministic feedback id, as the response and the stream both use."""
        return {entry.key: feedback_id(self.id, entry.key) for entry in self.entries()}


class ItemError(BaseModel):
    """Per-item failure of a seed 002 batch (the HTTP status stays 200)."""

    status_code: int
    message: str


class InferenceFeedbackResult(BaseModel):
    """Seed 002 per-item answer: exactly one of ``feedback_ids`` and ``error`` is set."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "feedback_ids": {
                        "helpful": "019503a1-b2c3-7d4e-8f01-234567890abc",
                        "quality.accuracy": "019503a1-b2c3-7d4e-8f01-234567890def",
                    },
                    "error": None,
                },
                {"feedback_ids": None, "error": {"status_code": 400, "message": "ID does not exist"}},
            ]
        }
    )

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


def validate_inference_item(item: Any) -> InferenceFeedbackEvent | ItemError:
    """Validate one array item; a bad item becomes a 400 :class:`ItemError`, never an exception."""
    if not isinstance(item, Mapping):
        return ItemError(status_code=400, message="Each feedback event must be a JSON object.")
    try:
        return InferenceFeedbackEvent.model_validate(item)
    except ValidationError as err:
        return ItemError(status_code=400, message=describe_validation_error(err))


# --- seed 003: scored outputs --------------------------------------------------------------------

_SEED_003_REQUEST: JsonDict = {
    "task_id": "550e8400-e29b-41d4-a716-446655440000",
    "inputs": {"ticket_text": "Login fails on Safari", "priority": "high"},
    "output": "Authentication issue on Safari browser. Check OAuth token handling.",
    "score": 0.9,
    "source": "sdk",
    "metadata": {"model": "gpt-4o", "latency_ms": 450},
}

ScoreSource = Literal["sdk", "user_rating", "auto_eval", "seed"]
Score = Annotated[float, Field(ge=0.0, le=1.0, strict=True, allow_inf_nan=False)]


class ScoredOutputRequest(_Request):
    """Seed 003 body; the task id is the domain. A score outside [0, 1] is a 422 (see helper)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_SEED_003_REQUEST]})

    task_id: UuidStr
    inputs: dict[str, Any] | None = None
    output: str | None = None
    score: Score | None = None
    source: ScoreSource = "sdk"
    metadata: dict[str, Any] | None = None


class ScoredOutputResponse(BaseModel):
    """Seed 003 answer: the stored entry with its id and creation time (fields in seed order)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
                    **_SEED_003_REQUEST,
                    "created_at": "2024-01-15T10:35:00Z",
                }
            ]
        }
    )

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
        return cls(id=id, created_at=created_at, **request.model_dump())


_SCORE_RANGE_TYPES = frozenset({"greater_than_equal", "less_than_equal", "finite_number"})


def is_score_range_error(err: ValidationError) -> bool:
    """True when a seed 003 error concerns ``score`` being outside [0, 1] (the seed's 422 case)."""
    return any(e["loc"] == ("score",) and e["type"] in _SCORE_RANGE_TYPES for e in err.errors())


# --- seed 004: search events ---------------------------------------------------------------------


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


class SearchEventRequest(_Request):
    """Seed 004 body; only ``event_type`` is required (the seed's curl sends ``{}``, which fails)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "event_type": "passage_used",
                    "search_id": "3f2b8c1e-6a4d-4e8f-9b2a-1c5d7e9f0a12",
                    "doc_id": "8d6e2f4a-1b3c-4d5e-8f90-a1b2c3d4e5f6",
                    "passage_id": "c4d5e6f7-a8b9-4c0d-8e1f-203142536475",
                    "rank": 2,
                    "query": "refund policy for annual plans",
                    "agent_context": {"agent": "support-bot", "step": 3},
                }
            ]
        },
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

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "accepted": True,
                    "access": {
                        "rate_limit": {"limit_rps": 123, "remaining": 123, "reset_at": "<string>"},
                        "tier": "<string>",
                    },
                    "feedback_id": "<string>",
                    "request_id": "<string>",
                    "session_id": "<string>",
                    "usage": {"approx_tokens": 123, "bytes_returned": 123, "requests": 123},
                }
            ]
        }
    )

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

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "UNAUTHENTICATED",
                        "message": "Missing or invalid API key.",
                        "details": None,
                    },
                    "correlation_id": None,
                    "request_id": "req_0195f0c2a1b27c3d8e9f0a1b2c3d4e5f",
                }
            ]
        }
    )

    error: ErrorDetail
    correlation_id: str | None = None
    request_id: str


# --- human-readable validation errors ------------------------------------------------------------


def _num(value: Any) -> str:
    """``0.0`` reads as ``0`` in messages; other values as they are."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _phrase(error: Mapping[str, Any]) -> str:
    """What is wrong with one field, as a short phrase (no field name)."""
    kind: str = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        key = {">=": "ge", ">": "gt", "<=": "le", "<": "lt"}[bounds[kind]]
        return f"must be {bounds[kind]} {_num(ctx.get(key))}"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s)"
    simple = {
        "string_type": "must be a string",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "bool_type": "must be a boolean",
        "dict_type": "must be an object",
        "model_type": "must be an object",
        "model_attributes_type": "must be an object",
        "list_type": "must be an array",
        "finite_number": "must be a finite number",
        "datetime_type": "must be a date-time",
        "datetime_parsing": "must be a date-time",
    }
    if kind in simple:
        return simple[kind]
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected')}"
    msg: str = error["msg"]
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


def _describe_one(error: Mapping[str, Any]) -> str:
    loc = _loc(error["loc"])
    if error["type"] == "missing":
        return f"Field '{loc}' is required."
    if error["type"] == "extra_forbidden":
        return f"Field '{loc}' is not allowed."
    where = f"Field '{loc}'" if loc else "Body"
    return f"{where}: {_phrase(error)}."


def describe_validation_error(err: ValidationError, *, max_errors: int = 5) -> str:
    """Human messages such as "Field 'case_id' is required." for API answers (never the input)."""
    errors = err.errors(include_url=False, include_input=False)
    parts = [_describe_one(e) for e in errors[:max_errors]]
    if len(errors) > max_errors:
        parts.append(f"({len(errors) - max_errors} more problem(s) not shown.)")
    return " ".join(parts)


def first_missing_field(err: ValidationError) -> str | None:
    """The dotted path of the first missing required field, if any (MISSING_REQUIRED_FIELD)."""
    for e in err.errors(include_url=False, include_input=False):
        if e["type"] == "missing":
            return _loc(e["loc"])
    return None


def correction_error_code(err: ValidationError) -> CorrectionErrorCode:
    """Seed 001's code for a validation failure: a missing field wins over an invalid one."""
    if first_missing_field(err) is not None:
        return CorrectionErrorCode.MISSING_REQUIRED_FIELD
    return CorrectionErrorCode.INVALID_FIELD


# --- classification of POST /v1/feedback bodies ---------------------------------------------------

RequestModel = RankingOutcomeRequest | CorrectionRequest | SearchEventRequest

_OBJECT_CONTRACTS: dict[Contract, type[RankingOutcomeRequest | CorrectionRequest | SearchEventRequest]] = {
    Contract.RANKING_OUTCOME: RankingOutcomeRequest,
    Contract.CORRECTION: CorrectionRequest,
    Contract.SEARCH_EVENT: SearchEventRequest,
}

SIGNATURE_KEYS: dict[Contract, frozenset[str]] = {
    Contract.RANKING_OUTCOME: frozenset({"domain", "items"}),
    Contract.CORRECTION: frozenset({"case_id", "module", "original_output", "corrected_output", "actor"}),
    Contract.SEARCH_EVENT: frozenset({"event_type"}),
}


class ClassifyOutcome(StrEnum):
    MATCHED = "matched"  # one contract; ``model`` or ``error`` tells whether the body is valid
    NO_CONTRACT = "no_contract"  # no signature key and no contract validates
    AMBIGUOUS = "ambiguous"  # several contracts signalled, and not exactly one validates


@dataclass(frozen=True)
class Classified:
    """Which contract a body is for; on failure, per contract tried, why it did not fit.

    For ``inference_feedback`` both ``model`` and ``error`` are None: the array's items are
    validated one by one with :func:`validate_inference_item`.
    """

    outcome: ClassifyOutcome
    contract: Contract | None = None
    signalled: tuple[Contract, ...] = ()
    model: RequestModel | None = None
    error: ValidationError | None = None
    reasons: Mapping[Contract, str] = field(default_factory=dict)
    hint: str | None = None

    @property
    def message(self) -> str:
        """One human sentence (or a few) for a 400 answer when no single contract fits."""
        if self.outcome is ClassifyOutcome.MATCHED:
            assert self.contract is not None
            why = self.reasons.get(self.contract)
            return f"Body is a {self.contract} request" + (f" but invalid: {why}" if why else ".")
        head = (
            "Body matches no feedback contract."
            if self.outcome is ClassifyOutcome.NO_CONTRACT
            else "Body mixes fields of several feedback contracts ("
            + ", ".join(str(c) for c in self.signalled)
            + ")."
        )
        tried = " ".join(f"[{c}] {why}" for c, why in self.reasons.items())
        return " ".join(part for part in (head, tried, self.hint) if part)


def _validate(contract: Contract, body: Any) -> tuple[RequestModel | None, ValidationError | None]:
    try:
        return _OBJECT_CONTRACTS[contract].model_validate(body), None
    except ValidationError as err:
        return None, err


def classify(body: Any) -> Classified:
    """Decide which contract a ``POST /v1/feedback`` body is meant for (see module docstring).

    An array is seed 002. For an object, signature keys pick the contract even when the body is
    invalid, so the caller can answer in that contract's error shape; with no or several
    signatures, full validation decides, and failure explains itself per contract.
    """
    if isinstance(body, list):
        return Classified(
            ClassifyOutcome.MATCHED, Contract.INFERENCE_FEEDBACK, (Contract.INFERENCE_FEEDBACK,)
        )
    if not isinstance(body, Mapping):
        kind = "null" if body is None else type(body).__name__
        return Classified(
            ClassifyOutcome.NO_CONTRACT,
            reasons={c: f"Body must be a JSON object, not {kind}." for c in _OBJECT_CONTRACTS},
            hint="Send a JSON object, or a JSON array of inference feedback events.",
        )
    keys = {k for k in body if isinstance(k, str)}
    signalled = tuple(c for c, sig in SIGNATURE_KEYS.items() if keys & sig)
    if len(signalled) == 1:
        (contract,) = signalled
        model, error = _validate(contract, body)
        reasons = {contract: describe_validation_error(error)} if error is not None else {}
        return Classified(ClassifyOutcome.MATCHED, contract, signalled, model, error, reasons)

    valid: dict[Contract, RequestModel] = {}
    reasons = {}
    for contract in _OBJECT_CONTRACTS:
        model, error = _validate(contract, body)
        if model is not None:
            valid[contract] = model
        elif error is not None:
            reasons[contract] = describe_validation_error(error, max_errors=3)
    if len(valid) == 1:
        ((contract, model),) = valid.items()
        return Classified(ClassifyOutcome.MATCHED, contract, signalled, model)
    for contract in valid:
        reasons[contract] = "Valid, but so is another contract."
    hint = None
    if "task_id" in keys:
        hint = "Scored outputs (task_id) go to POST /api/v1/feedback."
    outcome = ClassifyOutcome.AMBIGUOUS if signalled or valid else ClassifyOutcome.NO_CONTRACT
    return Classified(outcome, None, signalled, reasons=reasons, hint=hint)
