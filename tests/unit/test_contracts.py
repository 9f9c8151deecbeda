"""Contract models (seeds 000-004), their error messages, and the registry's classification of
/v1/feedback bodies."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from pipeline import contracts
from pipeline.api.contracts import (
    Contract,
    CorrectionError,
    CorrectionErrorCode,
    CorrectionRequest,
    CorrectionResponse,
    ErrorBody,
    InferenceFeedbackEvent,
    InferenceFeedbackResult,
    ItemError,
    RankingOutcomeRequest,
    RankingOutcomeResponse,
    ScoredOutputRequest,
    ScoredOutputResponse,
    SearchEventRequest,
    SearchEventResponse,
    SearchEventType,
)
from pipeline.api.intake import validate_inference_item
from pipeline.api.wording import (
    correction_error_code,
    describe_validation_error,
    first_missing_field,
    is_score_range_error,
)
from pipeline.contracts import Classified, ClassifyOutcome
from pipeline.rules.flatten import FlatEntry, feedback_id


def classify(body: Any) -> Classified:
    """Which contract a ``POST /v1/feedback`` body is for (the registry's classification)."""
    return contracts.classify(body, contracts.on_route(contracts.FEEDBACK_ROUTE))


# --- seed bodies, copied verbatim --------------------------------------------------------------

SEED_000_REQUEST: dict[str, Any] = {
    "domain": "dating",
    "items": [
        {"seeker_id": "u_alice", "candidate_id": "u_bob", "outcome": "accepted"},
        {"seeker_id": "u_alice", "candidate_id": "u_carl", "outcome": "rejected"},
        {"seeker_id": "u_alice", "candidate_id": "u_dan", "outcome": "converted", "weight": 2.0},
    ],
}
SEED_000_RESPONSE = {"accepted": 3, "triplets_generated": 6, "triplets_pending_train": 4218}
SEED_000_OPENAPI_RESPONSE = {"accepted": 2, "triplets_generated": 4, "triplets_pending_train": 318}

SEED_001_REQUEST: dict[str, Any] = {
    "case_id": "string",
    "module": "intent_classifier",
    "original_output": {},
    "corrected_output": {},
    "actor": {},
}
SEED_001_RESPONSE = {"feedback_id": "string", "received_at": "2019-08-24T14:15:22Z"}
SEED_001_ERRORS = [
    {
        "error_code": "MISSING_REQUIRED_FIELD",
        "message": "Field 'case_id' is required.",
        "correlation_id": "8f3c-b21",
        "request_id": "req_01JZP4...",
    },
    {
        "error_code": "EXPIRED_TOKEN",
        "message": "Bearer token expired at 2026-04-29T13:00:00Z.",
        "correlation_id": "8f3c-b21",
        "request_id": "req_01JZP4...",
    },
    {
        "error_code": "SCOPE_INSUFFICIENT",
        "message": "Token lacks scope 'extract.quote'.",
        "correlation_id": "8f3c-b21",
        "request_id": "req_01JZP4...",
    },
    {
        "error_code": "INTERNAL_ERROR",
        "message": "An unexpected error occurred.",
        "correlation_id": "8f3c-b21",
        "request_id": "req_01JZP4...",
    },
]

SEED_002_SIMPLE = [
    {
        "id": "019503a1-b2c3-7d4e-8f01-234567890abc",
        "feedback": {"helpful": True, "rating": 4.5},
        "optimize": "max",
    }
]
SEED_002_MULTIPLE = [
    {"id": "019503a1-b2c3-7d4e-8f01-234567890abc", "feedback": {"helpful": True}},
    {"id": "019503a2-d4e5-7f60-a1b2-c3d4e5f60718", "feedback": {"quality": 4.5}, "optimize": "max"},
]
SEED_002_MIXED = [
    {
        "id": "019503a2-d4e5-7f60-a1b2-c3d4e5f60718",
        "feedback": {
            "thumbs_up": True,
            "relevance": 0.92,
            "comment": "Answered the question clearly",
            "accuracy": {"score": 4, "reason": "Correct but could include more detail"},
        },
        "tags": {"evaluator": "human", "task": "question-answering"},
    }
]
SEED_002_NESTED = [
    {
        "id": "019503a1-b2c3-7d4e-8f01-234567890abc",
        "feedback": {"evaluation": {"quality": {"precision": 0.95, "recall": 0.87}}, "helpful": True},
    }
]
SEED_002_RESPONSES: list[list[dict[str, Any]]] = [
    [
        {
            "feedback_ids": {
                "helpful": "019503a1-b2c3-7d4e-8f01-234567890abc",
                "quality.accuracy": "019503a1-b2c3-7d4e-8f01-234567890def",
            },
            "error": None,
        }
    ],
    [
        {"feedback_ids": {"helpful": "019503a1-b2c3-7d4e-8f01-234567890abc"}, "error": None},
        {"feedback_ids": None, "error": {"status_code": 400, "message": "ID does not exist"}},
    ],
    [
        {
            "feedback_ids": {
                "evaluation.quality.precision": "019503a3-1111-7000-8000-000000000001",
                "evaluation.quality.recall": "019503a3-2222-7000-8000-000000000002",
                "helpful": "019503a3-3333-7000-8000-000000000003",
            }
        }
    ],
]

SEED_003_REQUEST: dict[str, Any] = {
    "task_id": "550e8400-e29b-41d4-a716-446655440000",
    "inputs": {"ticket_text": "Login fails on Safari", "priority": "high"},
    "output": "Authentication issue on Safari browser. Check OAuth token handling.",
    "score": 0.9,
    "source": "sdk",
    "metadata": {"model": "gpt-4o", "latency_ms": 450},
}
SEED_003_RESPONSE: dict[str, Any] = {
    "id": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
    "task_id": "550e8400-e29b-41d4-a716-446655440000",
    "inputs": {"ticket_text": "Login fails on Safari", "priority": "high"},
    "output": "Authentication issue on Safari browser. Check OAuth token handling.",
    "score": 0.9,
    "source": "sdk",
    "metadata": {"model": "gpt-4o", "latency_ms": 450},
    "created_at": "2024-01-15T10:35:00Z",
}
SEED_003_LIST: list[dict[str, Any]] = [
    {
        "id": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
        "task_id": "550e8400-e29b-41d4-a716-446655440000",
        "inputs": {"ticket_text": "Login fails on Safari", "priority": "high"},
        "output": "Authentication issue on Safari browser.",
        "score": 0.9,
        "source": "sdk",
        "metadata": None,
        "created_at": "2024-01-15T10:35:00Z",
    },
    {
        "id": "b2c3d4e5-f6a7-8901-bcde-f12345678901",
        "task_id": "550e8400-e29b-41d4-a716-446655440000",
        "inputs": {"ticket_text": "Dark mode not working", "priority": "low"},
        "output": "UI theme preference not persisting across sessions.",
        "score": 0.85,
        "source": "sdk",
        "metadata": None,
        "created_at": "2024-01-15T10:20:00Z",
    },
]

SEED_004_REQUEST: dict[str, Any] = {}  # the seed's curl sends an empty object
SEED_004_RESPONSE: dict[str, Any] = {
    "accepted": True,
    "access": {
        "rate_limit": {"limit_rps": 123, "remaining": 123, "reset_at": "<string>"},
        "tier": "<string>",
    },
    "feedback_id": "<string>",
    "request_id": "<string>",
    "session_id": "<string>",
    "$schema": "<string>",
    "usage": {"approx_tokens": 123, "bytes_returned": 123, "requests": 123},
}
SEED_004_EVENT_TYPES = [
    "result_helpful",
    "result_not_helpful",
    "passage_used",
    "read_abandoned",
    "duplicate_result",
    "stale_result",
    "spam_or_low_quality",
    "missing_expected_source",
    "unsafe_or_policy_issue",
]
SEARCH_BODY: dict[str, Any] = {
    "event_type": "passage_used",
    "search_id": "3f2b8c1e-6a4d-4e8f-9b2a-1c5d7e9f0a12",
    "doc_id": "8d6e2f4a-1b3c-4d5e-8f90-a1b2c3d4e5f6",
    "passage_id": "c4d5e6f7-a8b9-4c0d-8e1f-203142536475",
    "session_id": "0b8f7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d",
    "rank": 2,
    "query": "refund policy",
    "notes": "cited in answer",
    "agent_context": {"agent": "support-bot"},
}


def _error(model: type[BaseModel], body: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return info.value


# --- contract names ------------------------------------------------------------------------------


def test_contract_names() -> None:
    assert [c.value for c in Contract] == [
        "ranking_outcome",
        "correction",
        "inference_feedback",
        "scored_output",
        "search_event",
    ]
    assert Contract("correction") is Contract.CORRECTION


# --- seed 000 ------------------------------------------------------------------------------------


def test_seed_000_request_classifies_and_validates() -> None:
    result = classify(SEED_000_REQUEST)
    assert result.outcome is ClassifyOutcome.MATCHED
    assert result.contract is Contract.RANKING_OUTCOME
    assert result.error is None
    assert isinstance(result.model, RankingOutcomeRequest)
    assert result.model.domain == "dating"
    assert [(i.candidate_id, i.outcome, i.weight) for i in result.model.items] == [
        ("u_bob", "accepted", 1.0),
        ("u_carl", "rejected", 1.0),
        ("u_dan", "converted", 2.0),
    ]


@pytest.mark.parametrize("body", [SEED_000_RESPONSE, SEED_000_OPENAPI_RESPONSE])
def test_seed_000_responses_validate(body: dict[str, Any]) -> None:
    assert RankingOutcomeResponse.model_validate(body).model_dump() == body


def test_ranking_tenant_label_passes_contract_validation() -> None:
    body = {"domain": "dating", "items": [{"seeker_id": "a", "candidate_id": "b", "outcome": "super_like"}]}
    assert RankingOutcomeRequest.model_validate(body).items[0].outcome == "super_like"


def test_ranking_integer_weight_becomes_float() -> None:
    body = {"domain": "d", "items": [{"seeker_id": "a", "candidate_id": "b", "outcome": "x", "weight": 0}]}
    assert RankingOutcomeRequest.model_validate(body).items[0].weight == 0.0


@pytest.mark.parametrize(
    ("item_patch", "message"),
    [
        ({"weight": -1}, "Field 'items.0.weight': must be >= 0."),
        ({"weight": math.nan}, "Field 'items.0.weight': must be a finite number."),
        ({"weight": math.inf}, "Field 'items.0.weight': must be a finite number."),
        ({"weight": "2.0"}, "Field 'items.0.weight': must be a number."),
        ({"weight": True}, "Field 'items.0.weight': must be a number."),
        ({"seeker_id": ""}, "Field 'items.0.seeker_id': must not be empty."),
        ({"candidate_id": 7}, "Field 'items.0.candidate_id': must be a string."),
        ({"outcome": ""}, "Field 'items.0.outcome': must not be empty."),
        ({"colour": "red"}, "Field 'items.0.colour' is not allowed."),
    ],
)
def test_ranking_item_errors(item_patch: dict[str, Any], message: str) -> None:
    item = {"seeker_id": "u_alice", "candidate_id": "u_bob", "outcome": "accepted", **item_patch}
    result = classify({"domain": "dating", "items": [item]})
    assert result.contract is Contract.RANKING_OUTCOME
    assert result.model is None
    assert result.error is not None
    assert describe_validation_error(result.error) == message
    assert result.reasons == {Contract.RANKING_OUTCOME: message}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"domain": "dating"}, "Field 'items' is required."),
        ({"items": []}, "Field 'domain' is required. Field 'items': must have at least 1 item(s)."),
        ({"domain": "", "items": SEED_000_REQUEST["items"]}, "Field 'domain': must not be empty."),
        ({"domain": "d", "items": {"a": 1}}, "Field 'items': must be an array."),
        ({"domain": "d", "items": ["x"]}, "Field 'items.0': must be an object."),
    ],
)
def test_ranking_request_errors(body: dict[str, Any], message: str) -> None:
    result = classify(body)
    assert result.outcome is ClassifyOutcome.MATCHED
    assert result.contract is Contract.RANKING_OUTCOME
    assert result.error is not None
    assert describe_validation_error(result.error) == message


# --- seed 001 ------------------------------------------------------------------------------------


def test_seed_001_request_classifies_and_validates() -> None:
    result = classify(SEED_001_REQUEST)
    assert result.contract is Contract.CORRECTION
    assert isinstance(result.model, CorrectionRequest)
    assert result.model.module == "intent_classifier"
    assert result.model.original_output == {}
    assert result.model.actor == {}


def test_correction_outputs_are_free_form() -> None:
    body = {**SEED_001_REQUEST, "original_output": "billing", "corrected_output": ["a", 1, None]}
    model = CorrectionRequest.model_validate(body)
    assert model.original_output == "billing"
    assert model.corrected_output == ["a", 1, None]


def test_seed_001_response_validates() -> None:
    response = CorrectionResponse.model_validate(SEED_001_RESPONSE)
    assert response.received_at == datetime(2019, 8, 24, 14, 15, 22, tzinfo=UTC)
    assert response.model_dump(mode="json") == SEED_001_RESPONSE


@pytest.mark.parametrize("body", SEED_001_ERRORS)
def test_seed_001_errors_validate(body: dict[str, Any]) -> None:
    error = CorrectionError.model_validate(body)
    assert error.model_dump(mode="json") == body


def test_correction_error_codes() -> None:
    assert {c.value for c in CorrectionErrorCode} == {
        "MISSING_REQUIRED_FIELD",
        "INVALID_FIELD",
        "UNAUTHENTICATED",
        "EXPIRED_TOKEN",
        "SCOPE_INSUFFICIENT",
        "PAYLOAD_TOO_LARGE",
        "RATE_LIMITED",
        "IDEMPOTENCY_CONFLICT",
        "UNAVAILABLE",
        "INTERNAL_ERROR",
    }


def test_correction_missing_case_id_reproduces_seed_message() -> None:
    body = {k: v for k, v in SEED_001_REQUEST.items() if k != "case_id"}
    result = classify(body)
    assert result.contract is Contract.CORRECTION
    assert result.error is not None
    assert describe_validation_error(result.error) == "Field 'case_id' is required."
    assert first_missing_field(result.error) == "case_id"
    assert correction_error_code(result.error) is CorrectionErrorCode.MISSING_REQUIRED_FIELD


def test_correction_with_only_module_lists_all_missing_fields() -> None:
    result = classify({"module": "intent_classifier"})
    assert result.contract is Contract.CORRECTION
    assert result.error is not None
    assert describe_validation_error(result.error) == (
        "Field 'case_id' is required. Field 'original_output' is required. "
        "Field 'corrected_output' is required. Field 'actor' is required."
    )
    assert first_missing_field(result.error) == "case_id"


def test_correction_missing_beats_invalid() -> None:
    err = _error(
        CorrectionRequest, {"case_id": 5, "module": "m", "original_output": 1, "corrected_output": 2}
    )
    assert first_missing_field(err) == "actor"
    assert correction_error_code(err) is CorrectionErrorCode.MISSING_REQUIRED_FIELD


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"case_id": 5}, "Field 'case_id': must be a string."),
        ({"module": ""}, "Field 'module': must not be empty."),
        ({"actor": ["rep"]}, "Field 'actor': must be an object."),
        ({"tenant": "x"}, "Field 'tenant' is not allowed."),
    ],
)
def test_correction_invalid_fields(patch: dict[str, Any], message: str) -> None:
    err = _error(CorrectionRequest, {**SEED_001_REQUEST, **patch})
    assert describe_validation_error(err) == message
    assert first_missing_field(err) is None
    assert correction_error_code(err) is CorrectionErrorCode.INVALID_FIELD


def test_correction_null_outputs_are_present_not_missing() -> None:
    model = CorrectionRequest.model_validate({**SEED_001_REQUEST, "original_output": None})
    assert model.original_output is None


# --- seed 002 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [SEED_002_SIMPLE, SEED_002_MULTIPLE, SEED_002_MIXED, SEED_002_NESTED])
def test_seed_002_arrays_classify_as_inference_feedback(body: list[dict[str, Any]]) -> None:
    result = classify(body)
    assert result.outcome is ClassifyOutcome.MATCHED
    assert result.contract is Contract.INFERENCE_FEEDBACK
    assert result.model is None
    assert result.error is None
    events = [validate_inference_item(item) for item in body]
    assert all(isinstance(e, InferenceFeedbackEvent) for e in events)


def test_seed_002_items_keep_their_fields() -> None:
    event = validate_inference_item(SEED_002_MIXED[0])
    assert isinstance(event, InferenceFeedbackEvent)
    assert event.id == "019503a2-d4e5-7f60-a1b2-c3d4e5f60718"
    assert event.tags == {"evaluator": "human", "task": "question-answering"}
    assert event.optimize == "max"
    assert event.entries()[-1] == FlatEntry("accuracy", 4.0, "Correct but could include more detail")


def test_seed_002_nested_feedback_ids_use_dotted_keys() -> None:
    event = InferenceFeedbackEvent.model_validate(SEED_002_NESTED[0])
    ids = event.feedback_ids()
    assert list(ids) == ["evaluation.quality.precision", "evaluation.quality.recall", "helpful"]
    assert ids["helpful"] == feedback_id("019503a1-b2c3-7d4e-8f01-234567890abc", "helpful")
    assert len(set(ids.values())) == 3


def test_empty_feedback_is_valid_and_has_no_ids() -> None:
    event = InferenceFeedbackEvent.model_validate(
        {"id": "019503a1-b2c3-7d4e-8f01-234567890abc", "feedback": {}}
    )
    assert event.feedback_ids() == {}


def test_event_id_is_canonicalized() -> None:
    event = InferenceFeedbackEvent.model_validate({"id": "019503A1B2C37D4E8F01234567890ABC", "feedback": {}})
    assert event.id == "019503a1-b2c3-7d4e-8f01-234567890abc"


@pytest.mark.parametrize("body", SEED_002_RESPONSES)
def test_seed_002_responses_validate(body: list[dict[str, Any]]) -> None:
    results = [InferenceFeedbackResult.model_validate(item) for item in body]
    assert [r.feedback_ids for r in results] == [item.get("feedback_ids") for item in body]


def test_seed_002_partial_failure_error() -> None:
    result = InferenceFeedbackResult.model_validate(SEED_002_RESPONSES[1][1])
    assert result.error == ItemError(status_code=400, message="ID does not exist")


def test_inference_result_constructors() -> None:
    assert InferenceFeedbackResult.ok({"a": "1"}).model_dump() == {"feedback_ids": {"a": "1"}, "error": None}
    assert InferenceFeedbackResult.failed(400, "bad").model_dump() == {
        "feedback_ids": None,
        "error": {"status_code": 400, "message": "bad"},
    }


@pytest.mark.parametrize(
    "body", [{}, {"feedback_ids": {"a": "1"}, "error": {"status_code": 400, "message": "x"}}]
)
def test_inference_result_needs_exactly_one_side(body: dict[str, Any]) -> None:
    err = _error(InferenceFeedbackResult, body)
    assert "exactly one of 'feedback_ids' and 'error' must be set" in describe_validation_error(err)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("not an object", "Each feedback event must be a JSON object."),
        (None, "Each feedback event must be a JSON object."),
        ({"feedback": {}}, "Field 'id' is required."),
        (
            {"id": "nope", "feedback": {}},
            "Field 'id': must be a UUID such as '550e8400-e29b-41d4-a716-446655440000'.",
        ),
        ({"id": "019503a1-b2c3-7d4e-8f01-234567890abc"}, "Field 'feedback' is required."),
        (
            {"id": "019503a1-b2c3-7d4e-8f01-234567890abc", "feedback": {"a": {"b": None}}},
            "Field 'feedback': unsupported value type null at 'a.b'.",
        ),
        (
            {"id": "019503a1-b2c3-7d4e-8f01-234567890abc", "feedback": {"tags": [1]}},
            "Field 'feedback': unsupported value type array at 'tags'.",
        ),
        (
            {"id": "019503a1-b2c3-7d4e-8f01-234567890abc", "feedback": {"a.b": 1, "a": {"b": 2}}},
            "Field 'feedback': duplicate feedback key 'a.b' after flattening nested objects.",
        ),
        (
            {"id": "019503a1-b2c3-7d4e-8f01-234567890abc", "feedback": {}, "optimize": "up"},
            "Field 'optimize': must be one of 'max' or 'min'.",
        ),
        (
            {"id": "019503a1-b2c3-7d4e-8f01-234567890abc", "feedback": {}, "tags": {"n": 1}},
            "Field 'tags.n': must be a string.",
        ),
        (
            {"id": "019503a1-b2c3-7d4e-8f01-234567890abc", "feedback": [], "extra": 1},
            "Field 'feedback': must be an object. Field 'extra' is not allowed.",
        ),
    ],
)
def test_inference_item_errors_are_per_item_400s(item: Any, message: str) -> None:
    assert validate_inference_item(item) == ItemError(status_code=400, message=message)


def test_bad_item_does_not_affect_others() -> None:
    body = [SEED_002_SIMPLE[0], {"id": "x", "feedback": {}}, SEED_002_MULTIPLE[1]]
    assert classify(body).contract is Contract.INFERENCE_FEEDBACK
    kinds = [type(validate_inference_item(item)).__name__ for item in body]
    assert kinds == ["InferenceFeedbackEvent", "ItemError", "InferenceFeedbackEvent"]


def test_empty_array_is_inference_feedback() -> None:
    assert classify([]).contract is Contract.INFERENCE_FEEDBACK


# --- seed 003 ------------------------------------------------------------------------------------


def test_seed_003_request_validates() -> None:
    request = ScoredOutputRequest.model_validate(SEED_003_REQUEST)
    assert request.model_dump(exclude={"trace_id", "span_id"}) == SEED_003_REQUEST
    assert (request.trace_id, request.span_id) == (None, None)  # ours, optional (docs/design.md)


def test_seed_003_defaults() -> None:
    request = ScoredOutputRequest.model_validate({"task_id": "550e8400-e29b-41d4-a716-446655440000"})
    assert (request.inputs, request.output, request.score, request.source, request.metadata) == (
        None,
        None,
        None,
        "sdk",
        None,
    )


def test_seed_003_task_id_is_canonicalized() -> None:
    request = ScoredOutputRequest.model_validate({"task_id": "550E8400-E29B-41D4-A716-446655440000"})
    assert request.task_id == "550e8400-e29b-41d4-a716-446655440000"


def test_seed_003_response_and_list_validate() -> None:
    response = ScoredOutputResponse.model_validate(SEED_003_RESPONSE)
    assert response.model_dump(mode="json") == SEED_003_RESPONSE
    assert list(response.model_dump()) == list(SEED_003_RESPONSE)  # the seed's field order
    for entry in SEED_003_LIST:
        assert ScoredOutputResponse.model_validate(entry).model_dump(mode="json") == entry


def test_seed_003_response_from_request() -> None:
    request = ScoredOutputRequest.model_validate(SEED_003_REQUEST)
    created = datetime(2024, 1, 15, 10, 35, tzinfo=UTC)
    response = ScoredOutputResponse.from_request(
        request, id="a1b2c3d4-e5f6-7890-abcd-ef1234567890", created_at=created
    )
    assert response.model_dump(mode="json") == SEED_003_RESPONSE


@pytest.mark.parametrize("score", [1.5, -0.1, 1.0000001, math.nan, math.inf])
def test_seed_003_score_out_of_range_is_distinguishable(score: float) -> None:
    err = _error(ScoredOutputRequest, {**SEED_003_REQUEST, "score": score})
    assert is_score_range_error(err)


@pytest.mark.parametrize("score", [0, 0.0, 1, 1.0, 0.5])
def test_seed_003_score_bounds_are_inclusive(score: float) -> None:
    assert ScoredOutputRequest.model_validate({**SEED_003_REQUEST, "score": score}).score == float(score)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            {"task_id": "t-1"},
            "Field 'task_id': must be a UUID such as '550e8400-e29b-41d4-a716-446655440000'.",
        ),
        ({"source": "manual"}, "Field 'source': must be one of 'sdk', 'user_rating', 'auto_eval' or 'seed'."),
        ({"score": "0.9"}, "Field 'score': must be a number."),
        ({"score": True}, "Field 'score': must be a number."),
        ({"inputs": "text"}, "Field 'inputs': must be an object."),
        ({"output": 3}, "Field 'output': must be a string."),
        ({"rating": 1}, "Field 'rating' is not allowed."),
    ],
)
def test_seed_003_other_errors_are_not_score_range(patch: dict[str, Any], message: str) -> None:
    err = _error(ScoredOutputRequest, {**SEED_003_REQUEST, **patch})
    assert not is_score_range_error(err)
    assert describe_validation_error(err) == message


def test_seed_003_score_range_message() -> None:
    err = _error(ScoredOutputRequest, {**SEED_003_REQUEST, "score": 2})
    assert describe_validation_error(err) == "Field 'score': must be <= 1."


def test_seed_003_range_error_alongside_other_errors_still_detected() -> None:
    err = _error(ScoredOutputRequest, {"score": 7})
    assert first_missing_field(err) == "task_id"
    assert is_score_range_error(err)


def test_seed_003_body_on_v1_feedback_matches_nothing_with_a_hint() -> None:
    result = classify(SEED_003_REQUEST)
    assert result.outcome is ClassifyOutcome.NO_CONTRACT
    assert result.contract is None
    assert set(result.reasons) == {Contract.RANKING_OUTCOME, Contract.CORRECTION, Contract.SEARCH_EVENT}
    assert result.hint == "Scored outputs (task_id) go to POST /api/v1/feedback."
    assert result.message.endswith(result.hint)


# --- seed 004 ------------------------------------------------------------------------------------


def test_seed_004_event_types() -> None:
    assert [t.value for t in SearchEventType] == SEED_004_EVENT_TYPES


@pytest.mark.parametrize("event_type", SEED_004_EVENT_TYPES)
def test_every_event_type_classifies_as_search_event(event_type: str) -> None:
    result = classify({"event_type": event_type})
    assert result.contract is Contract.SEARCH_EVENT
    assert isinstance(result.model, SearchEventRequest)
    assert result.model.event_type == SearchEventType(event_type)
    assert result.model.rank is None


def test_full_search_event_validates() -> None:
    result = classify(SEARCH_BODY)
    assert isinstance(result.model, SearchEventRequest)
    assert result.model.model_dump(mode="json") == SEARCH_BODY


def test_seed_004_literal_empty_body_matches_no_contract() -> None:
    result = classify(SEED_004_REQUEST)
    assert result.outcome is ClassifyOutcome.NO_CONTRACT
    assert result.contract is None
    assert result.signalled == ()
    assert result.reasons == {
        Contract.RANKING_OUTCOME: "Field 'domain' is required. Field 'items' is required.",
        Contract.CORRECTION: (
            "Field 'case_id' is required. Field 'module' is required. Field 'original_output' is required. "
            "(2 more problem(s) not shown.)"
        ),
        Contract.SEARCH_EVENT: "Field 'event_type' is required.",
    }
    assert result.message.startswith("Body matches no feedback contract. [ranking_outcome] Field 'domain'")


def test_seed_004_response_validates() -> None:
    response = SearchEventResponse.model_validate(SEED_004_RESPONSE)
    expected = {k: v for k, v in SEED_004_RESPONSE.items() if k != "$schema"}
    assert response.model_dump() == expected


def test_search_response_usage_is_optional() -> None:
    body = {k: v for k, v in SEED_004_RESPONSE.items() if k not in ("$schema", "usage")}
    assert SearchEventResponse.model_validate(body).usage is None


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"event_type": "clicked"}, "Field 'event_type': must be one of 'result_helpful', "),
        ({"rank": 0}, "Field 'rank': must be >= 1."),
        ({"rank": 1.5}, "Field 'rank': must be an integer."),
        ({"rank": "2"}, "Field 'rank': must be an integer."),
        ({"doc_id": "doc-1"}, "Field 'doc_id': must be a UUID"),
        ({"session_id": 12}, "Field 'session_id': must be a string."),
        ({"agent_context": "bot"}, "Field 'agent_context': must be an object."),
        ({"score": 1}, "Field 'score' is not allowed."),
    ],
)
def test_search_event_errors(patch: dict[str, Any], message: str) -> None:
    result = classify({**SEARCH_BODY, **patch})
    assert result.outcome is ClassifyOutcome.MATCHED
    assert result.contract is Contract.SEARCH_EVENT
    assert result.error is not None
    assert describe_validation_error(result.error).startswith(message)
    assert result.message.startswith("Body is a search_event request but invalid: " + message)


# --- classification ------------------------------------------------------------------------------


def test_signature_picks_contract_even_when_invalid() -> None:
    result = classify({"domain": "dating"})
    assert result == Classified(
        ClassifyOutcome.MATCHED,
        Contract.RANKING_OUTCOME,
        (Contract.RANKING_OUTCOME,),
        None,
        result.error,
        {Contract.RANKING_OUTCOME: "Field 'items' is required."},
    )


@pytest.mark.parametrize("key", ["case_id", "module", "original_output", "corrected_output", "actor"])
def test_every_correction_signature_key(key: str) -> None:
    assert classify({key: "x"}).contract is Contract.CORRECTION


@pytest.mark.parametrize("key", ["domain", "items"])
def test_every_ranking_signature_key(key: str) -> None:
    assert classify({key: "x"}).contract is Contract.RANKING_OUTCOME


def test_several_signalled_contracts_are_ambiguous() -> None:
    result = classify(
        {"domain": "dating", "items": SEED_000_REQUEST["items"], "event_type": "result_helpful"}
    )
    assert result.outcome is ClassifyOutcome.AMBIGUOUS
    assert result.contract is None
    assert result.signalled == (Contract.RANKING_OUTCOME, Contract.SEARCH_EVENT)
    assert result.reasons[Contract.RANKING_OUTCOME] == "Field 'event_type' is not allowed."
    assert (
        result.reasons[Contract.SEARCH_EVENT]
        == "Field 'domain' is not allowed. Field 'items' is not allowed."
    )
    assert result.message.startswith(
        "Body mixes fields of several feedback contracts (ranking_outcome, search_event). [ranking_outcome]"
    )


def test_unknown_object_matches_nothing() -> None:
    result = classify({"thumbs": "up"})
    assert result.outcome is ClassifyOutcome.NO_CONTRACT
    assert result.hint is None
    assert result.reasons[Contract.SEARCH_EVENT] == (
        "Field 'event_type' is required. Field 'thumbs' is not allowed."
    )


@pytest.mark.parametrize(("body", "kind"), [(None, "null"), ("text", "str"), (42, "int"), (True, "bool")])
def test_non_object_bodies_match_nothing(body: Any, kind: str) -> None:
    result = classify(body)
    assert result.outcome is ClassifyOutcome.NO_CONTRACT
    assert result.reasons[Contract.CORRECTION] == f"Body must be a JSON object, not {kind}."
    assert "Send a JSON object, or a JSON array" in result.message


def test_matched_valid_message() -> None:
    assert classify(SEED_001_REQUEST).message == "Body is a correction request."


# --- generic errors, messages, schemas -----------------------------------------------------------


def test_error_body_shape() -> None:
    body = ErrorBody.model_validate(
        {"error": {"code": "RATE_LIMITED", "message": "Slow down."}, "request_id": "req_1"}
    )
    assert body.model_dump() == {
        "error": {"code": "RATE_LIMITED", "message": "Slow down.", "details": None},
        "correlation_id": None,
        "request_id": "req_1",
    }


def test_describe_validation_error_caps_the_list() -> None:
    err = _error(CorrectionRequest, {})
    assert describe_validation_error(err, max_errors=1) == (
        "Field 'case_id' is required. (4 more problem(s) not shown.)"
    )


def test_describe_root_error() -> None:
    err = _error(CorrectionRequest, ["not", "an", "object"])
    assert describe_validation_error(err) == "Body: must be an object."


def test_messages_never_echo_input() -> None:
    err = _error(RankingOutcomeRequest, {"domain": "secret-value-123", "items": "also-secret-456"})
    assert "secret" not in describe_validation_error(err)


@pytest.mark.parametrize(
    "model",
    [
        RankingOutcomeRequest,
        RankingOutcomeResponse,
        CorrectionRequest,
        CorrectionResponse,
        CorrectionError,
        InferenceFeedbackEvent,
        InferenceFeedbackResult,
        ScoredOutputRequest,
        ScoredOutputResponse,
        SearchEventRequest,
        SearchEventResponse,
        ErrorBody,
    ],
)
def test_schema_examples_are_valid_instances(model: type[BaseModel]) -> None:
    examples = model.model_json_schema()["examples"]
    assert examples
    for example in examples:
        model.model_validate(example)


def test_request_schemas_forbid_extra_fields() -> None:
    for model in (RankingOutcomeRequest, CorrectionRequest, InferenceFeedbackEvent, ScoredOutputRequest):
        assert model.model_json_schema()["additionalProperties"] is False
    assert ScoredOutputRequest.model_json_schema()["properties"]["task_id"]["format"] == "uuid"
