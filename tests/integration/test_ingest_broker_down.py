"""Broker down: the ingest answers 503 with a clear body within a bound derived from its timeout,
writes nothing, and works again once the broker is back.

A second local broker (deploy/kafka/broker.sh on free ports, its own data dir) is started for this
test only and stopped in a ``finally``; the session broker, which other tests (and other xdist
workers) use at the same time, is never touched.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord

from pipeline.kafka.broker import BROKER_SCRIPT
from pipeline.kafka.topics import topic_names
from pipeline.procs import Service, free_port
from pipeline.settings import Settings
from tests.http_helpers import post
from tests.kafka_helpers import read_until

PRODUCE_TIMEOUT_S = 2.0
# a correctness bound (the request must not hang), not a speed test: the writer waits at most
# the timeout for the queue, then a transaction already under way may take the timeout to give up
# and the timeout again to abort
BOUND_S = 3 * PRODUCE_TIMEOUT_S + 5.0
CORRECTION = {"case_id": "down-1", "module": "m", "original_output": {}, "corrected_output": {}, "actor": {}}


class SecondBroker:
    def __init__(self, data: Path) -> None:
        # free ports, not fixed ones: another checkout's suite may run this test at the same time
        port = free_port()
        self.bootstrap = f"127.0.0.1:{port}"
        # every variable set explicitly: without LOCAL_KAFKA_DATA the script would act on the session broker
        self.env = dict(
            os.environ,
            LOCAL_KAFKA_PORT=str(port),
            LOCAL_KAFKA_CONTROLLER_PORT=str(free_port()),
            LOCAL_KAFKA_DATA=str(data),
            KAFKA_HEAP="512m",
        )

    def run(self, command: str) -> None:
        subprocess.run(["bash", str(BROKER_SCRIPT), command], env=self.env, check=True, timeout=180)


@pytest.fixture
def second_broker(tmp_path: Path) -> Iterator[SecondBroker]:
    broker = SecondBroker(tmp_path / "kafka2")
    try:
        broker.run("start")
        yield broker
    finally:
        broker.run("stop")


@pytest.mark.slow
async def test_broker_down_is_503_with_nothing_written_then_recovers(
    second_broker: SecondBroker, ingest_factory: Callable[..., Service]
) -> None:
    prefix = f"down{uuid.uuid4().hex[:8]}."
    bootstrap = second_broker.bootstrap
    raw_topic = topic_names(Settings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix)).raw
    ingest = ingest_factory(
        "ingest-down",
        kafka_bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        produce_timeout_s=PRODUCE_TIMEOUT_S,
    )
    try:
        before = f"down-before-{uuid.uuid4().hex[:6]}"
        status, body, _ = await post(ingest, "/v1/feedback", CORRECTION, correlation_id=before)
        assert status == 200, body

        second_broker.run("stop")
        refused: list[str] = []
        # one record each (an idempotent send), then two (a transaction): both paths refuse alike
        two_items = [{"id": str(uuid.uuid4()), "feedback": {"ok": True}} for _ in range(2)]
        for contract_body in (CORRECTION, [{"id": str(uuid.uuid4()), "feedback": {"ok": True}}], two_items):
            correlation_id = f"down-{uuid.uuid4().hex[:8]}"
            started = time.monotonic()
            status, body, headers = await post(
                ingest, "/v1/feedback", contract_body, correlation_id=correlation_id
            )
            elapsed = time.monotonic() - started
            refused.append(correlation_id)
            assert status == 503, body
            assert elapsed < BOUND_S
            assert headers["retry-after"] == "1"
            message = body["message"] if isinstance(contract_body, dict) else body["error"]["message"]
            if isinstance(contract_body, dict):  # seed 001 in its own shape
                assert body["error_code"] == "UNAVAILABLE"
            else:
                assert body["error"]["code"] == "UNAVAILABLE"
            assert body["correlation_id"] == correlation_id
            assert message.startswith("Feedback could not be stored, nothing was written; retry.")

        second_broker.run("start")
        after = f"down-after-{uuid.uuid4().hex[:6]}"
        deadline = time.monotonic() + 90
        attempts: list[int] = []
        while time.monotonic() < deadline:  # the writer reconnects on its own; 503s meanwhile are honest
            correlation_id = f"{after}-{len(attempts)}"
            status, body, _ = await post(ingest, "/v1/feedback", CORRECTION, correlation_id=correlation_id)
            attempts.append(status)
            if status == 200:
                break
            assert status == 503, body
            refused.append(correlation_id)
        assert attempts[-1] == 200, attempts

        wanted = {c.encode() for c in [before, correlation_id, *refused]}

        def match(r: ConsumerRecord[bytes, bytes]) -> bool:
            return dict(r.headers).get("correlation_id") in wanted

        recs = await read_until(bootstrap, raw_topic, match, count=2, settle_s=1.5, timeout_s=60)
        assert sorted(dict(r.headers)["correlation_id"].decode() for r in recs) == sorted(
            [before, correlation_id]
        )
    finally:
        ingest.stop()  # while its broker is up: a quick, clean stop
