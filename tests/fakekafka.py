"""An in-memory Kafka for the stage runtime's unit tests: transactional producers with fencing,
read_committed consumers with control markers, group offsets, rebalances and injected faults.

Only what :mod:`pipeline.stream.partitions` asks of aiokafka (its ``Consumer``, ``Producer`` and
``Clients`` protocols). A committed transaction appends its records and then a control marker
(an offset with no record), as Kafka does, so offsets have the gaps a real read_committed
consumer sees.
"""

from __future__ import annotations

import asyncio
import collections
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ProducerFenced
from aiokafka.structs import ConsumerRecord, RecordMetadata

from pipeline.stream.partitions import Consumer, Producer, Record

#: Record headers, as aiokafka gives them to consumers (a sequence of name and bytes).
Headers = Sequence[tuple[str, bytes]]
#: A record waiting in an open transaction: where, key, value, headers.
_Buffered = tuple[TopicPartition, bytes | None, bytes | None, Headers]


@dataclass
class Cluster:
    """Topics (committed records; None is a control marker), group offsets, producer epochs, faults."""

    partitions: dict[str, int] = field(default_factory=dict)  # topic -> partitions (default 1)
    logs: dict[TopicPartition, list[Record | None]] = field(default_factory=lambda: defaultdict(list))
    offsets: dict[tuple[str, TopicPartition], int] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: operation name ("begin", "send", "commit", "commit_landed", "abort", "group_commit") -> errors to raise
    faults: dict[str, list[BaseException]] = field(default_factory=lambda: defaultdict(list))
    calls: list[tuple[str, str]] = field(default_factory=list)  # (transactional id, operation)
    changelog_gate: asyncio.Event | None = None  # set: restores may read; unset: they wait

    def append(
        self, tp: TopicPartition, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> int:
        log = self.logs[tp]
        log.append(
            ConsumerRecord(tp.topic, tp.partition, len(log), 0, 0, key, value, None, 0, 0, tuple(headers))
        )
        return len(log) - 1

    def produce(
        self,
        topic: str,
        values: Sequence[bytes],
        *,
        partition: int = 0,
        key: bytes = b"k",
        headers: Headers = (),
    ) -> None:
        """``values`` in one committed transaction (records, then a marker)."""
        tp = TopicPartition(topic, partition)
        for value in values:
            self.append(tp, key, value, headers)
        self.logs[tp].append(None)

    def records(self, topic: str, partition: int = 0) -> list[Record]:
        return [r for r in self.logs[TopicPartition(topic, partition)] if r is not None]

    def values(self, topic: str, partition: int = 0) -> list[bytes | None]:
        return [r.value for r in self.records(topic, partition)]

    def fault(self, op: str) -> BaseException | None:
        queued = self.faults.get(op)
        return queued.pop(0) if queued else None


class _Meta:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.cluster.partitions.get(topic, 1)))


class FakeBatch:
    """A record batch being filled (aiokafka's ``BatchBuilder``: full after ``max_records``)."""

    def __init__(self, max_records: int = 64) -> None:
        self.records: list[tuple[bytes | None, bytes | None, Headers]] = []
        self.max_records = max_records
        self.closed = False

    def append(
        self, *, timestamp: float | None, key: bytes | None, value: bytes | None, headers: list[Any]
    ) -> object | None:
        if not isinstance(headers, list):  # aiokafka's C builder takes a list only
            raise TypeError(
                f"Argument 'headers' has incorrect type (expected list, got {type(headers).__name__})"
            )
        if self.closed or len(self.records) >= self.max_records:
            self.closed = True
            return None
        self.records.append((key, value, tuple(headers)))
        return object()

    def close(self) -> None:
        self.closed = True


class _Client:
    async def _wait_on_metadata(self, topic: str) -> None:
        return None


class FakeProducer:
    """A transactional producer: ``start`` fences every older producer of its transactional id."""

    def __init__(self, cluster: Cluster, transactional_id: str) -> None:
        self.cluster = cluster
        self.tid = transactional_id
        self.epoch = -1
        self.stopped = False
        self._metadata = _Meta(cluster)
        self.client = _Client()
        self._buffer: list[_Buffered] = []
        self._pending: collections.Counter[TopicPartition] = collections.Counter()  # buffered per partition

    def _check(self, op: str) -> None:
        self.cluster.calls.append((self.tid, op))
        if self.cluster.epochs[self.tid] != self.epoch:
            raise ProducerFenced()
        error = self.cluster.fault(op)
        if error is not None:
            raise error

    async def start(self) -> None:
        self.cluster.epochs[self.tid] += 1
        self.epoch = self.cluster.epochs[self.tid]

    async def stop(self) -> None:
        self.stopped = True

    async def begin_transaction(self) -> None:
        self._check("begin")
        self._buffer.clear()
        self._pending.clear()

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        self._check("send")
        tp = TopicPartition(topic, partition or 0)
        offset = len(self.cluster.logs[tp]) + self._pending[tp]
        self._buffer.append((tp, key, value, tuple(headers or ())))
        self._pending[tp] += 1
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        fut.set_result(RecordMetadata(topic, tp.partition, tp, offset, -1, -1, -1))
        return fut

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(
        self, batch: FakeBatch, topic: str, *, partition: int
    ) -> asyncio.Future[RecordMetadata]:
        """The batch's records in order (one ``send`` fault check for the batch); the base offset."""
        self._check("send")
        tp = TopicPartition(topic, partition)
        offset = len(self.cluster.logs[tp]) + self._pending[tp]
        self._buffer.extend((tp, key, value, headers) for key, value, headers in batch.records)
        self._pending[tp] += len(batch.records)
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        fut.set_result(RecordMetadata(topic, tp.partition, tp, offset, -1, -1, -1))
        return fut

    async def commit_transaction(self) -> None:
        self._check("commit")
        touched: set[TopicPartition] = set()
        for tp, key, value, headers in self._buffer:
            self.cluster.append(tp, key, value, headers)
            touched.add(tp)
        for tp in touched:
            self.cluster.logs[tp].append(None)
        self._buffer.clear()
        self._pending.clear()
        error = self.cluster.fault("commit_landed")  # the commit landed, but its answer was lost
        if error is not None:
            raise error

    async def abort_transaction(self) -> None:
        self._check("abort")
        self._buffer.clear()
        self._pending.clear()


class FakeConsumer:
    """A group member whose assignment the test sets with :meth:`rebalance` (eager, like aiokafka)."""

    def __init__(self, cluster: Cluster, group_id: str) -> None:
        self.cluster = cluster
        self.group_id = group_id
        self.listener: ConsumerRebalanceListener | None = None
        self.assigned: set[TopicPartition] = set()
        self.paused: set[TopicPartition] = set()
        self.positions: dict[TopicPartition, int] = {}

    def subscribe(self, topics: Sequence[str], listener: ConsumerRebalanceListener) -> None:
        self.listener = listener

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.positions[partition] = offset

    async def position(self, partition: TopicPartition) -> int:
        if partition not in self.positions:
            self.positions[partition] = self.cluster.offsets.get((self.group_id, partition), 0)
        return self.positions[partition]

    async def committed(self, partition: TopicPartition) -> int | None:
        return self.cluster.offsets.get((self.group_id, partition))

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """A group offset commit outside any transaction (the runtime's, for monitoring)."""
        await asyncio.sleep(0)
        error = self.cluster.fault("group_commit")
        if error is not None:
            raise error
        for tp, offset in offsets.items():
            self.cluster.offsets[self.group_id, tp] = offset

    def last_stable_offset(self, partition: TopicPartition) -> int | None:
        """The end a fetch reports (every transaction here is committed at once: the log's end)."""
        assert partition in self.assigned, "Partition is not assigned"  # as aiokafka
        return len(self.cluster.logs[partition])

    async def beginning_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 0)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]:
        await asyncio.sleep(0)
        out: dict[TopicPartition, list[Record]] = {}
        for tp in sorted(self.assigned - self.paused):
            at = await self.position(tp)
            log = self.cluster.logs[tp]
            got: list[Record] = []
            while at < len(log) and (max_records is None or len(got) < max_records):
                rec = log[at]
                at += 1
                if rec is not None:
                    got.append(rec)
            while at < len(log) and log[at] is None:  # like aiokafka: markers after a batch are passed
                at += 1
            self.positions[tp] = at
            if got:
                out[tp] = got
        return out

    async def rebalance(self, assignment: set[TopicPartition]) -> None:
        """Revoke everything, then assign ``assignment`` (aiokafka's eager protocol)."""
        assert self.listener is not None
        revoked, self.assigned = self.assigned, set()
        await self.listener.on_partitions_revoked(revoked)
        self.assigned = set(assignment)
        self.paused &= self.assigned
        for tp in assignment:
            self.positions.pop(tp, None)
        await self.listener.on_partitions_assigned(set(assignment))


class FakeClients:
    """The runtime's clients on a :class:`Cluster`; remembers what it made."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.consumers: list[FakeConsumer] = []
        self.producers: list[FakeProducer] = []

    def consumer(self, group_id: str, client_id: str, **options: Any) -> Consumer:
        consumer = FakeConsumer(self.cluster, group_id)
        self.consumers.append(consumer)
        return consumer

    def producer(self, transactional_id: str) -> Producer:
        producer = FakeProducer(self.cluster, transactional_id)
        self.producers.append(producer)
        return producer

    async def changelog(self, tp: TopicPartition) -> AsyncIterator[list[Record]]:
        end = len(self.cluster.logs[tp])
        if self.cluster.changelog_gate is not None:
            await self.cluster.changelog_gate.wait()
        yield [r for r in self.cluster.logs[tp][:end] if r is not None]
