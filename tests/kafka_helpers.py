"""Reading and writing real Kafka topics from tests, the way a consumer of feedstream would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code (fixtures) on a private loop."""
    return asyncio.new_event_loop().run_until_complete(coro)


async def read_until(
    bootstrap: str,
    topic: str,
    match: Callable[[ConsumerRecord[bytes, bytes]], bool],
    *,
    count: int = 1,
    timeout_s: float = 30.0,
    settle_s: float = 0.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the beginning (committed data only) until ``count`` records match.

    ``settle_s`` keeps reading a little longer to catch records that must NOT be there (duplicates).
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        group_id=None,
    )
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        settle_deadline: float | None = None
        while time.monotonic() < deadline:
            if len(found) >= count and settle_deadline is None:
                settle_deadline = time.monotonic() + settle_s
            if settle_deadline is not None and time.monotonic() >= settle_deadline:
                break
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                found.extend(r for r in records if match(r))
        return found
    finally:
        await consumer.stop()


async def raw_of_request(
    bootstrap: str, raw_topic: str, request_id: str, count: int
) -> list[ConsumerRecord[bytes, bytes]]:
    """The ``feedback.raw`` records of one request (exactly ``count``: a short settle catches extras)."""
    recs = await read_until(
        bootstrap,
        raw_topic,
        lambda r: dict(r.headers).get("request_id") == request_id.encode(),
        count=count,
        settle_s=0.5,
    )
    assert len(recs) == count, [r.value for r in recs]
    return recs


async def produce(
    bootstrap: str,
    topic: str,
    value: bytes,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, headers=headers or [])
    finally:
        await producer.stop()
