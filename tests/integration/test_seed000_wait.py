"""Seed 000's answer when the stream is slower than the wait: 202 with where to look, never estimates."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import delete_prefixed_topics, ensure_topics
from pipeline.procs import Service, free_port, worker_service
from pipeline.settings import Settings
from tests.conftest import LOG_DIR, TEST_TENANTS
from tests.http_helpers import SEED_000, get, post
from tests.kafka_helpers import run


@pytest.fixture
def lonely_prefix(broker: Broker) -> Iterator[str]:
    """Topics of their own, where no worker runs until the test starts one."""
    prefix = f"lonely{uuid.uuid4().hex[:8]}."
    run(
        ensure_topics(
            broker.bootstrap, Settings(kafka_bootstrap_servers=broker.bootstrap, topic_prefix=prefix)
        )
    )
    yield prefix
    for doomed in (prefix, f"w-{prefix[:-1]}-"):
        run(delete_prefixed_topics(broker.bootstrap, doomed))


async def test_seed_000_answers_202_and_where_to_look_when_the_stream_is_late(
    ingest_factory: Callable[..., Service], service_env: dict[str, str], lonely_prefix: str
) -> None:
    ingest = ingest_factory("late", topic_prefix=lonely_prefix, result_wait_s=1)
    status, body, headers = await post(ingest, "/v1/feedback", SEED_000)
    assert status == 202, body
    request_id = headers["x-request-id"]
    assert body == {
        "accepted": 3,
        "status": "processing",
        "results_url": f"/v1/requests/{request_id}",
        "request_id": request_id,
    }
    status, missing = await get(ingest, body["results_url"])
    assert status == 404 and missing["error"]["code"] == "NOT_FOUND"

    env = dict(
        service_env,
        TOPIC_PREFIX=lonely_prefix,
        WORKER_ID=f"w-{lonely_prefix[:-1]}",
        TENANTS_FILE=str(TEST_TENANTS),
    )
    worker = worker_service(env, free_port(), LOG_DIR / lonely_prefix, name="late-worker").start()
    try:
        answer: dict[str, Any] = {}
        for _ in range(300):  # the worker catches up with the raw event written earlier
            status, answer = await get(ingest, body["results_url"])
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200, answer
        assert answer["request_id"] == request_id
        assert answer["triplets_generated"] == 3 and answer["triplets_pending_train"] == 3
        assert [r["units_generated"] for r in answer["results"]] == [3]
        status, _ = await get(ingest, body["results_url"], key="fs_other_key_456")
        assert status == 404  # another tenant does not see it
    finally:
        worker.stop()
