"""A transaction's records in record batches: one aiokafka ``BatchBuilder`` (its C record builder)
per topic partition, handed to the producer whole.

Per record that costs about a microsecond, where ``producer.send`` (a coroutine, a future, a
partitioner call and an accumulator lookup per record) cost ten times more: it was a tenth of a
stage's CPU and the largest part of writing a 100-item request. The stage runtime's transactions
(:class:`pipeline.stream.runtime.Tx`) and the ingest's group commit
(:class:`pipeline.kafka.io.TransactionalWriter`) both write through it. Order within a partition is
the order of :meth:`RecordBatches.append`; a batch that fills up is handed over at once.

Offsets of partitions only this producer writes can be *predicted* (the caller learnt them from its
own committed transactions, :meth:`RecordBatches.next_offsets`): their records' offsets are known at
once, without a round trip, and :meth:`RecordBatches.verify` holds them to the broker's before the
commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.structs import RecordMetadata

__all__ = ["Batch", "BatchProducer", "Mispredicted", "RecordBatches", "Sent"]


class BatchProducer(Protocol):
    """What the batches need of a producer (aiokafka's, or a fake)."""

    _metadata: Any  # partitions_for_topic: a topic's partitions, as far as the producer knows them
    client: Any  # _wait_on_metadata: ask the broker for a topic the producer does not know yet

    def create_batch(self) -> Any:
        """An empty record batch (``BatchBuilder``: ``append(timestamp=, key=, value=, headers=)``
        returns None once full, ``close()``)."""
        ...

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[RecordMetadata]:
        """Queue a whole batch in the open transaction; the future gives its base offset."""
        ...


class Batch:
    """One record batch being filled for a topic partition."""

    __slots__ = ("builder", "count", "predicted", "sent", "tp")

    def __init__(self, tp: TopicPartition, builder: Any, predicted: int | None = None) -> None:
        self.tp = tp
        self.builder = builder
        self.count = 0
        self.sent: asyncio.Future[RecordMetadata] | None = None
        self.predicted = predicted  # the base offset the caller expects, if it predicts this partition


class Sent:
    """Where one record landed: known once the records are flushed, or at once where the partition's
    offsets are predicted (:meth:`RecordBatches.offsets`)."""

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: Batch, index: int) -> None:
        self._batch = batch
        self._index = index

    def result(self) -> RecordMetadata:
        """The record's topic, partition and offset (after :meth:`RecordBatches.offsets`; raises before)."""
        batch = self._batch
        base = batch.sent
        if base is None or not base.done():
            if batch.predicted is None:
                raise RuntimeError("the record is not flushed yet")
            tp = batch.tp  # predicted: checked against the broker's offsets before the commit
            return RecordMetadata(tp.topic, tp.partition, tp, batch.predicted + self._index, -1, -1, -1)
        meta = base.result()
        return RecordMetadata(
            meta.topic, meta.partition, meta.topic_partition, meta.offset + self._index, -1, -1, -1
        )


class Mispredicted(Exception):
    """A predicted offset was not the one the broker gave: the transaction must not commit."""


class RecordBatches:
    """The record batches of one transaction (see the module's docstring)."""

    def __init__(
        self, producer: BatchProducer, predicted: Mapping[TopicPartition, int] | None = None
    ) -> None:
        self._producer = producer
        self._open: dict[tuple[str, int], Batch] = {}
        self._handed: list[Batch] = []
        self._next = dict(predicted or {})
        self._predicted: list[Batch] = []  # every batch sent with a prediction
        self._written: list[Batch] = []  # every batch handed to the producer
        self._partitions: dict[str, int] = {}  # partition counts, read once per transaction

    async def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has (0 if the broker does not know it); the producer asks
        the broker the first time it meets the topic."""
        n = self._partitions.get(topic)
        if n is None:
            n = len(self._producer._metadata.partitions_for_topic(topic) or ())
            if n == 0:
                await self._producer.client._wait_on_metadata(topic)
                n = len(self._producer._metadata.partitions_for_topic(topic) or ())
            if n:
                self._partitions[topic] = n
        return n

    async def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Sent:
        """Add a record to ``partition`` of ``topic``; where it lands is known after :meth:`offsets`."""
        slot = (topic, partition)
        batch = self._open.get(slot)
        if batch is None:
            batch = self._open[slot] = self._batch(TopicPartition(topic, partition))
        if batch.builder.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
            await self._hand_over(batch)  # full: send it, start the next one (the first always fits)
            batch = self._open[slot] = self._batch(batch.tp)
            batch.builder.append(timestamp=None, key=key, value=value, headers=headers or [])
        index = batch.count
        batch.count = index + 1
        return Sent(batch, index)

    def _batch(self, tp: TopicPartition) -> Batch:
        predicted = self._next.get(tp)
        batch = Batch(tp, self._producer.create_batch(), predicted)
        if predicted is not None:
            self._predicted.append(batch)
        return batch

    async def _hand_over(self, batch: Batch) -> None:
        if batch.predicted is not None:  # the next batch of the partition starts after this one
            self._next[batch.tp] = batch.predicted + batch.count
        batch.builder.close()  # closed: the producer sends it without waiting for its linger
        batch.sent = await self._producer.send_batch(
            batch.builder, batch.tp.topic, partition=batch.tp.partition
        )
        self._handed.append(batch)
        self._written.append(batch)

    async def hand_over(self) -> None:
        """Hand every open batch to the producer (they go out at once; nothing waits for them)."""
        for batch in list(self._open.values()):
            await self._hand_over(batch)
        self._open.clear()

    async def flush(self) -> None:
        """Hand every open batch to the producer and wait until the broker has them all."""
        await self.hand_over()
        if self._handed:
            await asyncio.gather(*(b.sent for b in self._handed if b.sent is not None))
            self._handed.clear()

    async def offsets(self) -> None:
        """Make the offset of every record appended so far known (``Sent.result``): at once if all
        their partitions are predicted, else by a flush (a round trip to the broker)."""
        if any(b.predicted is None for b in self._open.values()) or any(
            b.predicted is None for b in self._handed
        ):
            await self.flush()

    def verify(self) -> None:
        """After the last flush: raise :class:`Mispredicted` if the broker gave any predicted batch
        another base offset (someone else wrote the partition), so the transaction is not committed."""
        for batch in self._predicted:
            meta = batch.sent.result() if batch.sent is not None and batch.sent.done() else None
            if meta is None or meta.offset != batch.predicted:
                raise Mispredicted(
                    f"{batch.tp.topic}[{batch.tp.partition}]: predicted offset {batch.predicted}, "
                    f"the broker gave {None if meta is None else meta.offset}"
                )

    def next_offsets(self, topics: frozenset[str]) -> dict[TopicPartition, int]:
        """After the commit: the next offset of each partition of ``topics`` written here (its last
        record + 1, + 1 for the commit marker the broker writes after it)."""
        out: dict[TopicPartition, int] = {}
        for batch in self._written:
            if batch.tp.topic in topics and batch.sent is not None and batch.sent.done():
                end = batch.sent.result().offset + batch.count + 1
                out[batch.tp] = max(end, out.get(batch.tp, 0))
        return out

    async def settle(self) -> None:
        """Wait for every batch handed over, whatever became of it (before an abort); drop the rest."""
        self._open.clear()
        if self._handed:
            await asyncio.gather(
                *(b.sent for b in self._handed if b.sent is not None), return_exceptions=True
            )
            self._handed.clear()
