"""What operators see: GET /metrics reflects the traffic; API keys appear in no log and on no topic."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiokafka import ConsumerRecord
from prometheus_client.parser import text_string_to_metric_families

from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import TopicNames
from pipeline.procs import Service
from tests.conftest import LOG_DIR
from tests.http_helpers import DEV_KEY, KAIZEN_KEY, OTHER_KEY, base_url, post
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.usefixtures("worker")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(svc: Service) -> Samples:
    async with aiohttp.ClientSession() as s, s.get(base_url(svc) + "/metrics") as resp:
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


async def test_metrics_count_requests_latency_and_items_by_contract_and_reason(ingest: Service) -> None:
    before = await scrape(ingest)
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
        await post(ingest, "/v1/feedback", batch(2, 1)),
        await post(ingest, "/v1/feedback", batch(2, 1)),
        await post(ingest, "/v1/feedback", outcomes),
        await post(ingest, "/v1/feedback", {}),
        await post(ingest, "/v1/feedback", {"event_type": "result_helpful"}, key="fs_not_a_key"),
        await post(ingest, "/api/v1/feedback", scored),
        await post(ingest, "/api/v1/feedback", {**scored, "score": 1.5}),
    ]
    assert [a[0] for a in answers] == [200, 200, 200, 400, 401, 201, 422]
    d = delta(before, await scrape(ingest))

    requests = "feedstream_http_requests_total"
    assert d(requests, route="/v1/feedback", method="POST", status="200") == 3
    assert d(requests, route="/v1/feedback", method="POST", status="400") == 1
    assert d(requests, route="/v1/feedback", method="POST", status="401") == 1
    assert d(requests, route="/api/v1/feedback", method="POST", status="201") == 1
    assert d(requests, route="/api/v1/feedback", method="POST", status="422") == 1

    latency = "feedstream_http_request_duration_seconds"
    assert d(f"{latency}_count", route="/v1/feedback") == 5
    assert d(f"{latency}_bucket", route="/v1/feedback", le="+Inf") == 5
    assert d(f"{latency}_count", route="/api/v1/feedback") == 2
    assert d(f"{latency}_sum", route="/v1/feedback") > 0
    after = await scrape(ingest)
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


KEYS = [DEV_KEY, KAIZEN_KEY, OTHER_KEY, "fs_unknown_key_999", "fs_rate_key_2rps", "fs_stream_key"]


async def test_api_keys_appear_in_no_log_and_on_no_topic(
    ingest: Service, worker: Service, broker: Broker, names: TopicNames
) -> None:
    correction = {"case_id": "k", "module": "m", "original_output": {}, "corrected_output": {}, "actor": {}}
    for key in KEYS:
        for header in ("bearer", "x-api-key"):
            for body in (
                correction,
                {"event_type": "passage_used"},
                [{"id": str(uuid.uuid4()), "feedback": {}}],
            ):
                await post(ingest, "/v1/feedback", body, key=key, header=header)
            await post(ingest, "/api/v1/feedback", {"task_id": str(uuid.uuid4())}, key=key, header=header)
    sentinel = f"keys-{uuid.uuid4().hex}"
    status, _, _ = await post(ingest, "/v1/feedback", correction, correlation_id=sentinel)
    assert status == 200

    leaks: list[str] = []

    def match(r: ConsumerRecord[bytes, bytes]) -> bool:
        blob = b"".join([r.key or b"", r.value, *(v for _, v in r.headers)])
        leaks.extend(key for key in KEYS if key.encode() in blob)
        return dict(r.headers).get("correlation_id") == sentinel.encode()

    (found,) = await read_until(broker.bootstrap, names.raw, match, count=1, settle_s=1.0)
    assert found.value  # the whole topic up to our last request was read
    assert leaks == []

    logs = sorted(ingest.log_path.parent.glob("*.log"))
    assert ingest.log_path in logs and worker.log_path in logs
    assert LOG_DIR in ingest.log_path.parents
    for log in logs:
        text = log.read_bytes()
        assert text, log
        assert [key for key in KEYS if key.encode() in text] == [], log
