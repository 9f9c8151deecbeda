"""What the scripts (bench, load, soak) and the integration tests share, written once: a topic's
partitions and ends, reading committed records up to the end, what a stage has left to do, and the
run-and-report shell of every script (find a broker, run on topics of a fresh tag, delete them, print
the table, write the JSON).

Scripts run as ``python -m scripts.x`` from the repository root; the tests import this module the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from pipeline import contracts
from pipeline.kafka.broker import find_broker
from pipeline.kafka.io import OutRecord, TransactionalWriter
from pipeline.kafka.topics import delete_prefixed_topics, topic_names
from pipeline.procs import child_env
from pipeline.settings import REPO_ROOT, Settings
from pipeline.wire import envelope

# --- reading topics ----------------------------------------------------------------------------------


async def partitions_of(bootstrap: str, topic: str) -> list[TopicPartition]:
    """A topic's partitions, from the admin client (an unsubscribed consumer has no metadata)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        for _ in range(50):  # bounded: 5 s for a just-created topic to show up
            described = await admin.describe_topics([topic])
            parts = [p["partition"] for d in described if d["error_code"] == 0 for p in d["partitions"]]
            if parts:
                return [TopicPartition(topic, p) for p in sorted(parts)]
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    raise RuntimeError(f"topic {topic} has no partitions in the broker's metadata")


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = await partitions_of(bootstrap, topic)
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def committed_batches(
    bootstrap: str, topic: str, *, group: str | None = None, timeout_s: float = 30.0
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """The committed records of ``topic`` (read_committed), in batches, from ``group``'s committed
    offsets (the beginning without a group) up to the topic's last stable offsets when reading began.

    Bounded by ``timeout_s``: a caller that must see everything compares what it got.
    """
    tps = await partitions_of(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        if group is None:
            await consumer.seek_to_beginning(*tps)
        else:
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
            await admin.start()
            try:
                committed = await admin.list_consumer_group_offsets(group, partitions=tps)
            finally:
                await admin.close()
            for tp in tps:
                at = committed.get(tp)
                consumer.seek(tp, at.offset if at is not None and at.offset >= 0 else 0)
        ends = await consumer.end_offsets(tps)  # last stable offsets (read_committed)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                yield [r for r in records if r.offset < ends[tp]]
    finally:
        await consumer.stop()


async def read_all(bootstrap: str, topic: str) -> list[bytes]:
    """Every committed record's value of ``topic`` up to its current end."""
    return [r.value or b"" async for batch in committed_batches(bootstrap, topic) for r in batch]


async def count_records(bootstrap: str, topic: str) -> int:
    return sum([len(batch) async for batch in committed_batches(bootstrap, topic)])


async def unprocessed(bootstrap: str, group: str, topic: str) -> int:
    """Committed records of ``topic`` after ``group``'s committed offsets.

    Exact, unlike an offset difference (``scripts.load.lag``), which also counts transaction
    markers and aborted records: those are no records to a read_committed reader, and a stage never
    commits past a trailing aborted batch, so the difference may never reach 0.
    """
    return sum([len(b) async for b in committed_batches(bootstrap, topic, group=group, timeout_s=10)])


async def wait_processed(
    bootstrap: str, settings: Settings, timeout_s: float
) -> tuple[float, tuple[int, int]]:
    """Until the worker's two stages have committed everything on raw and units (bounded).

    Seconds waited, and the records left on (raw, units): (0, 0) once caught up.
    """
    names = topic_names(settings)
    started = time.monotonic()
    while True:
        left = (
            await unprocessed(bootstrap, settings.stage_group("expand"), names.raw),
            await unprocessed(bootstrap, settings.stage_group("count"), names.units),
        )
        if left == (0, 0) or time.monotonic() - started > timeout_s:
            return time.monotonic() - started, left
        await asyncio.sleep(0.5)


# --- the scripts' shell ------------------------------------------------------------------------------

#: ``measure(args, bootstrap, broker_kind, tag)``: one script's run on topics prefixed ``tag + "."``
Measure = Callable[[argparse.Namespace, str, str, str], Awaitable[dict[str, Any]]]


def add_run_arguments(parser: argparse.ArgumentParser, name: str, seed: int) -> None:
    """``--out``, ``--seed`` and ``--keep-topics``, as every script has them."""
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / f"{name}.json")
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--keep-topics", action="store_true")


def run_header(tool: str, bootstrap: str, broker_kind: str) -> dict[str, Any]:
    """What every result file starts with: which tool, when, on what machine and broker."""
    return {
        "tool": tool,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "broker": {"bootstrap": bootstrap, "kind": broker_kind},
    }


async def run_tagged(
    name: str, measure: Measure, args: argparse.Namespace, bootstrap: str, broker_kind: str
) -> dict[str, Any]:
    """``measure`` on topics of a fresh tag, deleted afterwards (also when it fails) unless
    ``--keep-topics``; the result gets ``run_s``, the whole run's seconds."""
    tag = f"{name}{uuid.uuid4().hex[:8]}"
    t_run = time.perf_counter()
    try:
        return await measure(args, bootstrap, broker_kind, tag) | {"run_s": time.perf_counter() - t_run}
    finally:
        if not args.keep_topics:
            with contextlib.suppress(Exception):
                await delete_prefixed_topics(bootstrap, f"{tag}.")


def run_and_report(
    name: str, measure: Measure, args: argparse.Namespace, table: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """Find a broker, run, print the table and write the JSON (``--out``); the result, for a verdict."""
    with find_broker() as broker:
        result = asyncio.run(run_tagged(name, measure, args, broker.bootstrap, broker.kind))
    out: Path = args.out  # written first: a run is never lost to its table
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(result))
    print(f"\nwrote {out} (run took {result['run_s']:.0f} s)")
    return result


# --- a run's stack -----------------------------------------------------------------------------------


def tagged_settings(bootstrap: str, tag: str, tenants_file: Path, **overrides: Any) -> Settings:
    """A run's settings: topics prefixed ``tag.``, the worker's groups ``fs-tag-*``, its tenants file."""
    return Settings(
        kafka_bootstrap_servers=bootstrap,
        topic_prefix=f"{tag}.",
        worker_id=f"fs-{tag}",
        tenants_file=tenants_file,
        **overrides,
    )


def stack_env(settings: Settings, ingest_instance: str, **overrides: object) -> dict[str, str]:
    """The environment of a run's ingest and worker: this process's (without pytest's variables), the
    run's broker, topics, groups, transactional ids and tenants, and ``overrides`` (upper-cased)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    return child_env(
        env,
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers or "",
        topic_prefix=settings.topic_prefix,
        worker_id=settings.worker_id,
        ingest_instance=ingest_instance,
        tenants_file=settings.tenants_file,
        **overrides,
    )


async def write_raw(
    bootstrap: str, settings: Settings, events: list[envelope.RawEvent], *, transactional_id: str, chunk: int
) -> None:
    """Write envelopes to the run's ``feedback.raw`` as the ingest does (each request's records as
    :func:`pipeline.contracts.request_records` makes them: a seed 002 request's items one array
    record), in transactions of about ``chunk`` envelopes."""
    raw = topic_names(settings).raw
    requests = [list(g) for _, g in itertools.groupby(events, key=lambda e: (e.request_id, type(e)))]
    writer = TransactionalWriter(bootstrap, transactional_id=transactional_id)
    await writer.start()
    try:
        records: list[OutRecord] = []
        held = 0
        for i, request in enumerate(requests):
            records += contracts.request_records(raw, request)
            held += len(request)
            if held >= chunk or i == len(requests) - 1:
                await writer.write(records)
                records, held = [], 0
    finally:
        await writer.stop()
