"""What operators see: API keys appear in no log and on no topic (the metrics test is in process:
tests/unit/test_http_contract.py)."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import ConsumerRecord

from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import TopicNames
from pipeline.procs import Service
from tests.conftest import LOG_DIR
from tests.http_helpers import DEV_KEY, KAIZEN_KEY, OTHER_KEY, post
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.usefixtures("worker")

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
