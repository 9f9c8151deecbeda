"""Every documented error of the ingest, in process (tests/inprocess.py: the real app, an in-memory
writer), with nothing written for it: each rejected request is checked against what the writer got.

Seed 001 answers in its own flat error envelope; the other contracts in the generic one. Partly
valid batches (seeds 000, 002) write exactly their valid items. That a rejected request leaves
nothing on the real ``feedback.raw`` is tests/integration/test_ingest_errors.py's (on the broker).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pipeline.kafka.io import OutRecord
from pipeline.tenants import hash_api_key
from tests.http_helpers import (
    CORRECTION,
    DEV_KEY,
    KAIZEN_KEY,
    OTHER_KEY,
    SCORED,
    SEARCH,
    TASK_ID,
    cid,
    outcomes,
)
from tests.inprocess import Edge, start_edge

FLAT_KEYS = {"error_code", "message", "correlation_id", "request_id"}


def inference(**feedback: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "feedback": feedback or {"helpful": True}}


async def rejected(
    edge: Edge,
    path: str,
    body: Any,
    status: int,
    code: str,
    *,
    flat: bool = False,
    tag: str = "x",
    **kw: Any,
) -> dict[str, Any]:
    """POST, expect an error answer of ``status``/``code`` in the right shape, and nothing written."""
    correlation_id = cid(tag)
    written = len(edge.writer.records)
    got, answer, headers = await edge.send(path, body, correlation_id=correlation_id, **kw)
    assert got == status, answer
    assert len(edge.writer.records) == written and edge.writer.of(correlation_id) == []
    assert headers["content-type"].startswith("application/json")
    assert headers["x-correlation-id"] == correlation_id
    assert answer["correlation_id"] == correlation_id
    assert answer["request_id"] == headers["x-request-id"]
    assert answer["request_id"].startswith("req_")
    if flat:
        assert set(answer) == FLAT_KEYS, answer
        assert answer["error_code"] == code
        assert answer["message"]
    else:
        assert set(answer) == {"error", "correlation_id", "request_id"}, answer
        assert set(answer["error"]) == {"code", "message", "details"}
        assert answer["error"]["code"] == code
        assert answer["error"]["message"]
    return answer  # type: ignore[no-any-return]


def events_of(edge: Edge, correlation_id: str, count: int) -> list[OutRecord]:
    recs = edge.writer.of(correlation_id)
    assert len(recs) == count, [r.value for r in recs]
    assert {r.topic for r in recs} == {edge.ingest.topics.raw}
    return recs


# --- 401 -------------------------------------------------------------------------------------------

BODIES = [
    ("/v1/feedback", outcomes("dating"), False),
    ("/v1/feedback", CORRECTION, True),
    ("/v1/feedback", [inference()], False),
    ("/v1/feedback", SEARCH, False),
    ("/api/v1/feedback", SCORED, False),
]
BODY_IDS = ["000", "001", "002", "004", "003"]


@pytest.mark.parametrize(("path", "body", "flat"), BODIES, ids=BODY_IDS)
@pytest.mark.parametrize(
    ("key", "header", "message"),
    [
        (None, "bearer", "Missing API key"),
        ("", "x-api-key", "Missing API key"),
        ("fs_unknown_key_999", "bearer", "Invalid API key."),
        ("fs_unknown_key_999", "x-api-key", "Invalid API key."),
        (DEV_KEY + "x", "bearer", "Invalid API key."),
    ],
    ids=["none", "empty-x-api-key", "unknown-bearer", "unknown-x-api-key", "near-miss"],
)
async def test_missing_or_unknown_key_is_401(
    edge: Edge, path: str, body: Any, flat: bool, key: str | None, header: str, message: str
) -> None:
    headers = {"X-API-Key": ""} if key == "" else None
    answer = await rejected(
        edge,
        path,
        body,
        401,
        "UNAUTHENTICATED",
        flat=flat,
        tag="401",
        key=key or None,
        header=header,
        headers=headers,
    )
    assert (answer["message"] if flat else answer["error"]["message"]).startswith(message)


async def test_bearer_scheme_is_case_insensitive_and_x_api_key_works_on_every_route(edge: Edge) -> None:
    status, body, _ = await edge.send(
        "/v1/feedback", SEARCH, key=None, headers={"Authorization": f"bearer {DEV_KEY}"}
    )
    assert (status, body["accepted"]) == (200, True)
    status, body, _ = await edge.send("/v1/feedback", [inference()], key=KAIZEN_KEY, header="x-api-key")
    assert status == 200 and body[0]["error"] is None


# --- 403 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "flat", "message"),
    [
        (outcomes("dating"), False, "Tenant 'other' may not write to domain 'dating'."),
        (CORRECTION, True, "Tenant 'other' has no default domain for correction feedback (tenants file)."),
        ([inference()], False, "Tenant 'other' has no default domain for inference_feedback feedback"),
        (SEARCH, False, "Tenant 'other' has no default domain for search_event feedback"),
    ],
    ids=["000-dating", "001", "002", "004"],
)
async def test_other_tenant_is_403_on_domains_it_does_not_own(
    edge: Edge, body: Any, flat: bool, message: str
) -> None:
    answer = await rejected(
        edge, "/v1/feedback", body, 403, "SCOPE_INSUFFICIENT", flat=flat, tag="403", key=OTHER_KEY
    )
    assert (answer["message"] if flat else answer["error"]["message"]).startswith(message)


async def test_other_tenant_does_not_see_devs_task(edge: Edge) -> None:
    answer = await rejected(edge, "/api/v1/feedback", SCORED, 404, "TASK_NOT_FOUND", key=OTHER_KEY)
    assert answer["error"]["message"] == f"Task '{TASK_ID}' does not exist."


# --- seed 001's own error envelope -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (
            {k: v for k, v in CORRECTION.items() if k != "case_id"},
            "MISSING_REQUIRED_FIELD",
            "Field 'case_id' is required.",
        ),
        (
            {"case_id": "c"},
            "MISSING_REQUIRED_FIELD",
            "Field 'module' is required. Field 'original_output' is required. "
            "Field 'corrected_output' is required. Field 'actor' is required.",
        ),
        ({**CORRECTION, "module": ""}, "INVALID_FIELD", "Field 'module': must not be empty."),
        ({**CORRECTION, "case_id": 7}, "INVALID_FIELD", "Field 'case_id': must be a string."),
        ({**CORRECTION, "actor": ["rep-7"]}, "INVALID_FIELD", "Field 'actor': must be an object."),
        ({**CORRECTION, "extra": 1}, "INVALID_FIELD", "Field 'extra' is not allowed."),
        (
            {**{k: v for k, v in CORRECTION.items() if k != "actor"}, "module": None},
            "MISSING_REQUIRED_FIELD",
            "Field 'module': must be a string. Field 'actor' is required.",
        ),
    ],
    ids=["no-case_id", "only-case_id", "empty-module", "int-case_id", "list-actor", "extra", "mixed"],
)
async def test_seed_001_validation_errors_use_its_envelope(
    edge: Edge, body: dict[str, Any], code: str, message: str
) -> None:
    answer = await rejected(edge, "/v1/feedback", body, 400, code, flat=True, tag="001")
    assert answer["message"] == message


async def test_seed_001_error_echoes_the_seed_correlation_id(edge: Edge) -> None:
    body = {k: v for k, v in CORRECTION.items() if k != "case_id"}
    status, answer, headers = await edge.send("/v1/feedback", body, correlation_id="8f3c-b21")
    assert status == 400
    assert answer == {
        "error_code": "MISSING_REQUIRED_FIELD",
        "message": "Field 'case_id' is required.",
        "correlation_id": "8f3c-b21",
        "request_id": headers["x-request-id"],
    }


# --- seed 002: per-item errors ---------------------------------------------------------------------


async def test_seed_002_bad_items_fail_alone_and_only_valid_items_are_written(edge: Edge) -> None:
    good_first, good_last = inference(helpful=True), inference(quality={"accuracy": 0.9}, note="x")
    batch: list[Any] = [
        good_first,
        inference(tags=["a", "b"]),  # array value
        inference(rating=None),  # null value
        {"id": "not-a-uuid", "feedback": {"helpful": True}},
        {"id": 12345, "feedback": {"helpful": True}},
        {"feedback": {"helpful": True}},  # no id
        {"id": str(uuid.uuid4())},  # no feedback
        {"id": str(uuid.uuid4()), "feedback": {"a": 1}, "optimize": "sideways"},
        {"id": str(uuid.uuid4()), "feedback": {"a": {"score": [1], "reason": "r"}}},
        42,
        good_last,
    ]
    correlation_id = cid("002-mixed")
    status, answer, _ = await edge.send("/v1/feedback", batch, correlation_id=correlation_id)

    assert status == 200, answer
    assert len(answer) == len(batch)
    assert answer[0] == {"feedback_ids": {"helpful": answer[0]["feedback_ids"]["helpful"]}, "error": None}
    assert list(answer[-1]["feedback_ids"]) == ["quality.accuracy", "note"]
    messages = [a["error"]["message"] for a in answer[1:-1]]
    assert all(a["feedback_ids"] is None and a["error"]["status_code"] == 400 for a in answer[1:-1])
    assert "unsupported value type array at 'tags'" in messages[0]
    assert "unsupported value type null at 'rating'" in messages[1]
    assert "Field 'id': must be a UUID" in messages[2]
    assert messages[3] == "Field 'id': must be a string."
    assert messages[4] == "Field 'id' is required."
    assert messages[5] == "Field 'feedback' is required."
    assert "Field 'optimize'" in messages[6]
    assert "structured score at 'a.score'" in messages[7]
    assert messages[8] == "Each feedback event must be a JSON object."

    recs = events_of(edge, correlation_id, 2)
    assert {orjson.loads(r.value)["payload"]["id"] for r in recs} == {good_first["id"], good_last["id"]}
    # the request's items are one record: the array of their envelopes, keyed like the first
    (written,) = edge.writer.written(correlation_id)
    assert orjson.loads(written.value) == [orjson.loads(r.value) for r in recs]
    assert written.key == good_first["id"].encode() and dict(written.headers)["events"] == b"2"
    assert all(orjson.loads(r.value)["request_events"] == 2 for r in recs)


async def test_seed_002_all_invalid_answers_200_per_item_and_writes_nothing(edge: Edge) -> None:
    correlation_id = cid("002-none")
    batch = [inference(x=[1]), {"id": "nope", "feedback": {}}, None]
    status, answer, _ = await edge.send("/v1/feedback", batch, correlation_id=correlation_id)
    assert status == 200
    assert edge.writer.records == []
    assert [a["feedback_ids"] for a in answer] == [None, None, None]
    assert [a["error"]["status_code"] for a in answer] == [400, 400, 400]


async def test_seed_002_empty_feedback_is_valid_with_no_ids(edge: Edge) -> None:
    correlation_id = cid("002-empty")
    body = [{"id": str(uuid.uuid4()), "feedback": {}}]
    status, answer, _ = await edge.send("/v1/feedback", body, correlation_id=correlation_id)
    assert (status, answer) == (200, [{"feedback_ids": {}, "error": None}])
    events_of(edge, correlation_id, 1)


# --- seed 003 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        ({**SCORED, "score": 1.5}, 422, "INVALID_SCORE", "Field 'score': must be <= 1."),
        ({**SCORED, "score": -0.01}, 422, "INVALID_SCORE", "Field 'score': must be >= 0."),
        ({**SCORED, "score": "0.5"}, 422, "INVALID_REQUEST", "Field 'score': must be a number."),
        ({**SCORED, "task_id": "nope"}, 422, "INVALID_REQUEST", "Field 'task_id': must be a UUID"),
        ({**SCORED, "source": "human"}, 422, "INVALID_REQUEST", "Field 'source': must be one of"),
        ({"output": "x"}, 422, "INVALID_REQUEST", "Field 'task_id' is required."),
        (
            {**SCORED, "task_id": "550e8400-e29b-41d4-a716-446655440001"},
            404,
            "TASK_NOT_FOUND",
            "Task '550e8400-e29b-41d4-a716-446655440001' does not exist.",
        ),
        ([SCORED], 422, "INVALID_REQUEST", "Body: "),
    ],
    ids=[
        "score-high",
        "score-low",
        "score-string",
        "bad-task-id",
        "bad-source",
        "no-task",
        "unknown-task",
        "array",
    ],
)
async def test_seed_003_errors(edge: Edge, body: Any, status: int, code: str, message: str) -> None:
    answer = await rejected(
        edge, "/api/v1/feedback", body, status, code, tag="003", key=KAIZEN_KEY, header="x-api-key"
    )
    assert answer["error"]["message"].startswith(message)


# --- seed 000: labels and weights ------------------------------------------------------------------


async def test_unknown_outcome_label_rejects_that_item_only(edge: Edge) -> None:
    """The stream's count for it (triplets_generated) is the broker test's of the same name."""
    body = outcomes("search", "accepted", "maybe", "super_like")
    correlation_id = cid("000-label")
    status, answer, _ = await edge.send("/v1/feedback", body, correlation_id=correlation_id)

    assert status == 202, answer  # no stream behind the in-memory writer
    assert answer["accepted"] == 2
    (rejection,) = answer["rejected"]
    assert rejection["index"] == 1
    assert rejection["message"].startswith("items.1.outcome: unknown label 'maybe'; known labels: ")
    assert "super_like" in rejection["message"]
    (rec,) = events_of(edge, correlation_id, 1)
    items = orjson.loads(rec.value)["payload"]["items"]
    assert [(i["index"], i["outcome"], i["grade"]) for i in items] == [
        (0, "accepted", 2.0),
        (2, "super_like", 2.5),
    ]


async def test_all_labels_unknown_is_400_with_each_item(edge: Edge) -> None:
    answer = await rejected(
        edge, "/v1/feedback", outcomes("search", "maybe", "ghosted"), 400, "NO_VALID_ITEMS", tag="000-none"
    )
    assert [r["index"] for r in answer["error"]["details"]["rejected"]] == [0, 1]  # ghosted: another tenant's


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        (-1, "Field 'items.0.weight': must be >= 0."),
        (-0.0001, "Field 'items.0.weight': must be >= 0."),
        ("NaN", "Field 'items.0.weight': must be a number."),
        ("Infinity", "Field 'items.0.weight': must be a number."),
        ("1.0", "Field 'items.0.weight': must be a number."),
        (None, "Field 'items.0.weight': must be a number."),
    ],
)
async def test_weight_negative_or_not_a_finite_number_is_400(edge: Edge, weight: Any, message: str) -> None:
    answer = await rejected(edge, "/v1/feedback", outcomes("search", weight=weight), 400, "INVALID_REQUEST")
    assert answer["error"]["message"] == message


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
async def test_non_finite_json_numbers_are_invalid_json(edge: Edge, literal: bytes) -> None:
    raw = orjson.dumps(outcomes("search", weight=123456.0)).replace(b"123456.0", literal)
    assert literal in raw
    await rejected(edge, "/v1/feedback", None, 400, "INVALID_JSON", raw=raw)


# --- bodies that fit no contract, broken JSON ------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [{}, {"foo": 1}, "text", 12, None, True, {"seeker_id": "a"}],
    ids=["empty", "unknown-field", "string", "number", "null", "bool", "item-not-request"],
)
async def test_body_fitting_no_contract_is_400_listing_contracts_tried(edge: Edge, body: Any) -> None:
    answer = await rejected(edge, "/v1/feedback", body, 400, "NO_MATCHING_CONTRACT")
    tried = answer["error"]["details"]["tried"]
    assert set(tried) == {"ranking_outcome", "correction", "search_event"}
    assert all(isinstance(why, str) and why for why in tried.values())
    for contract in tried:
        assert f"[{contract}]" in answer["error"]["message"]


async def test_scored_output_sent_to_v1_feedback_points_to_its_path(edge: Edge) -> None:
    answer = await rejected(edge, "/v1/feedback", SCORED, 400, "NO_MATCHING_CONTRACT")
    assert answer["error"]["message"].endswith("Scored outputs (task_id) go to POST /api/v1/feedback.")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"items": "x"}, "Field 'domain' is required. Field 'items': must be an array."),
        ({"domain": "search", "items": []}, "Field 'items': must have at least 1 item(s)."),
        ({**SEARCH, "doc_id": "not-a-uuid"}, "Field 'doc_id': must be a UUID such as"),
        ({**SEARCH, "rank": 0}, "Field 'rank': must be >= 1."),
        ({"event_type": "clicked"}, "Field 'event_type': must be one of"),
    ],
    ids=["000-items-not-array", "000-no-items", "004-bad-uuid", "004-rank-0", "004-unknown-type"],
)
async def test_invalid_body_of_a_recognised_contract_is_400_with_details(
    edge: Edge, body: dict[str, Any], message: str
) -> None:
    answer = await rejected(edge, "/v1/feedback", body, 400, "INVALID_REQUEST")
    assert answer["error"]["message"].startswith(message)
    assert isinstance(answer["error"]["details"], list) and answer["error"]["details"]
    assert all({"type", "loc", "msg"} <= set(d) for d in answer["error"]["details"])


async def test_body_mixing_contracts_is_400_ambiguous(edge: Edge) -> None:
    answer = await rejected(edge, "/v1/feedback", {**CORRECTION, **SEARCH}, 400, "AMBIGUOUS_CONTRACT")
    assert answer["error"]["message"].startswith("Body mixes fields of several feedback contracts (")


@pytest.mark.parametrize("path", ["/v1/feedback", "/api/v1/feedback"])
@pytest.mark.parametrize(
    "raw", [b'{"domain": ', b"", b"{'a': 1}", b"\xff\xfe", b"[1,]", b'{"a":1}{"b":2}'], ids=lambda r: repr(r)
)
async def test_invalid_json_is_400(edge: Edge, path: str, raw: bytes) -> None:
    answer = await rejected(edge, path, None, 400, "INVALID_JSON", raw=raw)
    assert answer["error"]["message"].startswith("Body is not valid JSON: ")


async def test_unknown_route_answers_json(edge: Edge) -> None:
    await rejected(edge, "/v2/feedback", SEARCH, 404, "NOT_FOUND")


# --- idempotent retries ----------------------------------------------------------------------------

IDEMPOTENT = [
    ("/v1/feedback", outcomes("search", "accepted", "rejected"), outcomes("search", "expired"), False),
    ("/v1/feedback", CORRECTION, {**CORRECTION, "case_id": "case-2"}, True),
    ("/v1/feedback", [inference()], [inference()], False),
    ("/v1/feedback", SEARCH, {**SEARCH, "query": "other"}, False),
    ("/api/v1/feedback", SCORED, {**SCORED, "score": 0.6}, False),
]


@pytest.mark.parametrize(("path", "body", "other", "flat"), IDEMPOTENT, ids=BODY_IDS)
async def test_idempotency_key_replays_the_answer_and_writes_once(
    edge: Edge, path: str, body: Any, other: Any, flat: bool
) -> None:
    correlation_id = cid("idem")
    key = {"Idempotency-Key": f"idem-{uuid.uuid4()}"}
    first = await edge.send(path, body, correlation_id=correlation_id, headers=key)
    second = await edge.send(path, body, correlation_id=correlation_id, headers=key)
    conflict = await edge.send(path, other, correlation_id=correlation_id, headers=key)

    assert first[0] in (200, 201, 202), first[1]  # seed 000: 202 without a stream behind
    assert (second[0], second[1]) == (first[0], first[1])
    assert "idempotent-replayed" not in first[2]
    assert second[2]["idempotent-replayed"] == "true"
    assert conflict[0] == 422
    if flat:
        assert conflict[1]["error_code"] == "IDEMPOTENCY_CONFLICT"
    else:
        assert conflict[1]["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    events_of(edge, correlation_id, 1)


async def test_idempotency_keys_are_per_tenant_and_route(edge: Edge) -> None:
    key = {"Idempotency-Key": f"idem-{uuid.uuid4()}"}
    status, _, _ = await edge.send("/v1/feedback", SEARCH, headers=key)
    assert status == 200
    status, answer, _ = await edge.send("/api/v1/feedback", SCORED, headers=key)
    assert status == 201, answer  # another route: another key space


async def raw_request(edge: Edge, head: bytes, body: bytes) -> tuple[int, dict[str, Any]]:
    """Bytes no HTTP client library would send (headers that are not UTF-8)."""
    server = edge.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await writer.drain()
    response = await reader.read()
    writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), orjson.loads(payload)


async def test_headers_that_are_not_utf8_never_cause_a_500(edge: Edge) -> None:
    body = orjson.dumps(SEARCH)
    status, answer = await raw_request(
        edge,
        b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + DEV_KEY.encode() + b"\r\n"
        b"X-Correlation-Id: caf\xc3\xa9-\xff\r\nX-Session-ID: s-\xfe\r\n",
        body,
    )
    assert status == 200, answer
    assert answer["session_id"] == "s-?"
    status, answer = await raw_request(
        edge, b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nX-API-Key: fs_dev_key_12\xff\r\n", body
    )
    assert (status, answer["error"]["code"]) == (401, "UNAUTHENTICATED")


# --- limits: 413 for big bodies and too many items, 429 past a tenant's rate ---------------------------
# (were tests/integration/test_ingest_limits.py on dedicated subprocess ingests)

MAX_BODY = 2048
MAX_ITEMS = 3
RATE_KEY = "fs_rate_key_2rps"
RATE_KEY_B = "fs_rate_key_2rps_b"  # same tenant, its own bucket


@pytest.fixture
async def small() -> AsyncIterator[Edge]:
    e, client = await start_edge(max_body_bytes=MAX_BODY, max_items_per_request=MAX_ITEMS)
    try:
        yield e
    finally:
        await client.close()


@pytest.fixture
async def rate_limited(tmp_path: Path) -> AsyncIterator[Edge]:
    """An ingest whose tenants file has the dev tenant under a key limited to 2 requests/s."""
    tenants = {
        "tenants": [
            {
                "id": "dev",
                "api_keys": [hash_api_key(RATE_KEY), hash_api_key(RATE_KEY_B)],
                "tier": "metered",
                "rate_limit_rps": 2,
                "feedback_mode": "tenant_tuning",
                "default_domains": {
                    "correction": "support",
                    "inference_feedback": "llm",
                    "search_event": "search",
                },
                "domains": {d: {"threshold": 1000} for d in ("dating", "support", "llm", "search")},
            }
        ]
    }
    path = tmp_path / "tenants.rate.yaml"
    path.write_text(yaml.safe_dump(tenants))
    e, client = await start_edge(tenants=path)
    try:
        yield e
    finally:
        await client.close()


def padded_events(size: int) -> bytes:
    """A valid seed 002 body of exactly ``size`` bytes."""
    event: dict[str, Any] = {"id": str(uuid.uuid4()), "feedback": {"note": ""}}
    base = len(orjson.dumps([event]))
    event["feedback"]["note"] = "n" * (size - base)
    raw = orjson.dumps([event])
    assert len(raw) == size
    return raw


async def test_body_at_the_limit_is_accepted_one_byte_more_is_413(small: Edge) -> None:
    ok, too_big = cid("lim-ok"), cid("lim-big")
    status, answer, _ = await small.send("/v1/feedback", raw=padded_events(MAX_BODY), correlation_id=ok)
    assert status == 200 and answer[0]["error"] is None, answer
    status, answer, headers = await small.send(
        "/v1/feedback", raw=padded_events(MAX_BODY + 1), correlation_id=too_big
    )
    assert status == 413
    assert answer == {
        "error": {"code": "PAYLOAD_TOO_LARGE", "message": f"Body exceeds {MAX_BODY} bytes.", "details": None},
        "correlation_id": too_big,
        "request_id": headers["x-request-id"],
    }
    assert len(small.writer.of(ok)) == 1 and small.writer.of(too_big) == []


@pytest.mark.parametrize("path", ["/v1/feedback", "/api/v1/feedback"])
async def test_big_chunked_body_without_length_is_413(small: Edge, path: str) -> None:
    """No Content-Length to trust: the ingest stops reading past the limit."""
    raw = padded_events(MAX_BODY * 4)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 1000):
            yield raw[i : i + 1000]

    correlation_id = cid("lim-chunked")
    headers = {"Authorization": f"Bearer {DEV_KEY}", "X-Correlation-Id": correlation_id}
    async with small.client.post(path, data=chunks(), headers=headers) as resp:
        assert resp.status == 413
        assert "Content-Length" not in resp.request_info.headers
        answer = orjson.loads(await resp.read())
    assert answer["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert answer["correlation_id"] == correlation_id
    assert small.writer.records == []


def _items(n: int) -> dict[str, Any]:
    seeker = f"lim-{uuid.uuid4().hex[:6]}"
    return {
        "domain": "search",
        "items": [{"seeker_id": seeker, "candidate_id": f"c{i}", "outcome": "accepted"} for i in range(n)],
    }


def _events(n: int) -> list[dict[str, Any]]:
    return [{"id": str(uuid.uuid4()), "feedback": {"ok": True}} for _ in range(n)]


@pytest.mark.parametrize("make", [_items, _events], ids=["000", "002"])
async def test_too_many_items_is_413_and_the_limit_itself_is_fine(
    small: Edge, make: Callable[[int], Any]
) -> None:
    ok, too_many = cid("lim-items-ok"), cid("lim-items")
    status, answer, _ = await small.send("/v1/feedback", make(MAX_ITEMS), correlation_id=ok)
    assert status in (200, 202), answer  # seed 000: 202 without a stream behind
    status, answer, _ = await small.send("/v1/feedback", make(MAX_ITEMS + 1), correlation_id=too_many)
    assert status == 413
    assert answer["error"]["code"] == "TOO_MANY_ITEMS"
    assert answer["error"]["message"] == f"{MAX_ITEMS + 1} items exceed the limit of {MAX_ITEMS} per request."
    expected = 1 if make is _items else MAX_ITEMS  # seed 000: one event per seeker
    assert len(small.writer.of(ok)) == expected and small.writer.of(too_many) == []


HELPFUL = {"event_type": "result_helpful"}


async def test_past_the_rate_429_with_retry_after_and_seed_004_rate_state(rate_limited: Edge) -> None:
    cids = [cid(f"rate-{i}") for i in range(8)]
    answers = await asyncio.gather(
        *(
            rate_limited.send(
                "/v1/feedback", {"event_type": "result_helpful"}, key=RATE_KEY, correlation_id=c
            )
            for c in cids
        )
    )

    ok = [(c, a) for c, a in zip(cids, answers, strict=True) if a[0] == 200]
    limited = [(c, a) for c, a in zip(cids, answers, strict=True) if a[0] == 429]
    assert len(ok) + len(limited) == len(cids), [a[0] for a in answers]
    assert len(ok) >= 2  # the burst is the rate
    assert limited
    for _, (_, body, headers) in ok:
        rate = body["access"]["rate_limit"]
        assert rate["limit_rps"] == 2
        assert rate["remaining"] in (0, 1)
        assert body["access"]["tier"] == "metered"
        assert headers["x-ratelimit-limit"] == "2"
    for c, (_, body, headers) in limited:
        assert body["error"]["code"] == "RATE_LIMITED"
        assert body["error"]["message"] == "Rate limit of 2 requests/s exceeded."
        assert body["correlation_id"] == c
        assert int(headers["retry-after"]) >= 1
        assert headers["x-ratelimit-limit"] == "2"
        assert headers["x-ratelimit-remaining"] == "0"
    assert sorted(c for c in cids if rate_limited.writer.of(c)) == sorted(c for c, _ in ok)


async def test_rate_limited_correction_answers_in_seed_001_shape(rate_limited: Edge) -> None:
    correction = {"case_id": "c", "module": "m", "original_output": {}, "corrected_output": {}, "actor": {}}
    answers = await asyncio.gather(
        *(
            rate_limited.send("/v1/feedback", correction, key=RATE_KEY, correlation_id="rate-001")
            for _ in range(6)
        )
    )
    limited = [a for a in answers if a[0] == 429]
    assert limited, [a[0] for a in answers]
    for _, body, headers in limited:
        assert body == {
            "error_code": "RATE_LIMITED",
            "message": "Rate limit of 2 requests/s exceeded.",
            "correlation_id": "rate-001",
            "request_id": headers["x-request-id"],
        }
        assert int(headers["retry-after"]) >= 1


async def test_the_rate_is_per_key(rate_limited: Edge) -> None:
    search = {"event_type": "stale_result"}
    answers = await asyncio.gather(
        *(rate_limited.send("/v1/feedback", search, key=RATE_KEY) for _ in range(6))
    )
    assert 429 in [a[0] for a in answers]
    status, body, _ = await rate_limited.send("/v1/feedback", search, key=RATE_KEY_B)
    assert status == 200, body
    assert body["access"]["rate_limit"]["remaining"] == 1  # a full bucket of 2, minus this request
    status, body, _ = await rate_limited.send("/v1/feedback", search)  # the dev key is not in this file
    assert status == 401


async def test_large_body_under_the_default_limit_is_read_whole(edge: Edge) -> None:
    """~600 KB arrives in many TCP reads; the ingest must read all of it (it once parsed the first one)."""
    events = [{"id": str(uuid.uuid4()), "feedback": {"note": "n" * 2000}} for _ in range(300)]
    raw = orjson.dumps(events)
    assert 500_000 < len(raw) < 1_048_576
    status, answer, _ = await edge.send("/v1/feedback", raw=raw)
    assert status == 200, answer
    assert [list(a["feedback_ids"]) for a in answer] == [["note"]] * 300


# --- what operators see: GET /metrics reflects the traffic ----------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(edge: Edge) -> Samples:
    async with edge.client.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def delta(before: Samples, after: Samples) -> Callable[..., float]:
    def of(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    return of


def batch(valid: int, invalid: int) -> list[dict[str, Any]]:
    good = [{"id": str(uuid.uuid4()), "feedback": {"ok": True}} for _ in range(valid)]
    bad = [{"id": "nope", "feedback": {"ok": [1]}} for _ in range(invalid)]
    return [*good, *bad]


async def test_metrics_count_requests_latency_and_items_by_contract_and_reason(edge: Edge) -> None:
    """GET /metrics reflects the traffic (the process's registry: deltas, as on a long-lived ingest)."""
    before = await scrape(edge)
    scored = {"task_id": "550e8400-e29b-41d4-a716-446655440000", "score": 0.4}
    seeker = f"m-{uuid.uuid4().hex[:6]}"
    outcomes = {
        "domain": "search",
        "items": [
            {"seeker_id": seeker, "candidate_id": "a", "outcome": "accepted"},
            {"seeker_id": seeker, "candidate_id": "b", "outcome": "no_such_label"},
        ],
    }
    answers = [
        await edge.send("/v1/feedback", batch(2, 1)),
        await edge.send("/v1/feedback", batch(2, 1)),
        await edge.send("/v1/feedback", outcomes),
        await edge.send("/v1/feedback", {}),
        await edge.send("/v1/feedback", {"event_type": "result_helpful"}, key="fs_not_a_key"),
        await edge.send("/api/v1/feedback", scored),
        await edge.send("/api/v1/feedback", {**scored, "score": 1.5}),
    ]
    assert [a[0] for a in answers] == [200, 200, 202, 400, 401, 201, 422]  # 202: no stream behind
    d = delta(before, await scrape(edge))

    requests = "feedstream_http_requests_total"
    assert d(requests, route="/v1/feedback", method="POST", status="200") == 2
    assert d(requests, route="/v1/feedback", method="POST", status="202") == 1
    assert d(requests, route="/v1/feedback", method="POST", status="400") == 1
    assert d(requests, route="/v1/feedback", method="POST", status="401") == 1
    assert d(requests, route="/api/v1/feedback", method="POST", status="201") == 1
    assert d(requests, route="/api/v1/feedback", method="POST", status="422") == 1

    latency = "feedstream_http_request_duration_seconds"
    assert d(f"{latency}_count", route="/v1/feedback") == 5
    assert d(f"{latency}_bucket", route="/v1/feedback", le="+Inf") == 5
    assert d(f"{latency}_count", route="/api/v1/feedback") == 2
    assert d(f"{latency}_sum", route="/v1/feedback") > 0
    after = await scrape(edge)
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in after.items()
        if name == f"{latency}_bucket" and dict(labels)["route"] == "/v1/feedback"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative

    accepted, rejected = "feedstream_items_accepted_total", "feedstream_items_rejected_total"
    assert d(accepted, contract="inference_feedback") == 4
    assert d(accepted, contract="ranking_outcome") == 1
    assert d(accepted, contract="scored_output") == 1
    assert d(rejected, contract="inference_feedback", reason="invalid") == 2
    assert d(rejected, contract="ranking_outcome", reason="unknown_label") == 1
    assert d(rejected, contract="unknown", reason="no_contract") == 1
    assert d(rejected, contract="scored_output", reason="invalid") == 1
    assert d("feedstream_raw_events_published_total", origin="http") == 4 + 1 + 1
