"""The consumer shell every stage of the worker shares: partitions taken, restored, polled, dropped.

A :class:`PartitionRunner` owns one consumer in its own group and does, for any sink or stage:

* **assignment** (the rebalance callback) only records the new partitions and pauses them; the
  poll loop then *opens* each (a task per partition: fence, restore state, read the committed
  offset, as the subclass defines), seeks there and resumes it. Other partitions keep flowing
  while one restores, and a revocation during a restore cancels it (quixstreams'
  ``RecoveryManager`` does the same: restore in the loop, never in the callback);
* **revocation** waits for the batches in flight to commit or abort, cancels restores, closes
  what the subclass holds for the partition;
* **pipelining** (the exactly-once stages): each partition's batch is a task of its own, and a
  partition is polled again as soon as its own batch is over, not when the slowest partition's is
  (its own producer and transaction make them independent);
* **offset continuity**: before each poll the consumer's position of every owned partition must be
  where this runner left it (the committed offset after an open or a seek, the position after the
  last committed batch). A partition found elsewhere (records skipped or replayed: an offset reset,
  a stray seek) is not processed: it is sought back to its committed offset, counted
  (``feedstream_stage_offset_gaps_total``) and logged;
* **backoff**: a partition may be paused until a time (a transient error's retry) or re-opened
  after a delay (an unknown outcome), without stalling the others.

Subclasses define :meth:`_open`, :meth:`_close` and :meth:`_process`; the store stage commits rows and
offsets in one database transaction, the exactly-once stages one Kafka transaction per partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter

from pipeline import metrics
from pipeline.kafka.batches import BatchProducer
from pipeline.kafka.io import MAX_REQUEST_BYTES, bootstrap_list

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord  # bytes key and value
H = TypeVar("H")

OFFSET_GAPS = Counter(
    "feedstream_stage_offset_gaps_total",
    "Fetches not processed because the consumer was not where the stage left it (records skipped or "
    "replayed); the partition was sought back to its committed offset.",
    ["stage"],
)


# -- what the shell needs of Kafka (aiokafka in production, fakes in unit tests) ------------------


class Consumer(Protocol):
    """The part of ``AIOKafkaConsumer`` the runners use."""

    def subscribe(self, topics: Sequence[str], listener: ConsumerRebalanceListener) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def assignment(self) -> set[TopicPartition]: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    async def position(self, partition: TopicPartition) -> int: ...
    def last_stable_offset(self, partition: TopicPartition) -> int | None: ...
    async def committed(self, partition: TopicPartition) -> int | None: ...
    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...
    async def beginning_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]: ...
    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]: ...


class Producer(BatchProducer, Protocol):
    """The part of a transactional ``AIOKafkaProducer`` the stage runtime uses (with the record
    batches' ``create_batch`` and ``send_batch``)."""

    _metadata: Any  # partitions_for_topic: the default partitioner needs the partition count
    client: Any  # _wait_on_metadata: a topic's partitions before its first record

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def begin_transaction(self) -> None: ...
    async def commit_transaction(self) -> None: ...
    async def abort_transaction(self) -> None: ...


class Clients(Protocol):
    """Makes the Kafka clients of a runner; :class:`KafkaClients` is the real one."""

    def consumer(self, group_id: str, client_id: str, **options: Any) -> Consumer: ...
    def producer(self, transactional_id: str) -> Producer: ...
    def changelog(self, tp: TopicPartition) -> AsyncIterator[list[Record]]:
        """The committed records of ``tp`` from its beginning up to its end when called, in batches."""
        ...


class KafkaClients:
    """aiokafka clients on ``bootstrap``, configured as every stage of the worker needs them."""

    def __init__(self, bootstrap: str, *, poll_ms: int = 50) -> None:
        self.bootstrap = bootstrap
        self.poll_ms = poll_ms

    def consumer(self, group_id: str, client_id: str, **options: Any) -> Consumer:
        consumer: Consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_list(self.bootstrap),
            group_id=group_id,
            client_id=client_id,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # aiokafka keeps one fetch in flight per broker: while it long-polls for partitions
            # without data, records arriving for the others wait for it to return. Short (the
            # stages' 10 ms) keeps that wait off the latency; idle, it costs ~100 small fetches/s.
            fetch_max_wait_ms=self.poll_ms,
            session_timeout_ms=6_000,
            heartbeat_interval_ms=1_000,
            max_poll_interval_ms=120_000,
            **options,
        )
        return consumer

    def producer(self, transactional_id: str) -> Producer:
        producer: Producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_list(self.bootstrap),
            transactional_id=transactional_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
            max_batch_size=256 * 1024,
            max_request_size=MAX_REQUEST_BYTES,
            transaction_timeout_ms=30_000,
            # AddOffsetsToTxn and EndTxn answered CONCURRENT_TRANSACTIONS (the last transaction's
            # markers still being written) are retried after this, not aiokafka's 100 ms; adding a
            # partition uses pipeline.kafka.TXN_RETRY_BACKOFF_S
            retry_backoff_ms=20,
        )
        return producer

    async def changelog(self, tp: TopicPartition) -> AsyncIterator[list[Record]]:
        reader = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_list(self.bootstrap),
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            group_id=None,
        )
        await reader.start()
        try:
            reader.assign([tp])
            end = (await reader.end_offsets([tp]))[tp]
            # explicit seek: aiokafka's seek_to_beginning can lose to the initial offset reset
            reader.seek(tp, (await reader.beginning_offsets([tp]))[tp])
            while await reader.position(tp) < end:
                batch = await reader.getmany(tp, timeout_ms=500, max_records=5000)
                yield batch.get(tp, [])
        finally:
            await reader.stop()


# -- the shell --------------------------------------------------------------------------------------


@dataclass
class Place:
    """Where a partition stands: its committed offset, and where the consumer must be next."""

    committed: int
    expected: int


@dataclass
class Backoff:
    """Bounded exponential backoff: ``base`` doubled per attempt up to ``cap``, ``attempts`` tries."""

    base: float = 0.1
    cap: float = 5.0
    attempts: int = 6

    def delay(self, attempt: int) -> float:
        return float(min(self.cap, self.base * 2 ** max(0, attempt - 1)))


class PartitionRunner(ABC, Generic[H]):
    """One consumer, its group's share of ``topics``, a handle ``H`` per owned partition."""

    name: str
    #: Each partition's batch runs as its own task and the partition is polled again as soon as its
    #: batch is over, without waiting for the other partitions' (subclasses that set it define
    #: :meth:`_process_partition`). Off: one :meth:`_process` over everything polled.
    pipelined: bool = False

    def __init__(
        self,
        *,
        clients: Clients,
        group_id: str,
        topics: Sequence[str],
        max_batch: int = 500,
        poll_ms: int = 50,
        backoff: Backoff | None = None,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.clients = clients
        self.group_id = group_id
        self.topics = list(topics)
        self.max_batch = max_batch
        self.poll_ms = poll_ms
        self.backoff = backoff or Backoff()
        self._consumer_options = dict(consumer_options or {})
        self._owned: dict[TopicPartition, H] = {}
        self._places: dict[TopicPartition, Place] = {}
        self._opening: dict[TopicPartition, asyncio.Task[tuple[H, int]] | None] = {}
        self._not_before: dict[TopicPartition, float] = {}  # opening or resuming waits until then
        self._paused: set[TopicPartition] = set()  # owned, paused for a backoff
        self._attempts: dict[TopicPartition, int] = {}
        self._closing: list[tuple[TopicPartition, H]] = []  # handles let go under the lock, closed after
        self._lock = asyncio.Lock()
        self._inflight: dict[TopicPartition, asyncio.Task[None]] = {}  # pipelined batches under way
        self._revoking: set[TopicPartition] = set()
        self._consumer: Consumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.batches = 0

    @property
    def consumer(self) -> Consumer:
        assert self._consumer is not None, "not started"
        return self._consumer

    @property
    def partitions(self) -> list[int]:
        return sorted({tp.partition for tp in self._owned if tp.topic == self.topics[0]})

    # -- what a subclass defines --------------------------------------------------------------------

    @abstractmethod
    async def _open(self, tp: TopicPartition) -> tuple[H, int]:
        """Take ``tp``: whatever it needs (fencing, restored state) and the offset to start from."""

    @abstractmethod
    async def _close(self, tp: TopicPartition, handle: H) -> None:
        """Let ``tp`` go (revoked, dropped or about to be re-opened); must not raise."""

    async def _process(self, fetched: dict[TopicPartition, tuple[list[Record], int]]) -> None:
        """Records of owned partitions (each with the consumer's position after them), under the lock
        (runners that are not pipelined define it)."""
        raise NotImplementedError

    async def _process_partition(self, tp: TopicPartition, records: list[Record], after: int) -> None:
        """One partition's records; the consumer stands at ``after`` after them (pipelined runners
        define it)."""
        raise NotImplementedError

    async def _idle(self) -> None:
        """A poll found nothing."""

    # -- lifecycle ----------------------------------------------------------------------------------

    def attach(self) -> Consumer:
        """Make the consumer and subscribe (``start`` does this; tests drive :meth:`step` after it)."""
        self._consumer = self.clients.consumer(
            self.group_id, f"{self.group_id}-{self.name}", **self._consumer_options
        )
        self._consumer.subscribe(self.topics, listener=_Listener(self))
        return self._consumer

    async def start(self) -> None:
        await self.attach().start()
        self._task = asyncio.create_task(self._run(), name=f"stage-{self.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in self._inflight.values():
            task.cancel()  # an open transaction is aborted by the next owner's fencing
        await self.drain()
        async with self._lock:
            for tp in list(self._opening):
                await self._cancel_open(tp)
            for tp in list(self._owned):
                await self._close(tp, self._owned.pop(tp))
        if self._consumer:
            await self._consumer.stop()

    # -- rebalance callbacks: record and pause only ------------------------------------------------

    async def _assigned(self, tps: Sequence[TopicPartition]) -> None:
        for tp in tps:
            if tp not in self._owned and tp not in self._opening:
                self._opening[tp] = None
        if self._opening:
            self.consumer.pause(*self._opening)
        else:
            self.ready.set()

    async def _revoked(self, tps: Sequence[TopicPartition]) -> None:
        self._revoking.update(tps)  # no new batch starts for them
        try:
            await self.drain(tps)  # the batches in flight commit or abort
            await self._handing_over(tps)
            async with self._lock:
                await self._let_go(tps)
        finally:
            self._revoking.difference_update(tps)

    async def _handing_over(self, tps: Sequence[TopicPartition]) -> None:
        """``tps`` are going to another member, their batches over (runners may say where they stand)."""

    async def drain(self, tps: Sequence[TopicPartition] | None = None) -> None:
        """Wait until the pipelined batches of ``tps`` (default: all) are over."""
        tasks = [t for tp, t in self._inflight.items() if tps is None or tp in tps]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._reap()

    def _reap(self) -> None:
        for tp, task in list(self._inflight.items()):
            if task.done():
                del self._inflight[tp]

    async def _let_go(self, tps: Sequence[TopicPartition]) -> None:
        for tp in tps:
            await self._cancel_open(tp)
            self._forget(tp)
            handle = self._owned.pop(tp, None)
            if handle is not None:
                await self._close(tp, handle)
                log.info("%s: %s[%d] revoked", self.name, tp.topic, tp.partition)

    def _forget(self, tp: TopicPartition) -> None:
        """Drop every runtime note about ``tp`` (subclasses extend)."""
        self._places.pop(tp, None)
        with contextlib.suppress(KeyError):  # its new owner reports it
            metrics.CONSUMER_LAG.remove(self.name, tp.topic, str(tp.partition))
        self._not_before.pop(tp, None)
        self._paused.discard(tp)
        self._attempts.pop(tp, None)

    async def _cancel_open(self, tp: TopicPartition) -> None:
        task = self._opening.pop(tp, None)
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        if task.done() and not task.cancelled() and task.exception() is None:
            handle, _ = task.result()  # it finished before the cancel landed: let it go
            await self._close(tp, handle)
        log.info("%s: %s[%d] revoked while being restored", self.name, tp.topic, tp.partition)

    # -- what subclasses call -------------------------------------------------------------------------

    def reopen(self, tp: TopicPartition, *, delay: float = 0.0) -> None:
        """Take ``tp`` again from scratch after ``delay`` (a fresh open: fencing, restore, committed
        offset), paused until then; its handle is closed once the batch in flight is over."""
        handle = self._owned.pop(tp, None)
        self._places.pop(tp, None)
        self._paused.discard(tp)
        if tp in self.consumer.assignment():
            self.consumer.pause(tp)
            self._opening[tp] = None
            self._not_before[tp] = time.monotonic() + delay
        if handle is not None:
            self._closing.append((tp, handle))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Fetch ``tp`` again from ``offset`` (the next continuity check expects it there)."""
        self.consumer.seek(tp, offset)
        place = self._places.get(tp)
        if place is not None:
            place.expected = offset

    def committed(self, tp: TopicPartition, next_offset: int, position: int | None = None) -> None:
        """``tp`` committed up to ``next_offset``; the consumer stands at ``position`` (default: there)."""
        place = self._places.get(tp)
        if place is not None:
            place.committed = next_offset
            place.expected = next_offset if position is None else position
            self._report_lag(tp, place.expected)
        self._attempts.pop(tp, None)

    def _report_lag(self, tp: TopicPartition, at: int, assigned: set[TopicPartition] | None = None) -> None:
        """``feedstream_consumer_lag``: the partition's end as the last fetch saw it (read_committed:
        the last stable offset) minus ``at``. Costs no request. ``assigned``: the consumer's
        assignment, when the caller has it at hand."""
        if tp not in (self.consumer.assignment() if assigned is None else assigned):
            return  # aiokafka asserts on a partition not assigned
        end = self.consumer.last_stable_offset(tp)
        if end is not None and end >= 0:
            metrics.CONSUMER_LAG.labels(self.name, tp.topic, str(tp.partition)).set(max(0, end - at))

    def retry_later(self, tp: TopicPartition) -> bool:
        """Seek ``tp`` back to its committed offset and pause it for the next backoff delay; False when
        the attempts are used up (then the caller re-opens it)."""
        attempt = self._attempts.get(tp, 0) + 1
        place = self._places.get(tp)
        if place is None or attempt > self.backoff.attempts:
            self._attempts.pop(tp, None)
            return False
        self._attempts[tp] = attempt
        self.seek(tp, place.committed)
        self.consumer.pause(tp)
        self._paused.add(tp)
        self._not_before[tp] = time.monotonic() + self.backoff.delay(attempt)
        return True

    def drop(self, tp: TopicPartition, *, grace: float) -> None:
        """Stop working on ``tp`` (another owner has it): paused until the rebalance takes it away, or
        re-opened after ``grace`` seconds if it is still ours then (e.g. fenced by a timeout)."""
        self.reopen(tp, delay=grace)

    # -- the loop ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: processing loop error; retrying", self.name)
                await asyncio.sleep(1.0)

    async def step(self) -> None:
        """One turn of the loop: close, open and resume partitions as due, poll, check, process."""
        consumer = self.consumer
        self._reap()
        await self._flush_closing()
        self._start_opens()
        await self._finish_opens()
        self._resume_due()
        assigned = consumer.assignment()
        busy = set(self._inflight) | self._revoking
        active = [tp for tp in self._owned if tp not in self._paused and tp in assigned and tp not in busy]
        for tp, held in self._places.items():  # a batch under way or backing off: lag from its commit
            if tp not in active and tp in self._owned:
                self._report_lag(tp, held.committed, assigned)
        if busy and not active:  # every partition has a batch under way or is being let go
            if self._inflight:
                await asyncio.wait(list(self._inflight.values()), timeout=self.poll_ms / 1000)
            else:
                await asyncio.sleep(self.poll_ms / 1000)
            return
        before: dict[TopicPartition, int] = {}
        for tp in active:
            with contextlib.suppress(IllegalStateError):  # revoked meanwhile: its fetch is dropped
                before[tp] = await consumer.position(tp)
        fetched = await consumer.getmany(
            *(active if busy else ()),  # not the partitions whose batch is under way
            timeout_ms=self.poll_ms,
            max_records=self.max_batch * max(1, len(active)),
        )
        fetched = {tp: records for tp, records in fetched.items() if records}
        for tp in active:  # what the fetch found nothing for stands where it is: that is its lag
            if tp not in fetched and tp in self._places:
                with contextlib.suppress(IllegalStateError):  # (each after an await: asked afresh)
                    self._report_lag(tp, await consumer.position(tp))
        if not fetched:
            await self._idle()
            return
        after: dict[TopicPartition, int] = {}
        for tp in list(fetched):
            try:
                after[tp] = await consumer.position(tp)
            except IllegalStateError:  # revoked meanwhile
                del fetched[tp]
        async with self._lock:
            work: dict[TopicPartition, tuple[list[Record], int]] = {}
            for tp, records in fetched.items():
                place = self._places.get(tp)
                if (
                    tp not in self._owned
                    or place is None
                    or tp in self._paused
                    or tp not in before
                    or tp in self._revoking
                    or tp in self._inflight
                ):
                    continue  # revoked, dropped or paused while the fetch was in flight
                if before.get(tp) != place.expected:
                    self._gap(tp, place, before.get(tp), records)
                    continue
                work[tp] = (records, after[tp])
            if work and self.pipelined:
                for tp, (records, after_tp) in work.items():
                    self._inflight[tp] = asyncio.create_task(
                        self._run_partition(tp, records, after_tp), name=f"{self.name}-{tp.partition}"
                    )
            elif work:
                await self._process(work)
        await self._flush_closing()

    async def _run_partition(self, tp: TopicPartition, records: list[Record], after: int) -> None:
        try:
            await self._process_partition(tp, records, after)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug, not a Kafka error (those are handled per class): start the partition over
            log.exception(
                "%s: %s[%d] batch failed; re-taking the partition", self.name, tp.topic, tp.partition
            )
            self.reopen(tp, delay=1.0)

    def _gap(self, tp: TopicPartition, place: Place, found: int | None, records: list[Record]) -> None:
        OFFSET_GAPS.labels(self.name).inc()
        log.warning(
            "%s: %s[%d] fetched %d..%d from position %s, not %d (records %s): not processed; seeking "
            "back to the committed offset %d",
            self.name,
            tp.topic,
            tp.partition,
            records[0].offset,
            records[-1].offset,
            found,
            place.expected,
            "replayed" if found is not None and found < place.expected else "skipped",
            place.committed,
        )
        self.seek(tp, place.committed)

    async def _flush_closing(self) -> None:
        later = []
        while self._closing:
            tp, handle = self._closing.pop()
            task = self._inflight.get(tp)
            if task is not None and not task.done():
                later.append((tp, handle))  # its batch is still using it
                continue
            await self._close(tp, handle)
        self._closing.extend(later)

    def _start_opens(self) -> None:
        now = time.monotonic()
        for tp, task in list(self._opening.items()):
            if task is None and self._not_before.get(tp, 0.0) <= now:
                self._not_before.pop(tp, None)
                self._opening[tp] = asyncio.create_task(
                    self._open(tp), name=f"open-{self.name}-{tp.partition}"
                )

    async def _finish_opens(self) -> None:
        done = [tp for tp, task in self._opening.items() if task is not None and task.done()]
        if not done:
            return
        async with self._lock:
            for tp in done:
                task = self._opening.get(tp)
                if task is None or not task.done():
                    continue  # revoked (and cancelled) meanwhile
                del self._opening[tp]
                error = None if task.cancelled() else task.exception()
                if task.cancelled() or error is not None:
                    log.error(
                        "%s: opening %s[%d] failed: %r; trying again",
                        self.name,
                        tp.topic,
                        tp.partition,
                        error,
                    )
                    if tp in self.consumer.assignment():
                        self._opening[tp] = None
                        self._not_before[tp] = time.monotonic() + 1.0
                    continue
                handle, offset = task.result()
                if tp not in self.consumer.assignment():
                    await self._close(tp, handle)
                    continue
                self._owned[tp] = handle
                self._places[tp] = Place(committed=offset, expected=offset)
                self.consumer.seek(tp, offset)
                self.consumer.resume(tp)
                log.info("%s: %s[%d] taken at offset %d", self.name, tp.topic, tp.partition, offset)
        if not self._opening:
            self.ready.set()

    def _resume_due(self) -> None:
        now = time.monotonic()
        due = [tp for tp in self._paused if self._not_before.get(tp, 0.0) <= now]
        for tp in due:
            self._paused.discard(tp)
            self._not_before.pop(tp, None)
        if due:
            self.consumer.resume(*due)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: PartitionRunner[Any]) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.runner._revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self.runner._assigned(assigned)
