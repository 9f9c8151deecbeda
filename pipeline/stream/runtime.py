"""Exactly-once consume-transform-produce on Kafka transactions, with per-partition state.

Why not faust's ``exactly_once``: its TransactionManager picks the transaction by the
*destination* partition of each send (faust/transport/consumer.py, ``TransactionManager.send``),
so an agent that re-keys (ours key training units by domain) writes outside the transaction that
commits its input offsets, or fails for partitions it does not own. This runner does what Kafka
Streams' EOS does, small enough to prove with kill tests:

* one transactional producer per assigned input partition (``transactional.id`` =
  ``<group>-<stage>-<partition>``): a new owner's ``init_transactions`` fences the old owner
  and aborts its open transaction;
* per partition and batch: begin, send outputs, write state changes to the stage's compacted
  changelog (same partition number), send the input offsets, commit; all or nothing;
* on assignment: fence, re-read the committed offset, restore state from the changelog.

Consumers read ``read_committed``, so aborted work is never seen downstream.

No input stalls a partition. Each output record is checked against its topic's declared size
limit before it is sent (:func:`pipeline.kafka.topics.message_limits`); a record over it, or one the
broker refuses for its size, belongs to the input that produced it. The batch is aborted and
processed again one input per transaction ("careful mode"); the input whose own transaction is
refused is dead-lettered (reason ``size_violation``, its offset committed) and the partition moves
on. Dead letters are sized to fit the dead-letter topic (the original is cut, saying so, if not).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.partitioner import murmur2
from aiokafka.structs import ConsumerRecord, RecordMetadata

from pipeline import metrics
from pipeline.kafka.io import MAX_REQUEST_BYTES, bootstrap_list
from pipeline.wire.records import MAX_DEAD_LETTER_KEY_BYTES, DeadLetterReason, dead_letter, to_json

log = logging.getLogger(__name__)

S = TypeVar("S")
Record: TypeAlias = ConsumerRecord  # bytes key and value


#: Keys whose partition is cached. Domains (units, triplets, counters) repeat and stay hot; request
#: ids, new seekers and sessions churn, and caching 65,536 of them held about 14 MiB of the worker for
#: nothing (docs/design.md, "Hardening: fuzz and soak"). About 250 bytes an entry: 1 MiB at most.
KEY_PARTITION_CACHE = 4096


@functools.lru_cache(maxsize=KEY_PARTITION_CACHE)
def key_partition(key: bytes, partitions: int) -> int | None:
    """Kafka's default partition of a key (murmur2, as Java and aiokafka), cached for the hot keys."""
    if partitions == 0:
        return None  # metadata not known yet: let the producer wait for it and partition
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


SCHEMA_VIOLATION: DeadLetterReason = "schema_violation"
PROCESSING_FAILURE: DeadLetterReason = "processing_failure"
SIZE_VIOLATION: DeadLetterReason = "size_violation"

#: Kafka's default limit, for a topic whose limit the runner was not told.
DEFAULT_LIMIT = 1024 * 1024 + 12
#: Bytes a record takes beyond its key, value and headers when alone in a batch (v2 batch header 61,
#: record varints and attributes at most 36), rounded up.
RECORD_OVERHEAD = 128
#: Broker errors that refuse a record for what it is (retrying cannot help).
REFUSED_BY_BROKER: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    CorruptRecordException,
    InvalidTimestampError,
)
_SIZE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)


def record_size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()) -> int:
    """An upper bound of a record's bytes in a batch of its own (what ``max.message.bytes`` limits)."""
    extra = sum(len(k.encode()) + len(v) + 10 for k, v in headers)
    return RECORD_OVERHEAD + len(key or b"") + len(value or b"") + extra


class OutputRefused(Exception):
    """An output record its topic does not take: over the declared limit, or refused by the broker.

    ``by_broker``: the broker (or the client library) refused it after it was handed over, so the
    producer's transaction is in error; otherwise nothing was sent and the transaction is clean.
    """

    def __init__(
        self, message: str, *, reason: DeadLetterReason = SIZE_VIOLATION, by_broker: bool = False
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.by_broker = by_broker


def refusal(exc: BaseException) -> OutputRefused | None:
    """``exc`` (or what caused it) as an output refusal, or None for any other failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OutputRefused):
            return current
        if isinstance(current, REFUSED_BY_BROKER):
            reason = SIZE_VIOLATION if isinstance(current, _SIZE_ERRORS) else PROCESSING_FAILURE
            return OutputRefused(
                f"the broker refused an output record: {type(current).__name__}: {current}",
                reason=reason,
                by_broker=True,
            )
        current = current.__cause__ or current.__context__
    return None


class Tx:
    """What a stage may do inside the transaction of one batch."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        stage: str = "stage",
        dlq: str | None = None,
        limits: Mapping[str, int] | None = None,
    ) -> None:
        self._producer = producer
        self._pending: list[asyncio.Future[RecordMetadata]] = []
        self.stage = stage
        self.dlq = dlq
        self.limits = limits or {}

    def limit(self, topic: str) -> int:
        return self.limits.get(topic, DEFAULT_LIMIT)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        """Queue a record in the transaction; await the returned future for its offset.

        Raises :class:`OutputRefused` at once (nothing sent) for a record over its topic's limit.
        """
        size = record_size(key, value, headers or ())
        limit = self.limit(topic)
        if size > limit:
            raise OutputRefused(f"a {size}-byte record for {topic} is over its {limit}-byte limit")
        if partition is None and key is not None:
            partition = key_partition(key, len(self._producer._metadata.partitions_for_topic(topic) or ()))
        fut: asyncio.Future[RecordMetadata] = await self._producer.send(
            topic, value, key=key, partition=partition, headers=headers or []
        )
        self._pending.append(fut)
        return fut

    async def flush(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending)
            self._pending.clear()

    async def settle(self) -> None:
        """Wait for every record handed over, whatever became of it (before an abort)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
            self._pending.clear()

    async def dead_letter(self, rec: Record, error: BaseException, reason: DeadLetterReason) -> None:
        """Park ``rec`` on the dead-letter topic with the error and its reason class.

        The letter always fits the topic: if the original (in base64) would not, only its head is kept
        and ``original_truncated`` says so.
        """
        if self.dlq is None:
            raise RuntimeError("this transaction has no dead-letter topic")
        limit = min(self.limit(self.dlq), MAX_REQUEST_BYTES) - 1024
        key = None if rec.key is None else rec.key[:MAX_DEAD_LETTER_KEY_BYTES]
        original = rec.value or b""
        fields: dict[str, Any] = {
            "stage": self.stage,
            "reason": reason,
            "error": error,
            "original": original,
            "topic": rec.topic,
            "partition": rec.partition,
            "offset": rec.offset,
            "key": rec.key,
            "failed_at": datetime.now(UTC),
        }
        value = to_json(dead_letter(**fields))
        if record_size(key, value) > limit:
            bare = record_size(key, to_json(dead_letter(**fields, max_original_bytes=0)))
            fields["max_original_bytes"] = max(0, (limit - bare) * 3 // 4 - 4)
            value = to_json(dead_letter(**fields))
        await self.send(self.dlq, value, key=key)
        metrics.DLQ.labels(self.stage, reason).inc()


class Stage(Protocol[S]):
    """A stage: pure rules behind ``process``; its state is a table (dict) per input partition."""

    name: str

    def decode_state(self, value: bytes) -> S: ...

    def encode_state(self, state: S) -> bytes: ...

    async def process(
        self, partition: int, records: Sequence[Record], state: Mapping[bytes, S], tx: Tx
    ) -> dict[bytes, S | None]:
        """Handle a batch without mutating ``state``; return the changed keys (None deletes).

        The changes are written once per key per batch, and applied only once committed.
        """
        ...


@dataclass
class _Owned(Generic[S]):
    producer: AIOKafkaProducer
    state: dict[bytes, S] = field(default_factory=dict)
    sizes: dict[bytes, int] = field(default_factory=dict)  # changelog bytes (key + value) per key
    state_bytes: int = 0

    def apply(self, key: bytes, value: S | None, size: int) -> None:
        self.state_bytes -= self.sizes.pop(key, 0)
        if value is None:
            self.state.pop(key, None)
        else:
            self.state[key] = value
            self.sizes[key] = size
            self.state_bytes += size


@dataclass
class _Careful:
    """A partition processed one input per transaction up to ``until`` (inclusive), after a refusal."""

    until: int
    poison: dict[int, OutputRefused] = field(default_factory=dict)  # offset -> why its own txn failed


class StageRunner(Generic[S]):
    """Runs one stage for this process's share of the input partitions."""

    def __init__(
        self,
        stage: Stage[S],
        *,
        bootstrap: str,
        group_id: str,
        input_topic: str,
        changelog_topic: str,
        dlq_topic: str,
        limits: Mapping[str, int] | None = None,
        max_batch: int = 500,
        poll_ms: int = 50,
    ) -> None:
        self.stage = stage
        self.dlq_topic = dlq_topic
        self.limits = dict(limits or {})
        self._careful: dict[int, _Careful] = {}
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.input_topic = input_topic
        self.changelog_topic = changelog_topic
        self.max_batch = max_batch
        self.poll_ms = poll_ms
        self._owned: dict[int, _Owned[S]] = {}
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.batches = 0

    @property
    def partitions(self) -> list[int]:
        return sorted(self._owned)

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_list(self.bootstrap),
            group_id=self.group_id,
            client_id=f"{self.group_id}-{self.stage.name}",
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.poll_ms,
            session_timeout_ms=6_000,
            heartbeat_interval_ms=1_000,
            max_poll_interval_ms=120_000,
        )
        self._consumer.subscribe([self.input_topic], listener=_Listener(self))
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name=f"stage-{self.stage.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        async with self._lock:
            for owned in self._owned.values():
                with contextlib.suppress(Exception):
                    await owned.producer.stop()
            self._owned.clear()
        if self._consumer:
            await self._consumer.stop()

    # -- rebalance --------------------------------------------------------------------------------

    async def _assigned(self, tps: Sequence[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        async with self._lock:
            for tp in tps:
                if tp.partition not in self._owned:
                    await self._take(tp)
        self.ready.set()

    async def _take(self, tp: TopicPartition) -> None:
        """Own a partition: fence the previous owner, re-read its committed offset, restore state."""
        consumer = self._consumer
        assert consumer is not None
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_list(self.bootstrap),
            transactional_id=f"{self.group_id}-{self.stage.name}-{tp.partition}",
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
            max_batch_size=256 * 1024,
            max_request_size=MAX_REQUEST_BYTES,
            transaction_timeout_ms=30_000,
        )
        await producer.start()  # init_transactions: fences the previous owner, aborts its open txn
        try:
            owned = await self._restore(tp.partition, producer)
            committed = await consumer.committed(tp)  # final: nobody else can commit for it now
        except BaseException:
            await producer.stop()
            raise
        if committed is None:
            committed = (await consumer.beginning_offsets([tp]))[tp]
        consumer.seek(tp, committed)
        self._owned[tp.partition] = owned
        self._state_metrics()
        log.info(
            "%s: partition %d taken at offset %s with %d state keys (%d bytes)",
            self.stage.name,
            tp.partition,
            committed,
            len(owned.state),
            owned.state_bytes,
        )

    async def _revoked(self, tps: Sequence[TopicPartition]) -> None:
        async with self._lock:  # waits for the batch in flight to commit
            for tp in tps:
                self._careful.pop(tp.partition, None)
                owned = self._owned.pop(tp.partition, None)
                if owned is not None:
                    with contextlib.suppress(Exception):
                        await owned.producer.stop()
                    log.info("%s: partition %d revoked", self.stage.name, tp.partition)

    async def _restore(self, partition: int, producer: AIOKafkaProducer) -> _Owned[S]:
        """Rebuild a partition's state from its changelog (committed records only)."""
        tp = TopicPartition(self.changelog_topic, partition)
        reader = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_list(self.bootstrap),
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            group_id=None,
        )
        await reader.start()
        owned: _Owned[S] = _Owned(producer)
        try:
            reader.assign([tp])
            end = (await reader.end_offsets([tp]))[tp]
            # explicit seek: aiokafka's seek_to_beginning can lose to the initial offset reset
            reader.seek(tp, (await reader.beginning_offsets([tp]))[tp])
            while await reader.position(tp) < end:
                batch = await reader.getmany(tp, timeout_ms=500, max_records=5000)
                for rec in batch.get(tp, []):
                    if rec.key is None:
                        continue
                    if rec.value is None:
                        owned.apply(rec.key, None, 0)
                    else:
                        value = self.stage.decode_state(rec.value)
                        owned.apply(rec.key, value, len(rec.key) + len(rec.value))
        finally:
            await reader.stop()
        return owned

    # -- processing -------------------------------------------------------------------------------

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                orphans = [tp for tp in consumer.assignment() if tp.partition not in self._owned]
                if orphans:  # a failed batch left partitions un-owned: take them (seeks back)
                    async with self._lock:
                        for tp in orphans:
                            if tp.partition not in self._owned and tp in consumer.assignment():
                                await self._take(tp)
                batches = await consumer.getmany(
                    timeout_ms=self.poll_ms, max_records=self.max_batch * max(1, len(self._owned))
                )
                # partitions have their own producers: their transactions run side by side; the
                # lock makes a rebalance wait until every batch in flight has committed or aborted
                async with self._lock:
                    outcomes = await asyncio.gather(
                        *(self._process(tp, records) for tp, records in batches.items() if records),
                        return_exceptions=True,
                    )
                for outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        raise outcome
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: processing loop error; retrying", self.stage.name)
                await asyncio.sleep(1.0)

    async def _process(self, tp: TopicPartition, records: list[Record]) -> None:
        """One partition's fetched records: one transaction, or one per input in careful mode.

        The caller holds the rebalance lock.
        """
        p = tp.partition
        if p not in self._owned:
            # Revoked while the batch was in our hands (the new owner redoes it), or a failed
            # batch left it un-owned: take it again, which seeks back to the committed offset.
            if self._consumer is not None and tp in self._consumer.assignment():
                await self._take(tp)
            return
        careful = self._careful.get(p)
        if careful is None:
            await self._transact(tp, records)
            return
        for i, rec in enumerate(records):
            if rec.offset > careful.until:
                log.info("%s: partition %d leaves careful mode at offset %d", self.stage.name, p, rec.offset)
                self._careful.pop(p, None)
                await self._transact(tp, records[i:])
                return
            if not await self._transact(tp, [rec]):
                return  # the partition was rewound: what is left of ``records`` comes again
        if records[-1].offset >= careful.until:
            log.info("%s: partition %d leaves careful mode", self.stage.name, p)
            self._careful.pop(p, None)

    async def _transact(self, tp: TopicPartition, records: list[Record]) -> bool:
        """One transaction over ``records``; False if it did not commit (the partition was rewound)."""
        owned = self._owned.get(tp.partition)
        if owned is None:
            return False
        producer = owned.producer
        careful = self._careful.get(tp.partition)
        poison = careful.poison.get(records[0].offset) if careful and len(records) == 1 else None
        tx = Tx(producer, stage=self.stage.name, dlq=self.dlq_topic, limits=self.limits)
        changes: dict[bytes, S | None] = {}
        sizes: dict[bytes, int] = {}
        try:
            await producer.begin_transaction()
            if poison is not None:  # its own transaction was refused: park it, move on
                await tx.dead_letter(records[0], poison, poison.reason)
            else:
                changes = await self.stage.process(tp.partition, records, owned.state, tx)
                for key, value in changes.items():
                    encoded = None if value is None else self.stage.encode_state(value)
                    sizes[key] = len(key) + len(encoded or b"")
                    await tx.send(self.changelog_topic, encoded, key=key, partition=tp.partition)
            await tx.flush()
            await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, self.group_id)
            await producer.commit_transaction()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            refused = None if poison is not None else refusal(exc)
            if refused is None:
                # The outcome may be unknown (a commit that timed out may have landed): start the
                # partition over from what Kafka says was committed, with a fresh, fencing producer.
                log.exception(
                    "%s: batch on partition %d failed; re-taking the partition", self.stage.name, tp.partition
                )
                await self._retake(tp, owned)
                return False
            # An output of some input is refused: nothing of this batch is committed. Go back to its
            # first record and take the inputs one per transaction until past its last one.
            careful = self._careful.setdefault(tp.partition, _Careful(records[-1].offset))
            careful.until = max(careful.until, records[-1].offset)
            if len(records) == 1:
                careful.poison[records[0].offset] = refused
            log.warning(
                "%s: partition %d offsets %d..%d: %s; processing them one per transaction",
                self.stage.name,
                tp.partition,
                records[0].offset,
                records[-1].offset,
                refused,
            )
            await self._rewind(tp, owned, tx, records[0].offset, clean=not refused.by_broker)
            return False
        for key, value in changes.items():
            owned.apply(key, value, sizes[key])
        self.batches += 1
        metrics.STAGE_BATCHES.labels(self.stage.name).inc()
        metrics.STAGE_BATCH_SIZE.labels(self.stage.name).observe(len(records))
        self._state_metrics()
        return True

    async def _rewind(
        self, tp: TopicPartition, owned: _Owned[S], tx: Tx, offset: int, *, clean: bool
    ) -> None:
        """Abort the open transaction and fetch again from ``offset``; re-take if that is not safe."""
        if clean and self._consumer is not None:
            try:
                await tx.settle()
                await owned.producer.abort_transaction()
                self._consumer.seek(tp, offset)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: abort on partition %d failed; re-taking it", self.stage.name, tp.partition)
        await self._retake(tp, owned)

    async def _retake(self, tp: TopicPartition, owned: _Owned[S]) -> None:
        self._owned.pop(tp.partition, None)
        with contextlib.suppress(Exception):
            await owned.producer.stop()
        await asyncio.sleep(0.5)
        if self._consumer is not None and tp in self._consumer.assignment():
            await self._take(tp)

    def _state_metrics(self) -> None:
        name = self.stage.name
        metrics.STATE_KEYS.labels(name).set(sum(len(o.state) for o in self._owned.values()))
        metrics.STATE_BYTES.labels(name).set(sum(o.state_bytes for o in self._owned.values()))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: StageRunner[Any]) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.runner._revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self.runner._assigned(assigned)
