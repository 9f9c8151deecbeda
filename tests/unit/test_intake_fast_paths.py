"""The intake's fast paths give exactly what the general code gives: seed 002's answers without a
model per item, the depth check without paths for plain JSON, the validator's flattening reused."""

from __future__ import annotations

import uuid
from collections import UserDict
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.api import answers, intake
from pipeline.api.contracts import InferenceFeedbackEvent, InferenceFeedbackResult
from pipeline.limits import MAX_DEPTH, MAX_TAGS, DepthExceeded, _name_too_deep, deepest_path
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


# --- seed 002: a plainly valid item skips the model, with the model's own payload -----------------

_U = "6f1c2d3e-4b5a-4c7d-8e9f-a0b1c2d3e4f5"
_text = st.text(max_size=3) | st.sampled_from(["a" * 64, "a" * 65, "b" * 256, "b" * 257, "é" * 64])
_valid_leaf = (
    st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=3)
)
_odd_leaf = st.none() | st.floats() | st.lists(st.integers(), max_size=2) | st.sampled_from([10**400])
_feedback = st.recursive(
    _valid_leaf | _valid_leaf | _valid_leaf | _odd_leaf,
    lambda children: st.dictionaries(
        st.sampled_from(["a", "b", "c", "a.b", "score", "reason", ""]), children, max_size=3
    ),
    max_leaves=10,
)


def _sometimes(draw: st.DrawFn, one_in: int) -> bool:
    return draw(st.integers(0, one_in - 1)) == 0


@st.composite
def _items(draw: st.DrawFn) -> dict[str, Any]:
    """Items that are mostly valid, each field sometimes off (so both paths are taken often)."""
    item: dict[str, Any] = {}
    if not _sometimes(draw, 10):
        odd = [_U.upper(), "{" + _U + "}", _U.replace("-", ""), "x", 5, None]
        item["id"] = draw(st.sampled_from(odd)) if _sometimes(draw, 4) else _U
    if not _sometimes(draw, 10):
        item["feedback"] = draw(st.dictionaries(st.sampled_from(["a", "b", "q"]), _feedback, max_size=4))
    if _sometimes(draw, 2):
        item["tags"] = draw(
            st.none()
            | st.integers()
            | st.dictionaries(_text, _text, max_size=3)
            | st.dictionaries(_text, _text | st.integers() | st.none(), max_size=MAX_TAGS + 1)
            | st.sampled_from([{f"k{i}": "v" for i in range(n)} for n in (MAX_TAGS, MAX_TAGS + 1)])
        )
    if _sometimes(draw, 2):
        item["optimize"] = draw(st.sampled_from(["max", "min", "MAX", "", None, 1]))
    if _sometimes(draw, 10):
        item["trace_id"] = draw(st.sampled_from(["0af7651916cd43dd8448eb211c80319c", "x"]))
    if _sometimes(draw, 20):
        item["extra"] = 1
    return item


@settings(max_examples=800, deadline=None)
@given(_items())
def test_a_plain_item_is_what_the_model_makes_of_it(item: dict[str, Any]) -> None:
    plain = intake.plain_inference_item(item)
    checked = intake.validate_inference_item(item)
    if plain is None:
        return
    payload, entries = plain
    assert isinstance(checked, InferenceFeedbackEvent), checked
    assert payload == intake.inference_payload(checked)
    assert entries == checked.entries()


def test_the_common_items_take_the_plain_path() -> None:
    """Not a vacuous property: the shapes the seeds show (and tags at their bounds) are plain."""
    for item in [
        {"id": _U, "feedback": {"helpful": True, "q": {"a": {"score": 4, "reason": "r"}, "t": 0.5}}},
        {"id": _U, "feedback": {}, "tags": {"a" * 64: "b" * 256}, "optimize": "min"},
        {"id": _U, "feedback": {"x": "y"}, "tags": None},
        {"id": _U, "feedback": {"x": 1}, "tags": {f"k{i}": "v" for i in range(MAX_TAGS)}},
    ]:
        assert intake.plain_inference_item(item) is not None, item


@pytest.mark.parametrize(
    "tags",
    [
        {"a" * 64: "v"},
        {"a" * 65: "v"},
        {"k": "b" * 256},
        {"k": "b" * 257},
        {"é" * 64: "é" * 256},
        {f"k{i}": "v" for i in range(MAX_TAGS)},
        {f"k{i}": "v" for i in range(MAX_TAGS + 1)},
        {"k": 1},
        {"k": None},
        {},
        None,
        [],
    ],
    ids=lambda t: str(t)[:24],
)
def test_tags_at_their_bounds_take_the_plain_path_exactly_when_the_model_takes_them(tags: Any) -> None:
    item = {"id": _U, "feedback": {"ok": True}, "tags": tags}
    plain = intake.plain_inference_item(item)
    checked = intake.validate_inference_item(item)
    assert (plain is not None) == isinstance(checked, InferenceFeedbackEvent), checked
    if plain is not None:
        assert plain[0] == intake.inference_payload(checked)  # type: ignore[arg-type]
