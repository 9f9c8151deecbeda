"""What the pipeline is doing, at a glance: one snapshot for ``feedstream status`` and ``GET /status``.

Everything is read from Kafka, so the answer does not depend on which worker runs which stage:
counters from the count stage's compacted changelog, training results from ``train.completed``,
stage positions from the consumer groups' committed offsets against the read_committed end
offsets, dead letters from ``feedback.dlq``. Each read stops at the end offsets seen at its start.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.table import Table

from pipeline.kafka.io import bootstrap_list, partitions_of
from pipeline.kafka.topics import TopicNames, topic_names
from pipeline.ops.cli import app
from pipeline.ops.context import connect
from pipeline.ops.reading import consumer, read_topic
from pipeline.rules.counters import DomainCounter, apply_changelog
from pipeline.settings import Settings
from pipeline.store.sql import open_database, read_offsets
from pipeline.tenants import load_tenants
from pipeline.wire.records import (
    DeadLetter,
    TrainingResult,
    TrainTrigger,
    decoder,
    from_json,
    latest_training,
)

#: Dead letters the snapshot shows (the newest).
LATEST_LETTERS = 10


class DomainStatus(msgspec.Struct, kw_only=True):
    domain: str
    tenant: str | None
    pending: int
    threshold: int | None
    total: int
    sequence: int
    pending_since: datetime | None
    oldest_pending_age_s: float | None
    last_trigger: TrainTrigger | None
    last_training: TrainingResult | None


class PartitionLag(msgspec.Struct, kw_only=True):
    stage: str
    group: str
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int


class LetterSummary(msgspec.Struct, kw_only=True):
    letter: str
    stage: str
    reason: str
    error: str
    failed_at: datetime


class DlqStatus(msgspec.Struct, kw_only=True):
    size: int
    by_reason: dict[str, int]
    latest: list[LetterSummary]


class Snapshot(msgspec.Struct, kw_only=True):
    taken_at: datetime
    domains: list[DomainStatus]
    stages: list[PartitionLag]
    dlq: DlqStatus


def stage_inputs(settings: Settings, names: TopicNames) -> dict[str, tuple[str, list[str]]]:
    """Each stage's consumer group and input topics (as ``pipeline.stream.worker`` wires them)."""
    inputs = {"expand": [names.raw], "count": [names.units], "store": [names.raw, names.erasures]}
    return {stage: (settings.stage_group(stage), topics) for stage, topics in inputs.items()}


def domain_rows(
    settings: Settings,
    counters: dict[str, DomainCounter],
    trainings: dict[str, TrainingResult],
    now: datetime,
) -> list[DomainStatus]:
    """Every domain the tenants own (counted or not yet) and every domain with a counter."""
    registry = load_tenants(settings.tenants_file)
    owned = {d: t.id for t in registry.tenants for d in (*t.domains, *t.tasks)}
    rows = []
    for domain in sorted(set(owned) | set(counters)):
        c = counters.get(domain) or DomainCounter()
        threshold = (
            settings.shared_pool_threshold
            if domain == settings.shared_pool_domain
            else registry.threshold_for(domain)
        )
        rows.append(
            DomainStatus(
                domain=domain,
                tenant=owned.get(domain),
                pending=c.pending,
                threshold=threshold,
                total=c.total,
                sequence=c.sequence,
                pending_since=c.pending_since,
                oldest_pending_age_s=(now - c.pending_since).total_seconds() if c.pending_since else None,
                last_trigger=c.last_trigger,
                last_training=trainings.get(domain),
            )
        )
    return rows


def lag_rows(
    inputs: dict[str, tuple[str, list[str]]],
    committed: dict[str, dict[TopicPartition, int]],
    ends: dict[TopicPartition, int],
    behind: dict[tuple[str, TopicPartition], int] | None = None,
) -> list[PartitionLag]:
    """Lag per stage and input partition: end (read_committed) minus committed (moved past trailing
    transaction markers); nothing committed yet counts from the partition's start (0)."""
    rows = []
    for stage, (group, topics) in inputs.items():
        for tp in sorted((tp for tp in ends if tp.topic in topics), key=lambda t: (t.topic, t.partition)):
            c = committed.get(group, {}).get(tp)
            end = ends[tp]
            rows.append(
                PartitionLag(
                    stage=stage,
                    group=group,
                    topic=tp.topic,
                    partition=tp.partition,
                    committed=c,
                    end=end,
                    lag=max(0, end - (behind or {}).get((group, tp), c or 0)),
                )
            )
    return rows


async def _counters(bootstrap: str, names: TopicNames) -> dict[str, DomainCounter]:
    return counters_of([rec async for rec in read_topic(bootstrap, names.count_state)])


def counters_of(records: Iterable[ConsumerRecord[bytes, bytes]]) -> dict[str, DomainCounter]:
    """Each domain's last counter in the count changelog's ``records`` (its input offsets passed over)."""
    out: dict[str, DomainCounter] = {}
    for rec in records:
        apply_changelog(out, rec.key, rec.value)
    return out


async def _trainings(bootstrap: str, names: TopicNames) -> dict[str, TrainingResult]:
    out: dict[str, TrainingResult] = {}
    dec = decoder(TrainingResult)
    async for rec in read_topic(bootstrap, names.trainings):
        if rec.value is not None:
            result = dec.decode(rec.value)
            out[result.domain] = latest_training(out.get(result.domain), result)
    return out


async def _dlq(bootstrap: str, names: TopicNames) -> DlqStatus:
    size, by_reason = 0, dict[str, int]()
    latest: list[LetterSummary] = []
    async for rec in read_topic(bootstrap, names.dlq):
        letter = from_json(DeadLetter, rec.value)
        size += 1
        by_reason[letter.reason] = by_reason.get(letter.reason, 0) + 1
        latest.append(
            LetterSummary(
                letter=f"{rec.partition}:{rec.offset}",
                stage=letter.stage,
                reason=letter.reason,
                error=f"{letter.error_type}: {letter.error}"[:200],
                failed_at=letter.failed_at,
            )
        )
        latest.sort(key=lambda x: x.failed_at)
        del latest[:-LATEST_LETTERS]
    return DlqStatus(size=size, by_reason=by_reason, latest=latest[::-1])


Positions = tuple[
    dict[str, dict[TopicPartition, int]], dict[TopicPartition, int], dict[tuple[str, TopicPartition], int]
]


async def store_committed(settings: Settings, group: str, topics: list[str]) -> dict[TopicPartition, int]:
    """The store stage's offsets: kept in its database with its rows (it never commits to Kafka).
    A SQLite file that does not exist is not created (the stage has not run with these settings)."""
    if not settings.database_url and not await asyncio.to_thread(Path(settings.store_path).exists):
        return {}
    db = await open_database(settings)
    try:
        return {
            TopicPartition(topic, partition): offset
            for topic in topics
            for partition, offset in (await read_offsets(db, group, topic)).items()
        }
    finally:
        await db.close()


async def positions(
    bootstrap: str, inputs: dict[str, tuple[str, list[str]]], settings: Settings | None = None
) -> Positions:
    """Committed offsets per group (the store stage's from its database), read_committed end
    offsets, and for small lags where the next record really is (``behind``)."""
    topics = sorted({t for _, ts in inputs.values() for t in ts})
    parts = await partitions_of(bootstrap, topics)
    tps = [TopicPartition(t, p) for t in topics for p in parts.get(t, [])]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_list(bootstrap), request_timeout_ms=10_000)
    await admin.start()
    try:
        committed: dict[str, dict[TopicPartition, int]] = {}
        for stage, (group, topics) in inputs.items():
            if stage == "store" and settings is not None:
                committed[group] = await store_committed(settings, group, topics)
                continue
            offsets = await admin.list_consumer_group_offsets(group)
            committed[group] = {tp: m.offset for tp, m in offsets.items() if m.offset >= 0}
    finally:
        await admin.close()
    behind: dict[tuple[str, TopicPartition], int] = {}
    c = consumer(bootstrap)
    await c.start()
    try:
        ends = dict(await c.end_offsets(tps)) if tps else {}
        for tp, end in ends.items():  # a committed offset just before a commit marker is caught up
            for group, _ in inputs.values():
                at = committed[group].get(tp)
                if at is not None and 0 < end - at <= MARKER_CHECK:
                    behind[group, tp] = await _first_record(c, tp, at, end)
    finally:
        await c.stop()
    return committed, ends, behind


#: Lags up to this many offsets are checked by reading: transaction markers take offsets too, so a
#: stage that has processed everything still sits one offset (the last marker) before the end.
MARKER_CHECK = 64


async def _first_record(c: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int) -> int:
    """The offset of the first record at or after ``start`` (read_committed), or ``end`` if none:
    offsets of control markers and aborted records are not lag."""
    c.assign([tp])
    c.seek(tp, start)
    deadline = asyncio.get_running_loop().time() + 5.0
    while await c.position(tp) < end and asyncio.get_running_loop().time() < deadline:
        records = (await c.getmany(tp, timeout_ms=200)).get(tp, [])
        if records:
            return int(records[0].offset)
    return end if await c.position(tp) >= end else start


async def collect(settings: Settings, bootstrap: str) -> Snapshot:
    """The snapshot (a few seconds at most: reads run side by side, each bounded)."""
    names = topic_names(settings)
    inputs = stage_inputs(settings, names)
    counters, trainings, dlq, (committed, ends, behind) = await asyncio.gather(
        _counters(bootstrap, names),
        _trainings(bootstrap, names),
        _dlq(bootstrap, names),
        positions(bootstrap, inputs, settings),
    )
    now = datetime.now(UTC)
    return Snapshot(
        taken_at=now,
        domains=domain_rows(settings, counters, trainings, now),
        stages=lag_rows(inputs, committed, ends, behind),
        dlq=dlq,
    )


# --- feedstream status ---------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def print_snapshot(snap: Snapshot, console: Console) -> None:
    domains = Table(title="domains")
    for col in (
        "domain",
        "tenant",
        "pending",
        "threshold",
        "total",
        "last trigger",
        "oldest pending",
        "last training",
    ):
        domains.add_column(col, justify="right" if col in ("pending", "threshold", "total") else "left")
    for d in snap.domains:
        t = d.last_trigger
        trigger = (
            f"#{t.sequence} {t.reason} {t.emitted_at:%Y-%m-%d %H:%M:%S} "
            f"p{t.range.partition} {t.range.start_offset}..{t.range.end_offset}"
            if t
            else ""
        )
        training = f"#{d.last_training.sequence} {d.last_training.model_version}" if d.last_training else ""
        domains.add_row(
            d.domain,
            d.tenant or "",
            str(d.pending),
            "" if d.threshold is None else str(d.threshold),
            str(d.total),
            trigger,
            _age(d.oldest_pending_age_s),
            training,
        )
    console.print(domains)
    stages = Table(title="stages")
    for col in ("stage", "topic", "partition", "committed", "end", "lag"):
        stages.add_column(col, justify="left" if col in ("stage", "topic") else "right")
    for s in snap.stages:
        stages.add_row(
            s.stage,
            s.topic,
            str(s.partition),
            "-" if s.committed is None else str(s.committed),
            str(s.end),
            str(s.lag),
        )
    console.print(stages)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(snap.dlq.by_reason.items()))
    console.print(f"dead letters: {snap.dlq.size}" + (f" ({reasons})" if reasons else ""))
    for x in snap.dlq.latest[:5]:
        console.print(f"  {x.letter}  {x.failed_at:%Y-%m-%d %H:%M:%S}  {x.stage}  {x.reason}  {x.error[:80]}")


@app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="The snapshot as JSON, for scripts.")] = False,
) -> None:
    """Domains (pending, threshold, last trigger, oldest pending), stage lag per partition, dead letters."""
    settings, bootstrap, _names = connect()
    snap = asyncio.run(collect(settings, bootstrap))
    if as_json:
        typer.echo(json.dumps(msgspec.to_builtins(snap)))
        return
    print_snapshot(snap, Console())
