"""The error contract on the real broker: what needs Kafka and the stream.

Every error answer itself (401/403/404/400/413/422/429 and their shapes, per-item errors, idempotent
retries) is tested in process (tests/unit/test_http_contract.py, with an in-memory writer that
proves nothing was written). Here: rejected requests of every kind leave nothing on the real
``feedback.raw``, and an item with an unknown label is rejected alone while the stream counts the rest.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord

from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import TopicNames
from pipeline.procs import Service
from tests.http_helpers import CORRECTION, KAIZEN_KEY, OTHER_KEY, SCORED, SEARCH, cid, outcomes, post
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.usefixtures("worker")


async def events_of(
    broker: Broker, names: TopicNames, correlation_id: str, count: int
) -> list[ConsumerRecord[bytes, bytes]]:
    recs = await read_until(
        broker.bootstrap,
        names.raw,
        lambda r: dict(r.headers).get("correlation_id") == correlation_id.encode(),
        count=count,
        settle_s=1.0,
    )
    assert len(recs) == count, [r.value for r in recs]
    return recs


async def test_unknown_outcome_label_rejects_that_item_only(
    ingest: Service, broker: Broker, names: TopicNames
) -> None:
    body = outcomes("search", "accepted", "maybe", "super_like")
    correlation_id = cid("000-label")
    status, answer, _ = await post(ingest, "/v1/feedback", body, correlation_id=correlation_id)

    assert status == 200, answer
    assert answer["accepted"] == 2
    assert answer["triplets_generated"] == 1  # super_like (2.5) over accepted (2.0), a fresh seeker
    (rejection,) = answer["rejected"]
    assert rejection["index"] == 1
    assert rejection["message"].startswith("items.1.outcome: unknown label 'maybe'; known labels: ")
    assert "super_like" in rejection["message"]
    (rec,) = await events_of(broker, names, correlation_id, 1)
    items = orjson.loads(rec.value)["payload"]["items"]
    assert [(i["index"], i["outcome"], i["grade"]) for i in items] == [
        (0, "accepted", 2.0),
        (2, "super_like", 2.5),
    ]


#: (path, body or raw bytes, keyword arguments of post, status): one request of each kind of refusal
REFUSED: list[tuple[str, Any, dict[str, Any], int]] = [
    ("/v1/feedback", outcomes("dating"), {"key": None}, 401),
    ("/v1/feedback", CORRECTION, {"key": "fs_unknown_key_999", "header": "x-api-key"}, 401),
    ("/api/v1/feedback", SCORED, {"key": None}, 401),
    ("/v1/feedback", outcomes("dating"), {"key": OTHER_KEY}, 403),
    ("/v1/feedback", CORRECTION, {"key": OTHER_KEY}, 403),
    ("/v1/feedback", [{"id": str(uuid.uuid4()), "feedback": {}}], {"key": OTHER_KEY}, 403),
    ("/api/v1/feedback", SCORED, {"key": OTHER_KEY}, 404),
    ("/v1/feedback", {k: v for k, v in CORRECTION.items() if k != "case_id"}, {}, 400),
    ("/v1/feedback", outcomes("search", weight=-1), {}, 400),
    ("/v1/feedback", outcomes("search", "maybe", "ghosted"), {}, 400),
    ("/v1/feedback", {"foo": 1}, {}, 400),
    ("/v1/feedback", b'{"domain": ', {}, 400),
    ("/v1/feedback", {**CORRECTION, **SEARCH}, {}, 400),
    ("/api/v1/feedback", {**SCORED, "score": 1.5}, {"key": KAIZEN_KEY, "header": "x-api-key"}, 422),
    ("/v1/feedback", [{"id": "nope", "feedback": {"a": [1]}}], {}, 200),  # seed 002: per-item errors only
]


async def test_nothing_is_written_to_the_topic_for_any_rejected_request(
    ingest: Service, broker: Broker, names: TopicNames
) -> None:
    """One read of feedback.raw, after a sentinel written after all of them."""
    refused: set[bytes] = set()
    for path, body, kw, status in REFUSED:
        correlation_id = cid(str(status))
        raw = body if isinstance(body, bytes) else None
        got, answer, _ = await post(ingest, path, body, raw=raw, correlation_id=correlation_id, **kw)
        assert got == status, (path, body, answer)
        refused.add(correlation_id.encode())
    sentinel = cid("sentinel")
    status, _, _ = await post(ingest, "/v1/feedback", SEARCH, correlation_id=sentinel)
    assert status == 200
    seen: list[bytes] = []

    def match(r: ConsumerRecord[bytes, bytes]) -> bool:
        c = dict(r.headers).get("correlation_id", b"")
        if c in refused:
            seen.append(c)
        return bool(c == sentinel.encode())

    await read_until(broker.bootstrap, names.raw, match, count=1, settle_s=1.5)
    assert seen == []
