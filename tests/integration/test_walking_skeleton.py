"""The walking skeleton on the real broker: HTTP in, Kafka out, metrics scraped."""

from __future__ import annotations

import json
import urllib.request

import orjson

from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import TopicNames
from pipeline.procs import Service
from tests.http_helpers import SEED_000, post
from tests.kafka_helpers import read_until


async def test_post_reaches_raw_topic_with_headers(
    ingest: Service, names: TopicNames, broker: Broker
) -> None:
    status, body, headers = await post(ingest, "/v1/feedback", SEED_000, correlation_id="corr-skeleton-1")
    assert status in (200, 202), body
    assert headers["x-correlation-id"] == "corr-skeleton-1"
    records = await read_until(
        broker.bootstrap, names.raw, lambda r: dict(r.headers).get("correlation_id") == b"corr-skeleton-1"
    )
    assert len(records) == 1
    event = orjson.loads(records[0].value)
    assert event["contract"] == "ranking_outcome"
    assert event["tenant"] == "dev"
    assert event["domain"] == "dating"
    assert records[0].key == b"dating/u_alice"
    assert [i["candidate_id"] for i in event["payload"]["items"]] == ["u_bob", "u_carl", "u_dan"]
    assert b"fs_dev_key_123" not in records[0].value


def test_metrics_are_scraped_from_ingest_and_worker(ingest: Service, worker: Service) -> None:
    for url in (
        ingest.health_url.replace("/healthz", "/metrics"),
        worker.health_url.replace("/ready", "/metrics"),
    ):
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        assert resp.status == 200
        assert "feedstream_" in text


def test_worker_ready_reports_json(worker: Service) -> None:
    with urllib.request.urlopen(worker.health_url, timeout=5) as resp:
        body = json.loads(resp.read())
    # one worker owns every partition of both stages and of the store stage (feedback.raw's)
    assert body == {"ready": True, "expand": [0, 1, 2, 3], "count": [0, 1, 2, 3], "store": [0, 1, 2, 3]}
