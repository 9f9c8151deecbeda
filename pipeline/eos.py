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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.partitioner import murmur2
from aiokafka.structs import ConsumerRecord, RecordMetadata

from pipeline import metrics
from pipeline.kafka_io import MAX_REQUEST_BYTES, bootstrap_list

log = logging.getLogger(__name__)

S = TypeVar("S")
Record: TypeAlias = ConsumerRecord  # bytes key and value


@functools.lru_cache(maxsize=65_536)
def key_partition(key: bytes, partitions: int) -> int | None:
    """Kafka's default partition of a key (murmur2, as Java and aiokafka), cached: keys repeat a lot."""
    if partitions == 0:
        return None  # metadata not known yet: let the producer wait for it and partition
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class Tx:
    """What a stage may do inside the transaction of one batch."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._pending: list[asyncio.Future[RecordMetadata]] = []

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        """Queue a record in the transaction; await the returned future for its offset."""
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
        max_batch: int = 500,
        poll_ms: int = 50,
    ) -> None:
        self.stage = stage
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
            state = await self._restore(tp.partition)
            committed = await consumer.committed(tp)  # final: nobody else can commit for it now
        except BaseException:
            await producer.stop()
            raise
        if committed is None:
            committed = (await consumer.beginning_offsets([tp]))[tp]
        consumer.seek(tp, committed)
        self._owned[tp.partition] = _Owned(producer, state)
        log.info(
            "%s: partition %d taken at offset %s with %d state keys",
            self.stage.name,
            tp.partition,
            committed,
            len(state),
        )

    async def _revoked(self, tps: Sequence[TopicPartition]) -> None:
        async with self._lock:  # waits for the batch in flight to commit
            for tp in tps:
                owned = self._owned.pop(tp.partition, None)
                if owned is not None:
                    with contextlib.suppress(Exception):
                        await owned.producer.stop()
                    log.info("%s: partition %d revoked", self.stage.name, tp.partition)

    async def _restore(self, partition: int) -> dict[bytes, S]:
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
        state: dict[bytes, S] = {}
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
                        state.pop(rec.key, None)
                    else:
                        state[rec.key] = self.stage.decode_state(rec.value)
        finally:
            await reader.stop()
        return state

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
        """One transaction for one partition's batch (the caller holds the rebalance lock)."""
        owned = self._owned.get(tp.partition)
        if owned is None:
            # Revoked while the batch was in our hands (the new owner redoes it), or a failed
            # batch left it un-owned: take it again, which seeks back to the committed offset.
            if self._consumer is not None and tp in self._consumer.assignment():
                await self._take(tp)
            return
        producer = owned.producer
        try:
            await producer.begin_transaction()
            tx = Tx(producer)
            changes = await self.stage.process(tp.partition, records, owned.state, tx)
            for key, value in changes.items():
                encoded = None if value is None else self.stage.encode_state(value)
                await tx.send(self.changelog_topic, encoded, key=key, partition=tp.partition)
            await tx.flush()
            await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, self.group_id)
            await producer.commit_transaction()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The outcome may be unknown (a commit that timed out may have landed): start the
            # partition over from what Kafka says was committed, with a fresh, fencing producer.
            log.exception(
                "%s: batch on partition %d failed; re-taking the partition", self.stage.name, tp.partition
            )
            self._owned.pop(tp.partition, None)
            with contextlib.suppress(Exception):
                await producer.stop()
            await asyncio.sleep(0.5)
            if self._consumer is not None and tp in self._consumer.assignment():
                await self._take(tp)
            return
        for key, value in changes.items():
            if value is None:
                owned.state.pop(key, None)
            else:
                owned.state[key] = value
        self.batches += 1
        metrics.STAGE_BATCHES.labels(self.stage.name).inc()
        metrics.STAGE_BATCH_SIZE.labels(self.stage.name).observe(len(records))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: StageRunner[Any]) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.runner._revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self.runner._assigned(assigned)
