"""Seed 002 flattening rules and deterministic feedback ids."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.rules.flatten import (
    FEEDBACK_ID_NAMESPACE,
    FlatEntry,
    FlattenError,
    feedback_id,
    feedback_namer,
    flatten_feedback,
)
from pipeline.rules.flatten import _flatten_checked as flatten_checked

# --- the seed's own examples --------------------------------------------------------------------


def test_seed_simple_example() -> None:
    assert flatten_feedback({"helpful": True, "rating": 4.5}) == [
        FlatEntry("helpful", True),
        FlatEntry("rating", 4.5),
    ]


def test_seed_mixed_types_example() -> None:
    feedback = {
        "thumbs_up": True,
        "relevance": 0.92,
        "comment": "Answered the question clearly",
        "accuracy": {"score": 4, "reason": "Correct but could include more detail"},
    }
    assert flatten_feedback(feedback) == [
        FlatEntry("thumbs_up", True),
        FlatEntry("relevance", 0.92),
        FlatEntry("comment", "Answered the question clearly"),
        FlatEntry("accuracy", 4.0, "Correct but could include more detail"),
    ]


def test_seed_nested_example() -> None:
    feedback = {"evaluation": {"quality": {"precision": 0.95, "recall": 0.87}}, "helpful": True}
    assert [(e.key, e.value) for e in flatten_feedback(feedback)] == [
        ("evaluation.quality.precision", 0.95),
        ("evaluation.quality.recall", 0.87),
        ("helpful", True),
    ]


def test_seed_structured_value_example() -> None:
    [entry] = flatten_feedback({"accuracy": {"score": 0.95, "reason": "Correct but missed one edge case"}})
    assert entry == FlatEntry("accuracy", 0.95, "Correct but missed one edge case")


def test_seed_nested_quality_example() -> None:
    assert flatten_feedback({"quality": {"accuracy": 0.95, "clarity": 4.5}}) == [
        FlatEntry("quality.accuracy", 0.95),
        FlatEntry("quality.clarity", 4.5),
    ]


# --- value types ---------------------------------------------------------------------------------


def test_booleans_stay_booleans() -> None:
    entries = flatten_feedback({"t": True, "f": False})
    assert [e.value for e in entries] == [True, False]
    assert all(type(e.value) is bool for e in entries)


def test_ints_become_floats() -> None:
    [entry] = flatten_feedback({"n": 4})
    assert entry.value == 4.0
    assert type(entry.value) is float


def test_strings_stay_strings() -> None:
    [entry] = flatten_feedback({"note": "Great response"})
    assert entry.value == "Great response"
    assert entry.reason is None


@pytest.mark.parametrize(
    ("score", "expected"),
    [(True, True), (False, False), (3, 3.0), (0.5, 0.5), ("good", "good")],
)
def test_structured_score_types(score: Any, expected: Any) -> None:
    [entry] = flatten_feedback({"m": {"score": score}})
    assert entry == FlatEntry("m", expected, None)
    assert type(entry.value) is type(expected)


def test_structured_leaf_keeps_reason_nested() -> None:
    assert flatten_feedback({"a": {"b": {"score": False, "reason": "wrong"}}}) == [
        FlatEntry("a.b", False, "wrong")
    ]


def test_score_only_dict_with_object_score_is_a_nested_dict() -> None:
    assert flatten_feedback({"m": {"score": {"x": 1}}}) == [FlatEntry("m.score.x", 1.0)]


def test_dict_with_more_keys_than_score_reason_is_nested() -> None:
    assert flatten_feedback({"m": {"score": 1, "reason": "r", "extra": True}}) == [
        FlatEntry("m.score", 1.0),
        FlatEntry("m.reason", "r"),
        FlatEntry("m.extra", True),
    ]


def test_reason_alone_is_a_plain_nested_key() -> None:
    assert flatten_feedback({"m": {"reason": "why"}}) == [FlatEntry("m.reason", "why")]


def test_top_level_score_reason_is_not_structured() -> None:
    assert flatten_feedback({"score": 1, "reason": "r"}) == [
        FlatEntry("score", 1.0),
        FlatEntry("reason", "r"),
    ]


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("feedback", "message"),
    [
        ({"a": {"b": None}}, "unsupported value type null at 'a.b'"),
        ({"a": [1, 2]}, "unsupported value type array at 'a'"),
        ({"x": {"y": {"z": math.nan}}}, "unsupported value type non-finite number at 'x.y.z'"),
        ({"x": math.inf}, "unsupported value type non-finite number at 'x'"),
        ({"x": -math.inf}, "unsupported value type non-finite number at 'x'"),
        ({"x": object()}, "unsupported value type object at 'x'"),
        ({"x": b"bytes"}, "unsupported value type bytes at 'x'"),
        ({"x": 10**400}, "number too large at 'x'"),
        ({"m": {"score": math.nan}}, "unsupported value type non-finite number at 'm.score'"),
        ({"m": {"score": None}}, "unsupported value type null at 'm.score'"),
    ],
)
def test_unsupported_values(feedback: Mapping[str, Any], message: str) -> None:
    with pytest.raises(FlattenError) as info:
        flatten_feedback(feedback)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("feedback", "message"),
    [
        (
            {"m": {"score": {"x": 1}, "reason": "r"}},
            "structured score at 'm.score' must be a boolean, number or string, not object",
        ),
        (
            {"m": {"score": [1], "reason": "r"}},
            "structured score at 'm.score' must be a boolean, number or string, not array",
        ),
        (
            {"m": {"score": None, "reason": "r"}},
            "structured score at 'm.score' must be a boolean, number or string, not null",
        ),
        ({"m": {"score": 1, "reason": None}}, "reason at 'm.reason' must be a string, not null"),
        ({"m": {"score": 1, "reason": 2}}, "reason at 'm.reason' must be a string, not int"),
    ],
)
def test_bad_structured_values(feedback: Mapping[str, Any], message: str) -> None:
    with pytest.raises(FlattenError) as info:
        flatten_feedback(feedback)
    assert str(info.value) == message


def test_flatten_error_is_a_value_error() -> None:
    assert issubclass(FlattenError, ValueError)


@pytest.mark.parametrize(
    "feedback",
    [
        {"a.b": 1, "a": {"b": 2}},
        {"a": {"b": 2}, "a.b": 1},
        {"a.b": {"score": 1}, "a": {"b": True}},
        {"x": {"y.z": 1, "y": {"z": 2}}},
    ],
)
def test_colliding_keys_are_rejected_never_overwritten(feedback: Mapping[str, Any]) -> None:
    with pytest.raises(FlattenError, match=r"duplicate feedback key '(a\.b|x\.y\.z)'"):
        flatten_feedback(feedback)


@pytest.mark.parametrize(
    ("feedback", "where"),
    [({"": 1}, "at the top level"), ({"a": {"": 1}}, "under 'a'"), ({1: 2}, "at the top level")],
)
def test_keys_must_be_non_empty_strings(feedback: Mapping[Any, Any], where: str) -> None:
    with pytest.raises(FlattenError, match="feedback keys must be non-empty strings") as info:
        flatten_feedback(feedback)
    assert where in str(info.value)


@pytest.mark.parametrize("feedback", [None, [], "text", 3])
def test_feedback_must_be_an_object(feedback: Any) -> None:
    with pytest.raises(FlattenError, match="feedback must be an object"):
        flatten_feedback(feedback)


# --- shape ---------------------------------------------------------------------------------------


def test_empty_objects() -> None:
    assert flatten_feedback({}) == []
    assert flatten_feedback({"a": {}, "b": {"c": {}}}) == []
    assert flatten_feedback({"a": {}, "b": 1}) == [FlatEntry("b", 1.0)]


def test_order_is_order_of_first_appearance() -> None:
    feedback = {"z": 1, "a": {"y": 2, "b": {"x": 3}, "c": 4}, "m": 5}
    assert [e.key for e in flatten_feedback(feedback)] == ["z", "a.y", "a.b.x", "a.c", "m"]


def test_very_deep_nesting_does_not_recurse() -> None:
    depth = 5000
    feedback: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        feedback = {"k": feedback}
    [entry] = flatten_feedback(feedback)
    assert entry.key == ".".join(["k"] * depth + ["leaf"])
    assert entry.value == 1.0


def test_flat_entry_is_frozen() -> None:
    entry = FlatEntry("a", 1.0)
    with pytest.raises(AttributeError):
        entry.key = "b"  # type: ignore[misc]


# --- feedback ids --------------------------------------------------------------------------------


def test_feedback_namespace_is_the_documented_derivation() -> None:
    assert uuid.uuid5(uuid.NAMESPACE_DNS, "feedback-ids.feedstream") == FEEDBACK_ID_NAMESPACE


def test_feedback_id_is_a_deterministic_uuid5() -> None:
    event = "019503a1-b2c3-7d4e-8f01-234567890abc"
    first = feedback_id(event, "quality.accuracy")
    assert first == feedback_id(event, "quality.accuracy")
    assert uuid.UUID(first).version == 5
    assert first == str(uuid.uuid5(FEEDBACK_ID_NAMESPACE, f"{len(event)}:{event}:quality.accuracy"))


def test_an_events_feedback_namer_gives_its_feedback_ids() -> None:
    for event in ("019503a1-b2c3-7d4e-8f01-234567890abc", "", "é:1"):
        name = feedback_namer(event)
        for key in ("quality.accuracy", "", "🙂.é", "a:b"):
            assert (
                name(key)
                == feedback_id(event, key)
                == str(uuid.uuid5(FEEDBACK_ID_NAMESPACE, f"{len(event)}:{event}:{key}"))
            )


def test_feedback_id_differs_per_key_and_event() -> None:
    ids = {
        feedback_id("e1", "a"),
        feedback_id("e1", "b"),
        feedback_id("e2", "a"),
        feedback_id("e1:a", ""),  # same concatenation as ("e1", "a:") without the length prefix
        feedback_id("e1", "a:"),
    }
    assert len(ids) == 5


# --- properties ----------------------------------------------------------------------------------

_keys = st.text(min_size=0, max_size=6)
_any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _any_json, max_size=5))
def test_random_json_raises_only_flatten_error_and_keys_are_unique(feedback: dict[str, Any]) -> None:
    try:
        entries = flatten_feedback(feedback)
    except FlattenError as err:
        assert str(err)
        return
    keys = [e.key for e in entries]
    assert len(keys) == len(set(keys))
    assert all(isinstance(e.value, bool | float | str) for e in entries)


_dot_free_keys = st.text(alphabet=st.characters(blacklist_characters="."), min_size=1, max_size=6).filter(
    lambda k: k not in ("score", "reason")
)
_valid_scalars = (
    st.booleans()
    | st.integers(-(10**15), 10**15)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_valid_json = st.recursive(
    _valid_scalars, lambda children: st.dictionaries(_dot_free_keys, children, max_size=4), max_leaves=30
)


def _leaves(value: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, (*path, k))]
    return [(path, value)]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_dot_free_keys, _valid_json, max_size=6))
def test_collision_free_input_round_trips_every_leaf(feedback: dict[str, Any]) -> None:
    entries = flatten_feedback(feedback)
    leaves = _leaves(feedback)
    assert len(entries) == len(leaves)
    for entry, (path, original) in zip(entries, leaves, strict=True):
        assert entry.key == ".".join(path)
        assert entry.reason is None
        if isinstance(original, bool):
            assert entry.value is original
        elif isinstance(original, int):
            assert entry.value == float(original)
            assert type(entry.value) is float
        else:
            assert entry.value == original


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(_dot_free_keys, st.tuples(_valid_scalars, st.none() | st.text()), min_size=1, max_size=5)
)
def test_structured_leaves_round_trip(scores: dict[str, tuple[Any, str | None]]) -> None:
    feedback = {
        key: {"score": score} if reason is None else {"score": score, "reason": reason}
        for key, (score, reason) in scores.items()
    }
    entries = flatten_feedback({"m": feedback})
    assert [e.key for e in entries] == [f"m.{k}" for k in scores]
    for entry, (score, reason) in zip(entries, scores.values(), strict=True):
        assert entry.reason == reason
        assert entry.value == (score if isinstance(score, bool | str) else float(score))


# --- the plain fast path gives what the checked loop gives ---------------------------------------

_edge_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400), 2**1023, float("inf"), float("nan"), -0.0])
    | st.floats()
    | st.text(max_size=3)
)
_edge_keys = st.sampled_from(["", "a", "b", "a.b", "score", "reason", "x.y.z"]) | st.text(max_size=3)


def _edge_json(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    structured = st.fixed_dictionaries({"score": leaves}, optional={"reason": leaves})
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=2)
            | st.dictionaries(_edge_keys, children, max_size=4)
            | st.fixed_dictionaries({"score": children}, optional={"reason": children})
            | structured
        ),
        max_leaves=20,
    )


def _outcome(flatten: Any, feedback: Any, **bounds: Any) -> Any:
    try:
        return flatten(feedback, **bounds)
    except FlattenError as err:
        return ("error", str(err))


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(_edge_keys, _edge_json(_edge_scalars), max_size=6), st.sampled_from([None, 1, 3, 64]))
def test_flattening_is_the_checked_loops_for_any_input(feedback: dict[str, Any], bound: int | None) -> None:
    """Same entries, or the same error, whichever path took the input (bounds included)."""
    for bounds in ({}, {"max_keys": bound, "max_key_chars": bound}):
        checked = _outcome(
            lambda f, **b: flatten_checked(f, b.get("max_keys"), b.get("max_key_chars")), feedback, **bounds
        )
        assert _outcome(flatten_feedback, feedback, **bounds) == checked


def test_the_fast_path_leaves_what_is_not_plain_json_to_the_checked_loop() -> None:
    """A Mapping, a str or float subclass, a non-str key: the checked loop's rules and messages."""

    class Text(str):
        pass

    assert flatten_feedback({"a": Text("x")}) == [FlatEntry("a", "x")]
    assert flatten_feedback({"a": {"b": 1}}) == flatten_feedback({"a": MappingProxyType({"b": 1})})
    with pytest.raises(FlattenError, match="non-empty strings"):
        flatten_feedback({1: True})  # type: ignore[dict-item]
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5_000):  # past the recursion limit: the iterative loop flattens it
        node["k"] = node = {}
    node["v"] = True
    (entry,) = flatten_feedback(deep)
    assert entry.key.endswith(".k.v") and entry.value is True
