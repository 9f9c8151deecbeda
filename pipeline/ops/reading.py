"""Bounded reads of a topic for the operators' tools: what is committed now, from a point to its end.

Every tool reads with ``read_committed`` and no consumer group (it commits nothing and joins
nothing), and stops at the end offsets it saw when it started, so a busy topic cannot keep it
reading forever.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline.kafka.io import partitions_of

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC when it names no zone) or an age before now: ``90s``, ``30m``, ``2h``, ``1d``."""
    now = now or datetime.now(UTC)
    m = _RELATIVE.match(text.strip())
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a time: {text!r} (ISO 8601, or an age such as 30m, 2h, 1d)") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def consumer(bootstrap: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        group_id=None,
        request_timeout_ms=10_000,
    )


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    since: datetime | None = None,
    start_offset: int | None = None,
    timeout_s: float = 30.0,
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every committed record of ``topic`` from ``since`` (a time) or ``start_offset`` (in each
    partition) or the beginning, up to the end offsets of when the read started."""
    numbers = (await partitions_of(bootstrap, [topic])).get(topic, [])
    c = consumer(bootstrap)
    await c.start()
    try:
        parts = [TopicPartition(topic, p) for p in numbers]
        if not parts:
            return
        c.assign(parts)
        ends = await c.end_offsets(parts)
        begins = await c.beginning_offsets(parts)
        starts = dict(begins)
        if since is not None:
            found = await c.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in parts})
            starts = {tp: (found[tp].offset if found.get(tp) else ends[tp]) for tp in parts}
        elif start_offset is not None:
            starts = {tp: max(begins[tp], start_offset) for tp in parts}
        todo = {tp for tp in parts if starts[tp] < ends[tp]}
        for tp in parts:
            c.seek(tp, starts[tp])
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took over {timeout_s:.0f} s")
            batch = await c.getmany(*todo, timeout_ms=500)
            for tp, records in batch.items():
                for rec in records:
                    if rec.offset < ends[tp]:
                        yield rec
            for tp in list(todo):  # done once the position passed the end (markers included)
                if await c.position(tp) >= ends[tp]:
                    todo.discard(tp)
    finally:
        await asyncio.shield(c.stop())


async def follow_from_end(c: AIOKafkaConsumer, bootstrap: str, topic: str) -> None:
    """Assign ``c`` every partition of ``topic`` at its current end: it then sees only what comes."""
    numbers = (await partitions_of(bootstrap, [topic])).get(topic, [])
    tps = [TopicPartition(topic, p) for p in numbers]
    c.assign(tps)
    for tp, end in (await c.end_offsets(tps)).items():
        c.seek(tp, end)
