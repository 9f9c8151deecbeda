"""Hostile bodies, thrown by hypothesis at POST /v1/feedback and /api/v1/feedback of the real app,
in process (tests/inprocess.py; was on a subprocess ingest and the broker).

Whatever comes in: never a 500, always JSON in the contract's error shape with the caller's
correlation id, and exactly what was accepted (nothing of a rejected request or item) written,
checked once at the end by correlation id on the in-memory writer. That nothing refused reaches the
real ``feedback.raw`` is tests/integration/test_ingest_errors.py's.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import contracts
from tests.inprocess import DEV_KEY, Edge, start_edge

TASK_ID = "550e8400-e29b-41d4-a716-446655440000"
RANKING_KEYS = {"domain", "items"}
CORRECTION_KEYS = {"case_id", "module", "original_output", "corrected_output", "actor"}
SEARCH_KEYS = {"event_type"}
FIELD_NAMES = sorted(
    RANKING_KEYS
    | CORRECTION_KEYS
    | SEARCH_KEYS
    | {"seeker_id", "candidate_id", "outcome", "weight", "id", "feedback", "tags", "optimize"}
    | {"task_id", "inputs", "output", "score", "source", "metadata", "doc_id", "session_id", "rank", "query"}
)
EVENT_TYPES = ["result_helpful", "passage_used", "stale_result", "clicked", ""]
LABELS = ["accepted", "rejected", "converted", "expired", "super_like", "ghosted", "ACCEPTED", "", "maybe"]
NANISH = ["NaN", "nan", "Infinity", "-Infinity", "inf", "1e999", "null", "undefined", "0x10", "-0"]

# --- strategies ------------------------------------------------------------------------------------

keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(NANISH)
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
uuids = st.uuids().map(str)
weights = st.floats(min_value=0, max_value=1e6, allow_nan=False) | junk


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The right thing most of the time, junk otherwise."""
    return st.one_of(*[strategy] * 6, junk)


ranking_item = st.fixed_dictionaries(
    {
        "seeker_id": maybe(st.sampled_from(["fz-a", "fz-b", "fz-c"])),
        "candidate_id": maybe(st.text(min_size=1, max_size=6)),
        "outcome": maybe(st.sampled_from(LABELS)),
    },
    optional={"weight": maybe(weights), "extra": junk},
)
ranking = st.fixed_dictionaries(
    {
        "domain": maybe(st.sampled_from(["search", "jobs", "fz-domain", ""])),
        "items": maybe(st.lists(ranking_item, min_size=1, max_size=5)),
    }
)
labelled = st.fixed_dictionaries(  # well-formed outcomes: only labels, weights and domains vary
    {
        "domain": st.sampled_from(["search", "jobs", "fz-domain"]),
        "items": st.lists(
            st.fixed_dictionaries(
                {
                    "seeker_id": st.sampled_from(["fz-a", "fz-b"]),
                    "candidate_id": st.sampled_from(["x", "y", "z"]),
                    "outcome": st.sampled_from(LABELS),
                },
                optional={"weight": st.floats(min_value=0, max_value=1e300) | st.integers(0, 2**63 - 1)},
            ),
            min_size=1,
            max_size=4,
        ),
    }
)
correction = st.fixed_dictionaries(
    {},
    optional={
        "case_id": maybe(st.text(max_size=8)),
        "module": maybe(st.text(max_size=8)),
        "original_output": junk,
        "corrected_output": junk,
        "actor": maybe(st.dictionaries(st.text(max_size=4), junk, max_size=3)),
        "extra": junk,
    },
).filter(lambda d: bool(set(d) & CORRECTION_KEYS))
feedback = st.recursive(
    st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
    | st.integers(-1000, 1000),
    lambda inner: (
        st.dictionaries(st.text(min_size=1, max_size=5), inner, min_size=1, max_size=3)
        | st.fixed_dictionaries({"score": inner, "reason": st.text(max_size=5)})
    ),
    max_leaves=8,
)
inference_item = st.fixed_dictionaries(
    {
        "id": maybe(uuids),
        "feedback": maybe(st.dictionaries(st.text(min_size=1, max_size=6), feedback, max_size=4)),
    },
    optional={
        "tags": maybe(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2)),
        "optimize": maybe(st.sampled_from(["max", "min"])),
    },
)
inference = st.lists(inference_item | junk, max_size=6)
search = st.fixed_dictionaries(
    {"event_type": maybe(st.sampled_from(EVENT_TYPES))},
    optional={
        "doc_id": maybe(uuids),
        "rank": maybe(st.integers(-2, 5)),
        "query": maybe(st.text(max_size=10)),
        "session_id": maybe(uuids),
        "notes": junk,
    },
)
scored = st.fixed_dictionaries(
    {"task_id": maybe(st.sampled_from([TASK_ID, TASK_ID.upper(), str(uuid.UUID(int=1))]))},
    optional={
        "score": maybe(st.floats(min_value=-0.5, max_value=1.5, allow_nan=False)),
        "source": maybe(st.sampled_from(["sdk", "seed", "user_rating", "human"])),
        "inputs": junk,
        "output": junk,
        "metadata": junk,
    },
)


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    """Bodies JSON libraries would not write: deep nesting, huge numbers, non-finite literals, raw bytes."""
    kind = draw(st.sampled_from(["deep", "huge", "literal", "bytes", "truncated", "unicode"]))
    if kind == "deep":
        depth = draw(st.integers(100, 3000))
        opener, closer = draw(
            st.sampled_from([(b"[", b"]"), (b'{"feedback":', b"}"), (b'{"items":[', b"]}")])
        )
        return opener * depth + b"1" + closer * depth
    if kind == "huge":
        digits = draw(st.integers(19, 800))
        number = b"9" * digits
        return draw(
            st.sampled_from(
                [
                    number,
                    b'{"domain":"search","items":[{"seeker_id":"fz-h","candidate_id":"c","outcome":"accepted","weight":'
                    + number
                    + b"}]}",
                    b'[{"id":"' + str(uuid.uuid4()).encode() + b'","feedback":{"n":' + number + b"}}]",
                    b'{"event_type":"passage_used","rank":' + number + b"}",
                ]
            )
        )
    if kind == "literal":
        literal = draw(
            st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"undefined"])
        )
        return (
            b'{"domain":"search","items":[{"seeker_id":"fz-l","candidate_id":"c","outcome":"accepted","weight":'
            + literal
            + b"}]}"
        )
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "truncated":
        whole = orjson.dumps(draw(junk))
        return whole[: draw(st.integers(0, max(0, len(whole) - 1)))]
    return orjson.dumps(draw(st.text(max_size=30)))


# (path, body as JSON value or raw bytes)
cases = st.one_of(
    st.tuples(st.just("/v1/feedback"), junk),
    st.tuples(st.just("/v1/feedback"), ranking),
    st.tuples(st.just("/v1/feedback"), labelled),
    st.tuples(st.just("/v1/feedback"), correction),
    st.tuples(st.just("/v1/feedback"), inference),
    st.tuples(st.just("/v1/feedback"), search),
    st.tuples(st.just("/v1/feedback"), hostile_bytes()),
    st.tuples(st.just("/api/v1/feedback"), scored),
    st.tuples(st.just("/api/v1/feedback"), junk | hostile_bytes()),
)

# --- the property ----------------------------------------------------------------------------------


def expects_seed_001_shape(path: str, body: Any) -> bool:
    """Seed 001's flat error envelope: a body that signals corrections and no other contract."""
    if path != "/v1/feedback" or not isinstance(body, dict):
        return False
    present = set(body)
    return bool(present & CORRECTION_KEYS) and not present & (RANKING_KEYS | SEARCH_KEYS)


def events_expected(path: str, status: int, answer: Any, body: Any) -> int:
    """How many raw events the answer says were written (0 for any error)."""
    if status >= 400:
        return 0
    if path == "/api/v1/feedback":
        return 1
    if isinstance(answer, list):  # seed 002: one event per item that got feedback ids
        assert len(answer) == len(body)
        for item in answer:
            assert set(item) == {"feedback_ids", "error"}
            assert (item["feedback_ids"] is None) != (item["error"] is None)
            if item["error"] is not None:
                assert item["error"]["status_code"] == 400 and item["error"]["message"]
        return sum(item["feedback_ids"] is not None for item in answer)
    if (
        "accepted" in answer
        and isinstance(answer["accepted"], int)
        and not isinstance(answer["accepted"], bool)
    ):
        rejected = {r["index"] for r in answer.get("rejected", [])}
        assert answer["accepted"] == len(body["items"]) - len(rejected)
        return len({item["seeker_id"] for i, item in enumerate(body["items"]) if i not in rejected})
    return 1  # seed 001 or 004


@pytest.fixture
def loop_edge() -> Iterator[tuple[asyncio.AbstractEventLoop, Edge]]:
    """An edge on a loop of its own: hypothesis drives each example synchronously."""
    loop = asyncio.new_event_loop()
    edge, client = loop.run_until_complete(start_edge())
    yield loop, edge
    loop.run_until_complete(client.close())
    loop.close()


def test_hostile_bodies_never_500_always_shaped_and_nothing_rejected_is_written(
    loop_edge: tuple[asyncio.AbstractEventLoop, Edge],
) -> None:
    loop, edge = loop_edge
    expected: dict[str, int] = {}

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(case=cases)
    def one_request(case: tuple[str, Any]) -> None:
        path, body = case
        correlation_id = f"fz-{uuid.uuid4().hex}"
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        key, header = (DEV_KEY, "bearer") if path == "/v1/feedback" else ("kaizen_abc123", "x-api-key")
        status, answer, headers = loop.run_until_complete(
            edge.send(path, raw=raw, key=key, header=header, correlation_id=correlation_id)
        )
        assert status < 500, (status, answer)
        assert status in (200, 201, 202, 400, 403, 404, 413, 422), (status, answer)
        assert headers["content-type"].startswith("application/json"), answer
        assert isinstance(answer, dict | list), answer
        assert headers["x-correlation-id"] == correlation_id
        if status >= 400:
            assert isinstance(answer, dict)
            assert answer["correlation_id"] == correlation_id
            assert answer["request_id"] == headers["x-request-id"]
            if not isinstance(body, bytes) and expects_seed_001_shape(path, body):
                assert set(answer) == {"error_code", "message", "correlation_id", "request_id"}, answer
                assert answer["error_code"] in (
                    "MISSING_REQUIRED_FIELD",
                    "INVALID_FIELD",
                    "SCOPE_INSUFFICIENT",
                )
            else:
                assert set(answer) == {"error", "correlation_id", "request_id"}, answer
                assert set(answer["error"]) == {"code", "message", "details"}
                assert isinstance(answer["error"]["code"], str) and answer["error"]["message"]
        parsed = orjson.loads(raw) if status < 400 else None
        expected[correlation_id] = events_expected(path, status, answer, parsed)

    one_request()

    assert len(expected) >= 150
    assert any(n == 0 for n in expected.values()) and any(n > 0 for n in expected.values())
    seen = collections.Counter(dict(r.headers)["correlation_id"].decode() for r in edge.writer.records)
    for r in edge.writer.records:  # an array record holds several of a request's envelopes
        seen[dict(r.headers)["correlation_id"].decode()] += len(contracts.split_record(r.value)) - 1
    assert set(seen) <= set(expected)
    rejected_but_written = {c: n for c, n in seen.items() if expected[c] == 0}
    assert rejected_but_written == {}
    assert {c: n for c, n in seen.items()} == {c: n for c, n in expected.items() if n}
