"""The ingest's edge, in process: aiohttp's test client against the real app with an in-memory writer
and stream view. Bounds on every identifier, one maximum depth, canonical task ids, weights, key
caps, authentication before the body, read timeouts, the idempotency store. No broker needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from aiohttp import web

from pipeline import limits
from pipeline.api.ingest import Ingest
from pipeline.api.publisher import FeedbackPublisher, PublishRejected
from pipeline.rules.counters import DomainCounter
from pipeline.tenants import load_tenants
from tests.inprocess import (
    DEV_KEY,
    TENANTS,
    Edge,
    in_process,
    make_settings,
    start_edge,
)

TASK = "550e8400-e29b-41d4-a716-446655440000"
SPELLINGS = [TASK.upper(), "{" + TASK + "}", "urn:uuid:" + TASK, TASK.replace("-", "")]
CORRECTION = {"case_id": "c-1", "module": "m", "original_output": {}, "corrected_output": {}, "actor": {}}


def message_of(answer: dict[str, Any]) -> str:
    return str(answer["message"] if "error_code" in answer else answer["error"]["message"])


# --- identifiers are bounded ------------------------------------------------------------------------


def ranking(**item: Any) -> dict[str, Any]:
    base = {"seeker_id": "s", "candidate_id": "c", "outcome": "accepted"}
    return {"domain": "search", "items": [{**base, **item}]}


def inference(**fields: Any) -> list[dict[str, Any]]:
    return [{"id": "019503a1-b2c3-7d4e-8f01-234567890abc", "feedback": {"ok": True}, **fields}]


ID, LABEL, TEXT = limits.MAX_ID_CHARS, limits.MAX_LABEL_CHARS, limits.MAX_TEXT_CHARS
BOUNDED: list[tuple[str, str, Any, Any, str, int]] = [
    # (id, path, body at the limit, body over it, field named, limit)
    (
        "seeker",
        "/v1/feedback",
        ranking(seeker_id="s" * ID),
        ranking(seeker_id="s" * (ID + 1)),
        "seeker_id",
        ID,
    ),
    (
        "candidate",
        "/v1/feedback",
        ranking(candidate_id="c" * ID),
        ranking(candidate_id="c" * (ID + 1)),
        "candidate_id",
        ID,
    ),
    (
        "domain",
        "/v1/feedback",
        None,
        {**ranking(), "domain": "d" * (limits.MAX_DOMAIN_CHARS + 1)},
        "domain",
        limits.MAX_DOMAIN_CHARS,
    ),
    (
        "case",
        "/v1/feedback",
        {**CORRECTION, "case_id": "c" * ID},
        {**CORRECTION, "case_id": "c" * (ID + 1)},
        "case_id",
        ID,
    ),
    (
        "module",
        "/v1/feedback",
        {**CORRECTION, "module": "m" * ID},
        {**CORRECTION, "module": "m" * (ID + 1)},
        "module",
        ID,
    ),
    (
        "query",
        "/v1/feedback",
        {"event_type": "result_helpful", "query": "q" * TEXT},
        {"event_type": "result_helpful", "query": "q" * (TEXT + 1)},
        "query",
        TEXT,
    ),
    (
        "notes",
        "/v1/feedback",
        {"event_type": "result_helpful", "notes": "n" * TEXT},
        {"event_type": "result_helpful", "notes": "n" * (TEXT + 1)},
        "notes",
        TEXT,
    ),
]


@pytest.mark.parametrize(
    ("path", "ok", "too_long", "name", "limit"), [b[1:] for b in BOUNDED], ids=[b[0] for b in BOUNDED]
)
async def test_identifiers_over_their_limit_are_400_naming_field_and_limit(
    edge: Edge, path: str, ok: Any, too_long: Any, name: str, limit: int
) -> None:
    if ok is not None:
        status, answer, _ = await edge.post(path, ok)
        assert status in (200, 202), answer
    written = len(edge.writer.records)
    status, answer, _ = await edge.post(path, too_long)
    assert status == 400, answer
    assert name in message_of(answer) and str(limit) in message_of(answer), answer
    assert len(edge.writer.records) == written


async def test_outcome_label_over_its_limit_is_400(edge: Edge) -> None:
    status, answer, _ = await edge.post("/v1/feedback", ranking(outcome="x" * (LABEL + 1)))
    assert status == 400
    assert "outcome" in message_of(answer) and str(LABEL) in message_of(answer)


@pytest.mark.parametrize(
    ("tags", "ok"),
    [
        ({"k" * LABEL: "v" * ID}, True),
        ({"k" * (LABEL + 1): "v"}, False),
        ({"k": "v" * (ID + 1)}, False),
        ({f"k{i}": "v" for i in range(limits.MAX_TAGS)}, True),
        ({f"k{i}": "v" for i in range(limits.MAX_TAGS + 1)}, False),
    ],
    ids=["at-limits", "long-key", "long-value", "max-count", "too-many"],
)
async def test_seed_002_tags_are_bounded_per_item(edge: Edge, tags: dict[str, str], ok: bool) -> None:
    status, answer, _ = await edge.post("/v1/feedback", inference(tags=tags))
    assert status == 200
    if ok:
        assert answer[0]["error"] is None, answer
    else:
        assert answer[0]["error"]["status_code"] == 400
        assert "tags" in answer[0]["error"]["message"]


# --- UUIDs: strict, canonical ---------------------------------------------------------------------

PADDED_TASK = "-" * 100_000 + TASK.replace("-", "")


async def test_train_with_a_hyphen_padded_task_id_is_400_and_writes_nothing(edge: Edge) -> None:
    status, answer, _ = await edge.post("/v1/train", {"domain": PADDED_TASK})
    assert status == 400, answer
    assert edge.writer.records == []
    assert len(orjson.dumps(answer)) < 2000  # the answer never echoes the input


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/feedback", {"task_id": "-" * 60 + TASK.replace("-", ""), "score": 0.5}),
        ("/api/v1/feedback", {"task_id": TASK[:8] + "-" + TASK[8:], "score": 0.5}),
        ("/v1/feedback", {"event_type": "result_helpful", "doc_id": "-" * 60 + TASK.replace("-", "")}),
    ],
    ids=["003-padded", "003-extra-hyphen", "004-padded"],
)
async def test_uuids_with_hyphens_anywhere_are_refused(edge: Edge, path: str, body: Any) -> None:
    status, _, _ = await edge.post(path, body)
    assert status in (400, 422)
    assert edge.writer.records == []


async def test_seed_002_id_with_hyphens_anywhere_fails_its_item(edge: Edge) -> None:
    status, answer, _ = await edge.post(
        "/v1/feedback", [{"id": "-" * 50 + TASK.replace("-", ""), "feedback": {"a": 1}}]
    )
    assert status == 200 and answer[0]["error"]["status_code"] == 400
    assert edge.writer.records == []


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_task_spellings_are_one_task_in_the_envelope(edge: Edge, spelling: str) -> None:
    status, answer, _ = await edge.post("/api/v1/feedback", {"task_id": spelling, "score": 0.5})
    assert status == 201, answer
    assert answer["task_id"] == TASK
    (env,) = edge.writer.envelopes()
    assert (env["domain"], env["payload"]["task_id"]) == (TASK, TASK)


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_train_canonicalises_the_task_id(edge: Edge, spelling: str) -> None:
    status, answer, _ = await edge.post("/v1/train", {"domain": spelling})
    assert status == 202, answer
    (record,) = edge.writer.records
    assert record.key == TASK.encode()
    assert orjson.loads(record.value)["domain"] == TASK


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_domain_state_of_a_task_answers_the_canonical_id(edge: Edge, spelling: str) -> None:
    edge.view.domains[TASK] = DomainCounter(pending=3, total=7)
    status, answer, _ = await edge.call("GET", f"/v1/domains/{quote(spelling, safe='')}")
    assert status == 200, answer
    assert (answer["domain"], answer["pending"], answer["total"]) == (TASK, 3, 7)


# --- one maximum depth ----------------------------------------------------------------------------


def nested_json(levels: int) -> str:
    """JSON text of ``levels`` nested objects (orjson cannot even encode past 254)."""
    return '{"a":' * levels + "1" + "}" * levels


def body_with(path: str, before: str, levels: int, after: str) -> bytes:
    return (before + nested_json(levels) + after).encode()


SEARCH_HEAD = '{"event_type":"result_helpful","agent_context":'
CORR_HEAD = '{"case_id":"c","module":"m","original_output":{},"corrected_output":'
# (id, path, text before the nested value, container levels above it, text after)
DEEP: list[tuple[str, str, str, int, str]] = [
    ("001-output", "/v1/feedback", CORR_HEAD, 1, ',"actor":{}}'),
    ("001-actor", "/v1/feedback", CORR_HEAD + '{},"actor":', 1, "}"),
    ("002-feedback", "/v1/feedback", '[{"id":"' + TASK + '","feedback":', 2, "}]"),
    ("003-inputs", "/api/v1/feedback", '{"task_id":"' + TASK + '","score":0.5,"inputs":', 1, "}"),
    ("003-metadata", "/api/v1/feedback", '{"task_id":"' + TASK + '","score":0.5,"metadata":', 1, "}"),
    ("004-agent_context", "/v1/feedback", SEARCH_HEAD, 1, "}"),
]


@pytest.mark.parametrize(("path", "head", "above", "tail"), [d[1:] for d in DEEP], ids=[d[0] for d in DEEP])
async def test_depth_at_the_limit_is_accepted_one_more_is_400_with_the_path(
    edge: Edge, path: str, head: str, above: int, tail: str
) -> None:
    status, answer, _ = await edge.post(path, raw=body_with(path, head, limits.MAX_DEPTH - above, tail))
    assert status in (200, 201), answer
    if isinstance(answer, list):
        assert answer[0]["error"] is None, answer
    written = len(edge.writer.records)
    for total in (limits.MAX_DEPTH + 1, 260, 1000):
        status, answer, _ = await edge.post(path, raw=body_with(path, head, total - above, tail))
        assert status == 400, (total, answer)
        message = message_of(answer)
        assert str(limits.MAX_DEPTH) in message and ".a.a" in message, message
        if "original_output" in head:
            assert answer["error_code"] == "INVALID_FIELD"
        else:
            assert answer["error"]["code"] == "TOO_DEEP"
    assert len(edge.writer.records) == written


def test_publisher_applies_the_same_depth_check() -> None:
    pub = FeedbackPublisher("127.0.0.1:1", load_tenants(TENANTS), "dev", settings=make_settings())
    deep = orjson.loads(SEARCH_HEAD + nested_json(limits.MAX_DEPTH) + "}")
    with pytest.raises(PublishRejected) as err:
        pub.plan(deep)
    assert err.value.status == 400 and err.value.code == "TOO_DEEP"
    ok = orjson.loads(SEARCH_HEAD + nested_json(limits.MAX_DEPTH - 1) + "}")
    intake_, _ = pub.plan(ok)
    assert len(intake_.events) == 1


# --- weights and keys -----------------------------------------------------------------------------


async def test_weight_at_max_is_accepted_above_is_400(edge: Edge) -> None:
    status, answer, _ = await edge.post("/v1/feedback", ranking(weight=limits.MAX_WEIGHT))
    assert status == 202, answer
    status, answer, _ = await edge.post("/v1/feedback", ranking(weight=limits.MAX_WEIGHT * 1.0001))
    assert status == 400
    assert answer["error"]["message"] == f"Field 'items.0.weight': must be <= {limits.MAX_WEIGHT:g}."
    status, answer, _ = await edge.post("/v1/feedback", ranking(weight=1e308))
    assert status == 400


async def test_keys_per_item_capped_per_item(edge: Edge) -> None:
    ok = {f"k{i}": 1 for i in range(limits.MAX_KEYS_PER_ITEM)}
    too_many = {f"k{i}": {"x": 1} for i in range(limits.MAX_KEYS_PER_ITEM + 1)}
    body = [
        {"id": TASK, "feedback": ok},
        {"id": TASK, "feedback": too_many},
    ]
    status, answer, _ = await edge.post("/v1/feedback", body)
    assert status == 200
    assert answer[0]["error"] is None and len(answer[0]["feedback_ids"]) == limits.MAX_KEYS_PER_ITEM
    assert answer[1]["error"]["status_code"] == 400
    assert str(limits.MAX_KEYS_PER_ITEM) in answer[1]["error"]["message"]


async def test_keys_per_request_capped_413(edge: Edge) -> None:
    per = limits.MAX_KEYS_PER_ITEM
    n = limits.MAX_KEYS_PER_REQUEST // per
    item = {"id": TASK, "feedback": {f"k{i}": 1 for i in range(per)}}
    status, answer, _ = await edge.post("/v1/feedback", [item] * n)
    assert status == 200, answer
    status, answer, _ = await edge.post("/v1/feedback", [item] * (n + 1))
    assert status == 413, answer
    assert answer["error"]["code"] == "TOO_MANY_KEYS"
    assert str(limits.MAX_KEYS_PER_REQUEST) in answer["error"]["message"]


# --- authentication before the body, read timeouts, throttled 401s ---------------------------------


async def never_ending_body(first: bytes) -> AsyncIterator[bytes]:
    yield first
    await asyncio.sleep(3600)


@pytest.mark.parametrize("path", ["/v1/feedback", "/api/v1/feedback", "/v1/train"])
async def test_unauthenticated_request_is_answered_before_its_body_is_read(edge: Edge, path: str) -> None:
    """The body never ends: an ingest that read it before authenticating would never answer."""
    async with asyncio.timeout(5):
        async with edge.client.post(path, data=never_ending_body(b'{"domain": "'), headers={}) as resp:
            assert resp.status == 401
            answer = orjson.loads(await resp.read())
    assert answer["error"]["code"] == "UNAUTHENTICATED"


async def test_a_big_unauthenticated_body_is_never_parsed(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[int] = []
    real_loads = orjson.loads

    def counting_loads(data: Any) -> Any:
        parsed.append(len(data))
        return real_loads(data)

    monkeypatch.setattr("pipeline.api.ingest.orjson.loads", counting_loads)
    raw = orjson.dumps([{"id": TASK, "feedback": {"note": "n" * 870_000}}])
    status, answer, _ = await edge.post("/v1/feedback", raw=raw, key="fs_wrong_key")
    assert status == 401, answer
    assert [n for n in parsed if n > 10_000] == []  # (the test's own parse of the answer is small)


async def test_unauthenticated_correction_still_answers_in_seed_001_shape(edge: Edge) -> None:
    status, answer, _ = await edge.post("/v1/feedback", CORRECTION, key="fs_wrong_key")
    assert status == 401
    assert set(answer) == {"error_code", "message", "correlation_id", "request_id"}
    assert answer["error_code"] == "UNAUTHENTICATED"


async def test_401s_are_throttled_per_client_address() -> None:
    e, client = await start_edge(auth_failures_per_s=3)
    try:
        statuses = [
            (await e.post("/v1/feedback", {"event_type": "result_helpful"}, key="bad"))[0] for _ in range(6)
        ]
        assert statuses[:3] == [401, 401, 401]
        assert set(statuses[3:]) == {429}
        status, answer, headers = await e.post("/v1/feedback", {"event_type": "result_helpful"}, key="bad")
        assert status == 429 and answer["error"]["code"] == "TOO_MANY_AUTH_FAILURES"
        assert int(headers["Retry-After"]) >= 1
        status, _, _ = await e.post(
            "/v1/feedback", {"event_type": "result_helpful"}
        )  # a good key still works
        assert status == 200
    finally:
        await client.close()


async def test_a_body_that_stalls_is_408() -> None:
    e, client = await start_edge(body_read_timeout_s=0.3)
    try:
        async with asyncio.timeout(5):
            headers = {"Authorization": f"Bearer {DEV_KEY}"}
            async with client.post("/v1/feedback", data=never_ending_body(b"[{"), headers=headers) as resp:
                assert resp.status == 408
                answer = orjson.loads(await resp.read())
        assert answer["error"]["code"] == "REQUEST_TIMEOUT"
        assert e.writer.records == []
    finally:
        await client.close()


# --- domain state waits for the view, train is idempotent ------------------------------------------


async def test_domain_state_is_503_until_the_view_caught_up(edge: Edge) -> None:
    edge.view.caught_up.clear()
    status, answer, headers = await edge.call("GET", "/v1/domains/dating")
    assert status == 503 and answer["error"]["code"] == "NOT_READY"
    assert headers["Retry-After"] == "1"
    edge.view.caught_up.set()
    status, _, _ = await edge.call("GET", "/v1/domains/dating")
    assert status == 200


async def test_train_honours_idempotency_key(edge: Edge) -> None:
    key = {"Idempotency-Key": "train-1"}
    first = await edge.post("/v1/train", {"domain": "dating"}, headers=key)
    second = await edge.post("/v1/train", {"domain": "dating"}, headers=key)
    assert first[0] == 202 and (second[0], second[1]) == (first[0], first[1])
    assert second[2]["Idempotent-Replayed"] == "true"
    assert len(edge.writer.records) == 1
    conflict = await edge.post("/v1/train", {"domain": "search"}, headers=key)
    assert conflict[0] == 422


async def test_idempotency_key_is_bounded(edge: Edge) -> None:
    status, answer, _ = await edge.post(
        "/v1/feedback", {"event_type": "result_helpful"}, headers={"Idempotency-Key": "k" * (ID + 1)}
    )
    assert status == 400 and "Idempotency-Key" in answer["error"]["message"]
    assert edge.writer.records == []


# --- a client that goes away -------------------------------------------------------------------------


async def serve(ingest: Ingest) -> tuple[web.AppRunner, int]:
    """The app on a real port, with the runner the ingest process uses."""
    return await ingest.start_http("127.0.0.1", 0)


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_idle_keep_alive_connections_close_after_the_timeout() -> None:
    runner, port = await serve(in_process(keepalive_timeout_s=0.3))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEALTHZ)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(
            reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])), 2
        )
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the server, idle
        writer.close()
    finally:
        await runner.cleanup()


async def test_connections_per_client_address_are_capped() -> None:
    runner, port = await serve(in_process(max_connections_per_client=2))
    try:
        first = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEALTHZ)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 2) == b""  # over the cap: closed unanswered
        writer.close()
        r0, w0 = first[0]
        w0.write(HEALTHZ)  # the connections within the cap work
        assert (await asyncio.wait_for(r0.readuntil(b"\r\n"), 2)).startswith(b"HTTP/1.1 200")
        first[1][1].close()
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # room again
        writer.write(HEALTHZ)
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 2)).startswith(b"HTTP/1.1 200")
        for _, w in (first[0], (reader, writer)):
            w.close()
    finally:
        await runner.cleanup()


async def test_healthz_is_503_when_the_writer_was_fenced(edge: Edge) -> None:
    status, answer, _ = await edge.call("GET", "/healthz")
    assert (status, answer) == (200, {"status": "ok"})
    edge.writer.fenced = "Kafka fenced this writer"
    status, answer, _ = await edge.call("GET", "/healthz")
    assert status == 503 and answer["reason"] == "Kafka fenced this writer"


async def test_a_client_that_goes_away_is_not_an_unexpected_error(caplog: pytest.LogCaptureFixture) -> None:
    from pipeline import metrics

    def count(status: str) -> float:
        value: float = metrics.HTTP_REQUESTS.labels("/v1/feedback", "POST", status)._value.get()
        return value

    runner, port = await serve(in_process())
    try:
        before_500, before_499 = count("500"), count("499")
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + DEV_KEY.encode()
            + b'\r\nContent-Length: 1000\r\n\r\n[{"id":'
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.transport.abort()  # reset: the client went away mid-body
        for _ in range(50):
            if count("499") > before_499 or count("500") > before_500:
                break
            await asyncio.sleep(0.05)
        assert (count("500"), count("499")) == (before_500, before_499 + 1)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records
    finally:
        await runner.cleanup()


async def test_seed_004_session_header_is_bounded(edge: Edge) -> None:
    body = {"event_type": "result_helpful"}
    status, answer, _ = await edge.post("/v1/feedback", body, headers={"X-Session-ID": "s" * ID})
    assert status == 200 and answer["session_id"] == "s" * ID
    status, answer, _ = await edge.post("/v1/feedback", body, headers={"X-Session-ID": "s" * (ID + 1)})
    assert (
        status == 400
        and "X-Session-ID" in answer["error"]["message"]
        and str(ID) in answer["error"]["message"]
    )


async def test_every_raw_event_says_how_many_events_its_request_became(edge: Edge) -> None:
    """Any ingest (not just the one that answered) can then tell when a request is complete."""
    body = {
        "domain": "dating",
        "items": [
            {"seeker_id": "u_a", "candidate_id": "u_b", "outcome": "accepted"},
            {"seeker_id": "u_c", "candidate_id": "u_d", "outcome": "accepted"},
        ],
    }
    status, _, _ = await edge.post("/v1/feedback", body)
    assert status in (200, 202)
    envelopes = edge.writer.envelopes()
    assert len(envelopes) == 2
    assert [e["request_events"] for e in envelopes] == [2, 2]
