"""The intake's fast paths give exactly what the general code gives: seed 002's answers without a
model per item, the depth check without paths for plain JSON, the validator's flattening reused."""

from __future__ import annotations

import uuid
from collections import UserDict
from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline.api import answers, intake
from pipeline.api.contracts import InferenceFeedbackEvent, InferenceFeedbackResult
from pipeline.limits import MAX_DEPTH, DepthExceeded, _name_too_deep, deepest_path
from pipeline.rules.flatten import feedback_id, flatten_feedback
from pipeline.tenants import load_tenants
from pipeline.wire.envelope import InferenceFeedbackEnvelope
from tests.conftest import TEST_TENANTS


def _ctx() -> intake.Context:
    tenant = load_tenants(TEST_TENANTS).authenticate("fs_dev_key_123")
    assert tenant is not None
    return intake.Context(tenant, "req_1", "c-1", datetime(2024, 1, 15, tzinfo=UTC))


ITEMS: list[Any] = [
    {"id": str(uuid.uuid4()), "feedback": {"helpful": True, "quality": {"tone": {"formal": 0.5}}}},
    {"id": "not-a-uuid", "feedback": {"ok": True}},
    "not an object",
    {"id": str(uuid.uuid4()), "feedback": {"accuracy": {"score": 4, "reason": "close"}}, "tags": {"a": "b"}},
    {"id": str(uuid.uuid4()), "feedback": {"bad": [1, 2]}},
    {"id": str(uuid.uuid4()), "feedback": {}},
]


def test_seed002_answers_are_the_models_dumps() -> None:
    taken = intake.inference_feedback(_ctx(), ITEMS)
    assert len(taken.events) == 3 and len(taken.rejected) == 3
    fast = answers.item_answers(taken)
    models = answers.item_results(taken)
    assert fast == [m.model_dump(mode="json") for m in models]
    assert all(isinstance(m, InferenceFeedbackResult) for m in models)
    # and without the intake's keys (an Intake built elsewhere): the feedback is flattened again
    again = intake.Intake(taken.events, taken.rejected, taken.items)
    assert answers.item_answers(again) == fast
    # the ids are the model's own (uuid5 of event id and key)
    first = taken.events[0]
    assert isinstance(first, InferenceFeedbackEnvelope)
    assert fast[0]["feedback_ids"] == {
        e.key: feedback_id(first.event_id, e.key) for e in flatten_feedback(first.payload.feedback)
    }


def test_the_validators_flattening_is_reused_only_for_its_own_dict() -> None:
    event = InferenceFeedbackEvent.model_validate(ITEMS[0])
    assert event.entries() == flatten_feedback(event.feedback)
    other = InferenceFeedbackEvent.model_validate(ITEMS[3])  # validated last: the slot is its
    assert event.entries() == flatten_feedback(event.feedback)  # not the other one's entries
    assert other.entries() == flatten_feedback(other.feedback)


def _nested(depth: int, kind: str) -> Any:
    body: Any = 1
    for i in range(depth):
        body = {"k": body, "x": "s"} if (kind == "dict" or i % 2) else [body, 2.5, None]
    return body


@pytest.mark.parametrize("kind", ["dict", "mixed"])
@pytest.mark.parametrize("depth", [0, 1, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, MAX_DEPTH + 5])
def test_the_quick_depth_check_agrees_with_the_one_that_names_the_path(depth: int, kind: str) -> None:
    body = _nested(depth, kind)
    try:
        _name_too_deep(body, MAX_DEPTH)  # the walk that names the path, alone
        deep = None
    except DepthExceeded as err:
        deep = err
    if deep is None:
        deepest_path(body, MAX_DEPTH)
        intake.check_edge(body)
    else:
        with pytest.raises(intake.Refused) as refused:
            intake.check_edge(body)
        assert refused.value.details == {"path": deep.path, "limit": MAX_DEPTH}


def test_a_mapping_that_is_not_a_dict_is_checked_too() -> None:
    body: Any = 1
    for _ in range(MAX_DEPTH + 1):
        body = UserDict({"k": body})
    with pytest.raises(intake.Refused) as refused:
        intake.check_edge({"top": body})
    assert refused.value.code == "TOO_DEEP"
