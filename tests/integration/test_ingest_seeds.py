"""Every request example of the five seeds, sent over HTTP as written, read back from ``feedback.raw``.

Each answer has its contract's documented status and shape with true values; each raw event has the
canonical envelope and carries the caller's X-Correlation-Id as a Kafka header. GET /openapi.json
serves the seed examples.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import ConsumerRecord

from pipeline import contracts
from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import TopicNames
from pipeline.procs import Service
from pipeline.rules.flatten import feedback_id
from tests.http_helpers import (
    DEV_KEY,
    KAIZEN_KEY,
    SEED_000,
    base_url,
    domain_state,
    post,
    settled_domain_state,
)
from tests.kafka_helpers import raw_of_request

pytestmark = pytest.mark.usefixtures("worker")

TASK_ID = "550e8400-e29b-41d4-a716-446655440000"

# --- the seeds' request examples, as written --------------------------------------------------------

SEED_001 = {
    "case_id": "string",
    "module": "intent_classifier",
    "original_output": {},
    "corrected_output": {},
    "actor": {},
}
SEED_001_CORRELATION_ID = "8f3c-b21"
SEED_002_SINGLE = [
    {
        "id": "019503a1-b2c3-7d4e-8f01-234567890abc",
        "feedback": {"helpful": True, "rating": 4.5},
        "optimize": "max",
    }
]
SEED_002_MULTI = [
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
# (example, the flattened keys the seed documents for each event, in order)
SEED_002_EXAMPLES: list[tuple[list[dict[str, Any]], list[list[str]]]] = [
    (SEED_002_SINGLE, [["helpful", "rating"]]),
    (SEED_002_MULTI, [["helpful"], ["quality"]]),
    (SEED_002_MIXED, [["thumbs_up", "relevance", "comment", "accuracy"]]),
    (SEED_002_NESTED, [["evaluation.quality.precision", "evaluation.quality.recall", "helpful"]]),
]
SEED_003 = {
    "task_id": TASK_ID,
    "inputs": {"ticket_text": "Login fails on Safari", "priority": "high"},
    "output": "Authentication issue on Safari browser. Check OAuth token handling.",
    "score": 0.9,
    "source": "sdk",
    "metadata": {"model": "gpt-4o", "latency_ms": 450},
}
SEED_004_CURL: dict[str, Any] = {}  # seed 004's curl sends an empty object; event_type is required
SEED_004_EVENT = {
    "event_type": "passage_used",
    "search_id": "3f2b8c1e-6a4d-4e8f-9b2a-1c5d7e9f0a12",
    "doc_id": "8d6e2f4a-1b3c-4d5e-8f90-a1b2c3d4e5f6",
    "passage_id": "c4d5e6f7-a8b9-4c0d-8e1f-203142536475",
    "rank": 2,
    "query": "refund policy for annual plans",
    "agent_context": {"agent": "support-bot", "step": 3},
}

ENVELOPE_KEYS = {
    "schema_version",
    "event_id",
    "tenant",
    "domain",
    "contract",
    "received_at",
    "correlation_id",
    "request_id",
    "origin",
    "request_events",  # raw events of the request (None until the intake sets it)
    "payload",
}


async def get_json(svc: Service, path: str, key: str | None = DEV_KEY) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as s, s.get(base_url(svc) + path, headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, value
    return parsed


def check_envelope(
    rec: ConsumerRecord[bytes, bytes],
    *,
    contract: str,
    domain: str,
    correlation_id: str,
    request_id: str,
    tenant: str = "dev",
) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads(rec.value)
    assert set(event) == ENVELOPE_KEYS
    assert uuid.UUID(event["event_id"]).version == 7
    assert event["schema_version"] == 1
    assert event["tenant"] == tenant
    assert event["domain"] == domain
    assert event["contract"] == contract
    assert event["origin"] == "http"
    assert event["correlation_id"] == correlation_id
    assert event["request_id"] == request_id
    parse_time(event["received_at"])
    headers = dict(rec.headers)
    assert headers["correlation_id"] == correlation_id.encode()
    assert headers["request_id"] == request_id.encode()
    assert headers["event_id"] == event["event_id"].encode()
    assert headers["contract"] == contract.encode()
    assert headers["tenant"] == tenant.encode()
    return event


async def test_seed_000_answers_true_counts_and_writes_one_event_per_seeker(
    ingest: Service, broker: Broker, names: TopicNames
) -> None:
    before = await settled_domain_state(ingest, "dating")
    cid = f"seed000-{uuid.uuid4().hex[:8]}"

    status, body, headers = await post(ingest, "/v1/feedback", SEED_000, correlation_id=cid)

    assert status == 200, body
    assert headers["x-correlation-id"] == cid
    # fresh seeker: bob>carl, dan>carl, dan>bob are the three triplets
    assert body == {
        "accepted": 3,
        "triplets_generated": 3,
        "triplets_pending_train": before["pending"] + 3,
        "request_id": headers["x-request-id"],
    }
    (rec,) = await raw_of_request(broker.bootstrap, names.raw, headers["x-request-id"], 1)
    event = check_envelope(
        rec, contract="ranking_outcome", domain="dating", correlation_id=cid, request_id=body["request_id"]
    )
    assert rec.key == b"dating/u_alice"
    outcome = ("index", "candidate_id", "outcome", "grade", "positive", "weight")
    assert event["payload"] == {
        "seeker_id": "u_alice",
        "items": [
            dict(zip(outcome, (0, "u_bob", "accepted", 2.0, True, 1.0), strict=True)),
            dict(zip(outcome, (1, "u_carl", "rejected", 0.0, False, 1.0), strict=True)),
            dict(zip(outcome, (2, "u_dan", "converted", 3.0, True, 2.0), strict=True)),
        ],
    }
    expected = (before["pending"] + 3, before["total"] + 3)
    after = await domain_state(ingest, "dating", until=lambda st: (st["pending"], st["total"]) == expected)
    assert (after["pending"], after["total"]) == expected


async def test_seed_001_echoes_the_correlation_id_and_answers_id_and_time(
    ingest: Service, broker: Broker, names: TopicNames
) -> None:
    status, body, headers = await post(
        ingest, "/v1/feedback", SEED_001, correlation_id=SEED_001_CORRELATION_ID
    )

    assert status == 200, body
    assert headers["x-correlation-id"] == SEED_001_CORRELATION_ID
    assert set(body) == {"feedback_id", "received_at"}
    (rec,) = await raw_of_request(broker.bootstrap, names.raw, headers["x-request-id"], 1)
    event = check_envelope(
        rec,
        contract="correction",
        domain="support",  # the dev tenant's default domain for corrections
        correlation_id=SEED_001_CORRELATION_ID,
        request_id=headers["x-request-id"],
    )
    assert body["feedback_id"] == event["event_id"]
    assert parse_time(body["received_at"]) == parse_time(event["received_at"])
    assert event["payload"] == {**SEED_001, "feedback_mode": "tenant_tuning"}
    assert rec.key == b"support/string"


@pytest.mark.parametrize(("example", "keys"), SEED_002_EXAMPLES, ids=["single", "multi", "mixed", "nested"])
async def test_seed_002_answers_feedback_ids_per_flattened_key(
    ingest: Service, broker: Broker, names: TopicNames, example: list[dict[str, Any]], keys: list[list[str]]
) -> None:
    cid = f"seed002-{uuid.uuid4().hex[:8]}"
    status, body, headers = await post(ingest, "/v1/feedback", example, correlation_id=cid)

    assert status == 200, body
    assert headers["x-correlation-id"] == cid
    assert [item["error"] for item in body] == [None] * len(example)
    assert [list(item["feedback_ids"]) for item in body] == keys
    # a request is one record: its envelope, or the array of its items' envelopes (keyed like the first)
    (rec,) = await raw_of_request(broker.bootstrap, names.raw, headers["x-request-id"], 1)
    parts = contracts.split_record(rec.value)
    assert len(parts) == len(example) and rec.key == example[0]["id"].encode()
    recs = [rec]
    if len(parts) > 1:
        assert dict(rec.headers)["events"] == str(len(parts)).encode() and "event_id" not in dict(rec.headers)
        own = [(part, orjson.loads(part)["event_id"].encode()) for part in parts]
        recs = [dataclasses.replace(rec, value=p, headers=[*rec.headers, ("event_id", e)]) for p, e in own]
    events = [
        check_envelope(
            r,
            contract="inference_feedback",
            domain="llm",
            correlation_id=cid,
            request_id=headers["x-request-id"],
        )
        for r in recs
    ]
    by_id = {e["payload"]["id"]: e for e in events}
    assert len(by_id) == len({e["id"] for e in example})
    for sent, answered in zip(example, body, strict=True):
        event = by_id[sent["id"]]
        assert event["payload"] == {"tags": None, "optimize": "max", **sent}
        for key, fid in answered["feedback_ids"].items():
            assert fid == feedback_id(event["event_id"], key)
            uuid.UUID(fid)
    assert [e["payload"]["id"] for e in events] == [e["id"] for e in example]  # in the request's order


async def test_seed_003_with_its_x_api_key_answers_201_with_the_stored_entry(
    ingest: Service, broker: Broker, names: TopicNames
) -> None:
    cid = f"seed003-{uuid.uuid4().hex[:8]}"
    status, body, headers = await post(
        ingest, "/api/v1/feedback", SEED_003, key=KAIZEN_KEY, header="x-api-key", correlation_id=cid
    )

    assert status == 201, body
    assert list(body) == ["id", *SEED_003, "created_at"]
    assert {k: body[k] for k in SEED_003} == SEED_003
    (rec,) = await raw_of_request(broker.bootstrap, names.raw, headers["x-request-id"], 1)
    event = check_envelope(
        rec, contract="scored_output", domain=TASK_ID, correlation_id=cid, request_id=headers["x-request-id"]
    )
    assert body["id"] == event["event_id"] == event["payload"]["entry_id"]
    assert parse_time(body["created_at"]) == parse_time(event["received_at"])
    assert event["payload"] == {**SEED_003, "entry_id": body["id"]}


async def test_seed_004_curl_body_as_written_is_refused_for_lack_of_event_type(ingest: Service) -> None:
    status, body, headers = await post(ingest, "/v1/feedback", SEED_004_CURL, correlation_id="seed004-curl")

    assert status == 400
    assert body["error"]["code"] == "NO_MATCHING_CONTRACT"
    assert body["error"]["details"]["tried"]["search_event"] == "Field 'event_type' is required."
    assert set(body["error"]["details"]["tried"]) == {"ranking_outcome", "correction", "search_event"}
    assert body["correlation_id"] == "seed004-curl"
    assert body["request_id"] == headers["x-request-id"]


async def test_seed_004_event_answers_access_and_session(
    ingest: Service, broker: Broker, names: TopicNames
) -> None:
    cid = f"seed004-{uuid.uuid4().hex[:8]}"
    session = str(uuid.uuid4())
    status, body, headers = await post(
        ingest, "/v1/feedback", SEED_004_EVENT, correlation_id=cid, headers={"X-Session-ID": session}
    )

    assert status == 200, body
    assert set(body) == {"accepted", "access", "feedback_id", "request_id", "session_id", "usage"}
    assert body["accepted"] is True
    assert body["access"]["tier"] == "dev"
    limit = body["access"]["rate_limit"]
    assert set(limit) == {"limit_rps", "remaining", "reset_at"}
    assert limit["limit_rps"] == 200
    assert 0 <= limit["remaining"] < 200
    assert headers["x-ratelimit-limit"] == "200"
    assert headers["x-ratelimit-remaining"] == str(limit["remaining"])
    assert body["request_id"] == headers["x-request-id"]
    assert body["session_id"] == session
    (rec,) = await raw_of_request(broker.bootstrap, names.raw, body["request_id"], 1)
    event = check_envelope(
        rec, contract="search_event", domain="search", correlation_id=cid, request_id=body["request_id"]
    )
    assert body["feedback_id"] == event["event_id"]
    assert parse_time(limit["reset_at"]) >= parse_time(event["received_at"])  # when the bucket is full again
    assert event["payload"] == {**SEED_004_EVENT, "session_id": session, "notes": None}
    assert rec.key == f"search/search:{SEED_004_EVENT['search_id']}".encode()


async def test_seed_004_session_from_the_body_wins_else_a_new_uuid(ingest: Service) -> None:
    body_session = str(uuid.uuid4())
    status, body, _ = await post(
        ingest,
        "/v1/feedback",
        {"event_type": "result_helpful", "session_id": body_session},
        headers={"X-Session-ID": "header-session"},
    )
    assert (status, body["session_id"]) == (200, body_session)
    status, body, _ = await post(ingest, "/v1/feedback", {"event_type": "stale_result"})
    assert status == 200
    assert uuid.UUID(body["session_id"]).version == 4


def _example_values(node: Any) -> list[Any]:
    """Every value under an ``examples`` map of an OpenAPI document."""
    found: list[Any] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "examples" and isinstance(value, dict):
                found.extend(v["value"] for v in value.values() if isinstance(v, dict) and "value" in v)
            found.extend(_example_values(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_example_values(value))
    return found


async def test_openapi_serves_the_document_with_the_seed_request_examples(ingest: Service) -> None:
    async with aiohttp.ClientSession() as s, s.get(base_url(ingest) + "/openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        doc = orjson.loads(await resp.read())

    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) >= {"/v1/feedback", "/api/v1/feedback"}
    feedback = _example_values(doc["paths"]["/v1/feedback"]["post"]["requestBody"])
    scored = _example_values(doc["paths"]["/api/v1/feedback"]["post"]["requestBody"])
    assert SEED_000 in feedback
    assert SEED_001 in feedback
    assert SEED_004_EVENT in feedback
    assert SEED_003 in scored
    items = [item for value in feedback if isinstance(value, list) for item in value]
    for example, _ in SEED_002_EXAMPLES:
        for event in example:
            assert event in items, event
