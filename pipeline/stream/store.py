"""The store stage: ``feedback.raw`` and ``feedback.erasures`` into the SQL feedback store, exactly once.

The classic sink pattern: the rows a batch of records becomes and the offsets that batch ends at
are written in ONE database transaction (:func:`pipeline.store.sql.write_batch`); on assignment the
stage reads its offsets back from the database and seeks there. Kafka's group offsets are never
committed nor read (the consumer group only hands out partitions). Every row is keyed by a
deterministic id (a scored entry's id is the event id the POST answered), so even a replay past
the stored offsets could not duplicate a row; erased ids keep a marker, so it cannot resurrect one.

Rows: every seed 003 scored entry as the list item ``GET /api/v1/feedback`` answers (fields in
seed order, ``created_at`` as the POST answered it), and every raw event of every contract as a
generic row (its envelope). Records the stream would dead-letter (not an envelope) are skipped
here (the expand stage dead-letters them) and their offsets committed.

Exported gauge ``feedstream_store_lag_seconds``: age (from the record's Kafka timestamp, i.e. the
ingest's commit) of the newest record of the last batch written; 0 when a poll found nothing new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from pipeline import contracts
from pipeline.api.contracts import ScoredOutputResponse
from pipeline.kafka.io import OutRecord, bootstrap_list
from pipeline.store.sql import (
    Database,
    EntryRow,
    ErasureRow,
    EventRow,
    OffsetConflict,
    PartitionBatch,
    read_offsets,
    write_batch,
)
from pipeline.wire import envelope
from pipeline.wire.records import Erasure, erasure_id

log = logging.getLogger(__name__)

STORE_LAG = Gauge(
    "feedstream_store_lag_seconds",
    "Age of the newest record the store stage wrote in its last batch (0 when caught up): how long "
    "a POST answered 201 may take to be listed by GET /api/v1/feedback.",
)
STORE_ROWS = Counter("feedstream_store_rows_total", "Rows the store stage wrote, by table.", ["table"])
STORE_SKIPPED = Counter(
    "feedstream_store_skipped_total", "Records the store stage could not read (the stream dead-letters them)."
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)


def micros(when: datetime) -> int:
    return (when - EPOCH) // ONE_US


def entry_doc(event: envelope.ScoredOutputEnvelope) -> bytes:
    """The list item of a scored entry: exactly what its POST answered (seed 003)."""
    p = event.payload
    answer = ScoredOutputResponse(
        id=p.entry_id,
        task_id=p.task_id,
        inputs=p.inputs,
        output=p.output,
        score=p.score,
        source=p.source,
        metadata=p.metadata,
        created_at=event.received_at,
    )
    return orjson.dumps(answer.model_dump(mode="json"))


def raw_rows(value: bytes, partition: int, offset: int) -> tuple[EventRow, EntryRow | None]:
    """The rows of one ``feedback.raw`` record (raises ValidationError for a non-envelope)."""
    event = contracts.decode(value)
    row = EventRow(
        event_id=event.event_id,
        tenant=event.tenant,
        domain=event.domain,
        contract=str(event.contract),
        received_us=micros(event.received_at),
        envelope=value,
    )
    entry = None
    if isinstance(event, envelope.ScoredOutputEnvelope):
        entry = EntryRow(
            id=event.payload.entry_id,
            tenant=event.tenant,
            task_id=event.payload.task_id,
            created_us=micros(event.received_at),
            doc=entry_doc(event),
            partition=partition,
            offset=offset,
        )
    return row, entry


def erasure_record(
    topic: str, *, tenant: str, entry_id: str, task_id: str, request_id: str, correlation_id: str
) -> OutRecord:
    """The ``feedback.erasures`` record of an erased entry (keyed like the entry on feedback.raw)."""
    msg = Erasure(
        erasure_id=erasure_id(entry_id),
        tenant=tenant,
        entry_id=entry_id,
        task_id=task_id,
        requested_at=datetime.now(UTC),
        request_id=request_id,
        correlation_id=correlation_id,
    )
    return OutRecord(
        topic,
        f"{task_id}/{entry_id}".encode(),
        orjson.dumps(msg.model_dump(mode="json")),
        [("request_id", request_id.encode()), ("tenant", tenant.encode())],
    )


class StoreRunner:
    """Consumes the raw and erasure topics (read_committed, its own group) into the store."""

    name = "store"

    def __init__(
        self,
        db: Database,
        *,
        bootstrap: str,
        group_id: str,
        raw_topic: str,
        erasures_topic: str,
        max_batch: int = 500,
        poll_ms: int = 50,
    ) -> None:
        self.db = db
        self.bootstrap = bootstrap
        self.group_id = group_id  # also the consumer name of its offsets in the database
        self.raw_topic = raw_topic
        self.erasures_topic = erasures_topic
        self.max_batch = max_batch
        self.poll_ms = poll_ms
        self._expected: dict[TopicPartition, int | None] = {}
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.batches = 0

    @property
    def partitions(self) -> list[int]:
        return sorted({tp.partition for tp in self._expected if tp.topic == self.raw_topic})

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_list(self.bootstrap),
            group_id=self.group_id,
            client_id=f"{self.group_id}-store",
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.poll_ms,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            session_timeout_ms=6_000,
            heartbeat_interval_ms=1_000,
            max_poll_interval_ms=120_000,
        )
        self._consumer.subscribe([self.raw_topic, self.erasures_topic], listener=_Listener(self))
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="stage-store")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer:
            await self._consumer.stop()

    # -- rebalance --------------------------------------------------------------------------------

    async def _assigned(self, tps: Sequence[TopicPartition]) -> None:
        async with self._lock:
            await self._seek(list(tps))
        self.ready.set()

    async def _seek(self, tps: list[TopicPartition]) -> None:
        """Seek each partition to the next offset the database holds for it (else its beginning)."""
        consumer = self._consumer
        assert consumer is not None
        stored: dict[str, dict[int, int]] = {}
        for topic in {tp.topic for tp in tps}:
            stored[topic] = await read_offsets(self.db, self.group_id, topic)
        missing = [tp for tp in tps if tp.partition not in stored[tp.topic]]
        beginnings = await consumer.beginning_offsets(missing) if missing else {}
        for tp in tps:
            at = stored[tp.topic].get(tp.partition)
            self._expected[tp] = at
            consumer.seek(tp, at if at is not None else beginnings[tp])
            log.info("store: %s[%d] taken at offset %s", tp.topic, tp.partition, at)

    async def _revoked(self, tps: Sequence[TopicPartition]) -> None:
        async with self._lock:  # waits for the batch in flight
            for tp in tps:
                self._expected.pop(tp, None)

    # -- processing -------------------------------------------------------------------------------

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                fetched = await consumer.getmany(
                    timeout_ms=self.poll_ms, max_records=self.max_batch * max(1, len(self._expected))
                )
                fetched = {tp: recs for tp, recs in fetched.items() if recs}
                if not fetched:
                    STORE_LAG.set(0.0)
                    continue
                async with self._lock:
                    await self._write({tp: r for tp, r in fetched.items() if tp in self._expected})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("store: batch failed; re-reading offsets from the database")
                await asyncio.sleep(1.0)
                async with self._lock:
                    owned = [tp for tp in self._expected if tp in consumer.assignment()]
                    with contextlib.suppress(Exception):
                        await self._seek(owned)

    def batch_of(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> PartitionBatch:
        batch = PartitionBatch(tp.topic, tp.partition, self._expected[tp], records[-1].offset + 1)
        for rec in records:
            try:
                if tp.topic == self.raw_topic:
                    event, entry = raw_rows(rec.value or b"", rec.partition, rec.offset)
                    batch.events.append(event)
                    if entry is not None:
                        batch.entries.append(entry)
                else:
                    erasure = Erasure.model_validate_json(rec.value or b"")
                    batch.erasures.append(
                        ErasureRow(erasure.entry_id, erasure.tenant, micros(erasure.requested_at))
                    )
            except (ValidationError, ValueError) as exc:
                STORE_SKIPPED.inc()
                log.warning("store: %s[%d]@%d skipped: %s", tp.topic, tp.partition, rec.offset, exc)
        return batch

    async def _write(self, fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        if not fetched:
            return
        batches = [self.batch_of(tp, recs) for tp, recs in fetched.items()]
        try:
            await write_batch(self.db, self.group_id, batches)
        except OffsetConflict as conflict:
            # another owner wrote these partitions (we are a zombie of a rebalance, or restarted
            # while it ran): commit nothing, start over from what the database holds
            log.warning("store: %s; seeking to the database's offsets", conflict)
            await self._seek(list(fetched))
            return
        for tp, recs in fetched.items():
            self._expected[tp] = recs[-1].offset + 1
        self.batches += 1
        STORE_ROWS.labels("entries").inc(sum(len(b.entries) for b in batches))
        STORE_ROWS.labels("events").inc(sum(len(b.events) for b in batches))
        STORE_ROWS.labels("erasures").inc(sum(len(b.erasures) for b in batches))
        newest = max(recs[-1].timestamp for recs in fetched.values()) / 1000.0
        STORE_LAG.set(max(0.0, time.time() - newest))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: StoreRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.runner._revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self.runner._assigned(assigned)
