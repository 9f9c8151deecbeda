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

import logging
import time
from datetime import UTC, datetime, timedelta

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from pipeline import contracts
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
from pipeline.stream.partitions import Clients, KafkaClients, PartitionRunner
from pipeline.wire import envelope
from pipeline.wire.records import Erasure, from_json

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


def raw_rows(value: bytes, partition: int, offset: int) -> tuple[EventRow, EntryRow | None]:
    """The rows of one ``feedback.raw`` record (raises a ValueError, msgspec's, for a non-envelope)."""
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
            doc=contracts.stored_entry(event),
            partition=partition,
            offset=offset,
        )
    return row, entry


def record_rows(value: bytes, partition: int, offset: int) -> tuple[list[EventRow], list[EntryRow]]:
    """The rows of one ``feedback.raw`` record: of its envelope, or of each envelope of an array
    record (one the stream dead-letters is skipped alone; raises a ValueError for a bad array)."""
    events: list[EventRow] = []
    entries: list[EntryRow] = []
    for part in contracts.split_record(value):
        try:
            event, entry = raw_rows(part, partition, offset)
        except ValueError as exc:  # msgspec's ValidationError is one
            STORE_SKIPPED.inc()
            log.warning("store: an envelope of feedback.raw[%d]@%d skipped: %s", partition, offset, exc)
            continue
        events.append(event)
        if entry is not None:
            entries.append(entry)
    return events, entries


class StoreRunner(PartitionRunner[int | None]):
    """Consumes the raw and erasure topics (read_committed, its own group) into the store.

    The consumer shell (assignment, continuity, poll loop, stop) is :class:`PartitionRunner`'s; what
    it holds per partition is the next offset the database has for it (None: nothing stored yet),
    which every write requires unchanged (the fencing of the sink).
    """

    name = "store"

    def __init__(
        self,
        db: Database,
        *,
        bootstrap: str = "",
        group_id: str,
        raw_topic: str,
        erasures_topic: str,
        max_batch: int = 500,
        poll_ms: int = 50,
        clients: Clients | None = None,
    ) -> None:
        super().__init__(
            clients=clients or KafkaClients(bootstrap, poll_ms=poll_ms),
            group_id=group_id,  # also the consumer name of its offsets in the database
            topics=[raw_topic, erasures_topic],
            max_batch=max_batch,
            poll_ms=poll_ms,
            consumer_options={"max_partition_fetch_bytes": 8 * 1024 * 1024},
        )
        self.db = db
        self.raw_topic = raw_topic
        self.erasures_topic = erasures_topic

    async def _open(self, tp: TopicPartition) -> tuple[int | None, int]:
        """The next offset the database holds for ``tp`` (else its beginning)."""
        at = (await read_offsets(self.db, self.group_id, tp.topic)).get(tp.partition)
        start = at if at is not None else (await self.consumer.beginning_offsets([tp]))[tp]
        return at, start

    async def _close(self, tp: TopicPartition, handle: int | None) -> None:
        return None  # nothing held but the offset

    async def _idle(self) -> None:
        STORE_LAG.set(0.0)

    def batch_of(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> PartitionBatch:
        batch = PartitionBatch(tp.topic, tp.partition, self._owned[tp], records[-1].offset + 1)
        for rec in records:
            try:
                if tp.topic == self.raw_topic:
                    events, entries = record_rows(rec.value or b"", rec.partition, rec.offset)
                    batch.events.extend(events)
                    batch.entries.extend(entries)
                else:
                    erasure = from_json(Erasure, rec.value or b"")
                    batch.erasures.append(
                        ErasureRow(erasure.entry_id, erasure.tenant, micros(erasure.requested_at))
                    )
            except (ValidationError, ValueError) as exc:
                STORE_SKIPPED.inc()
                log.warning("store: %s[%d]@%d skipped: %s", tp.topic, tp.partition, rec.offset, exc)
        return batch

    async def _process(
        self, fetched: dict[TopicPartition, tuple[list[ConsumerRecord[bytes, bytes]], int]]
    ) -> None:
        """One database transaction for everything polled: rows and offsets together."""
        batches = [self.batch_of(tp, recs) for tp, (recs, _) in fetched.items()]
        try:
            await write_batch(self.db, self.group_id, batches)
        except OffsetConflict as conflict:
            # another owner wrote these partitions (we are a zombie of a rebalance, or restarted
            # while it ran): commit nothing, start over from what the database holds
            log.warning("store: %s; re-reading the database's offsets", conflict)
            for tp in fetched:
                self.reopen(tp)
            return
        except Exception:
            log.exception("store: batch failed; re-reading offsets from the database")
            for tp in fetched:
                self.reopen(tp, delay=1.0)
            return
        for tp, (recs, after) in fetched.items():
            self._owned[tp] = recs[-1].offset + 1
            self.committed(tp, recs[-1].offset + 1, after)
        self.batches += 1
        STORE_ROWS.labels("entries").inc(sum(len(b.entries) for b in batches))
        STORE_ROWS.labels("events").inc(sum(len(b.events) for b in batches))
        STORE_ROWS.labels("erasures").inc(sum(len(b.erasures) for b in batches))
        newest = max(recs[-1].timestamp for recs, _ in fetched.values()) / 1000.0
        STORE_LAG.set(max(0.0, time.time() - newest))
