"""Atomic, acknowledged writes to Kafka.

A request that becomes ONE record is atomic by itself: :class:`AckedWriter` sends it through an
idempotent ``acks=all`` producer (no transaction) and answers on its acknowledgement. A request
that becomes several records (several partitions) is written in one Kafka transaction, so a
failure leaves nothing half-written (the stream reads ``read_committed``); grouping concurrent
requests into one transaction (:class:`TransactionalWriter`) keeps the cost of a commit shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidProducerEpoch, ProducerFenced
from aiokafka.structs import RecordMetadata

from pipeline.kafka.batches import RecordBatches, Sent
from pipeline.kafka.partitioner import partitioner

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8 * 1024 * 1024  # topics that take big messages say so (pipeline.kafka.topics)

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers


@dataclass(frozen=True)
class Written:
    topic: str
    partition: int
    offset: int


class PublishError(RuntimeError):
    """The broker did not acknowledge in time; nothing of the request was committed."""


#: What Kafka answers a producer whose transactional id was taken over by a newer one.
FENCING_ERRORS: tuple[type[BaseException], ...] = (ProducerFenced, InvalidProducerEpoch)


def is_fencing(exc: BaseException | None) -> bool:
    """True if ``exc`` (or what caused it) says another producer took over our transactional id."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, FENCING_ERRORS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def bootstrap_list(bootstrap: str) -> list[str]:
    return [s.strip() for s in bootstrap.split(",") if s.strip()]


class TransactionalWriter:
    """Write batches of records atomically; concurrent callers share transactions (group commit).

    ``lanes`` transactional producers take groups from one queue, so several transactions are in
    flight at once (a commit costs a few round trips; one lane would serialize them).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        transactional_id: str,
        timeout_s: float = 5.0,
        max_group: int = 2000,
        lanes: int = 4,
    ) -> None:
        """``transactional_id`` must be stable per instance: a restart then fences its own zombies."""
        self._bootstrap = bootstrap
        self._transactional_id = transactional_id
        self._timeout_s = timeout_s
        self._max_group = max_group
        self._lanes = lanes
        self._queue: asyncio.Queue[tuple[Sequence[OutRecord], asyncio.Future[list[Written]]]] = (
            asyncio.Queue()
        )
        self._producers: list[AIOKafkaProducer | None] = [None] * lanes
        self._inflight: set[asyncio.Future[list[Written]]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        #: Set (a message) once Kafka fenced us: another producer uses our transactional id. The
        #: writer then refuses every write instead of fencing it back (two ingests would take
        #: turns failing); the ingest reports itself unhealthy.
        self.fenced: str | None = None

    def _new_producer(self, lane: int) -> AIOKafkaProducer:
        tid = f"{self._transactional_id}-{lane}"
        return AIOKafkaProducer(
            partitioner=partitioner,  # Kafka's murmur2, in half aiokafka's time
            bootstrap_servers=bootstrap_list(self._bootstrap),
            client_id=tid,
            transactional_id=tid,
            enable_idempotence=True,
            acks="all",
            linger_ms=1,
            max_request_size=MAX_REQUEST_BYTES,
            request_timeout_ms=int(self._timeout_s * 1000),
            transaction_timeout_ms=self.transaction_timeout_ms,
        )

    @property
    def transaction_timeout_ms(self) -> int:
        """A group commit is abandoned after ``timeout_s`` (``_run``), so a transaction never needs
        more than that plus a margin; a dead writer's open transaction then holds back
        read_committed readers only this long (plus the broker's abort check interval)."""
        return int((self._timeout_s + 1.0) * 1000)

    async def start(self) -> None:
        for lane in range(self._lanes):
            producer = self._new_producer(lane)
            await asyncio.wait_for(producer.start(), timeout=max(self._timeout_s * 6, 30))
            self._producers[lane] = producer
        self._tasks = [
            asyncio.create_task(self._run(lane), name=f"transactional-writer-{lane}")
            for lane in range(self._lanes)
        ]

    async def stop(self, drain_s: float = 0.0) -> None:
        """Stop; with ``drain_s``, first let queued and in-flight groups commit (bounded)."""
        for _ in range(int(drain_s * 100)):  # polled: only at shutdown
            if self._queue.empty() and not self._inflight:
                break
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for producer in self._producers:
            if producer is not None:
                await producer.stop()
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(PublishError("writer stopped"))

    async def write(self, records: Sequence[OutRecord]) -> list[Written]:
        """Commit ``records`` in one transaction; raise PublishError if not done within the timeout."""
        if not records:
            return []
        if self.fenced:
            raise PublishError(self.fenced)
        fut: asyncio.Future[list[Written]] = asyncio.get_running_loop().create_future()
        await self._queue.put((records, fut))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout=self._timeout_s)
        except TimeoutError as exc:
            if fut not in self._inflight:
                # still queued: cancelled, so ``_run`` skips it and it can never be written later
                fut.cancel()
                raise PublishError(f"Kafka did not acknowledge within {self._timeout_s:g} s") from exc
        # its transaction is under way (bounded by the commit timeout): only its outcome is the truth
        return await fut

    async def _run(self, lane: int) -> None:
        while True:
            group = [await self._queue.get()]
            while not self._queue.empty() and len(group) < self._max_group:
                group.append(self._queue.get_nowait())
            group = [entry for entry in group if not entry[1].done()]  # callers that gave up
            if not group:
                continue
            self._inflight.update(fut for _, fut in group)
            try:
                results = await asyncio.wait_for(self._commit(lane, group), timeout=self._timeout_s)
            except (asyncio.CancelledError, KeyboardInterrupt):
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(PublishError("writer stopped"))
                raise
            except Exception as exc:  # anything: the whole group failed and was aborted
                if is_fencing(exc):
                    self._fenced(lane, group, exc)
                    continue
                log.warning("transaction of %d requests failed: %r", len(group), exc)
                for _, fut in group:  # answer now: recovery may last as long as the broker is away
                    if not fut.done():
                        fut.set_exception(PublishError(f"Kafka write failed: {exc!r}"))
                await self._recover(lane)
                continue
            finally:
                self._inflight.difference_update(fut for _, fut in group)
            for (_, fut), written in zip(group, results, strict=True):
                if not fut.done():
                    fut.set_result(written)

    async def _commit(
        self, lane: int, group: list[tuple[Sequence[OutRecord], asyncio.Future[list[Written]]]]
    ) -> list[list[Written]]:
        producer = self._producers[lane]
        assert producer is not None
        await producer.begin_transaction()
        try:
            batches = RecordBatches(producer)
            placed = [[await self._append(batches, r) for r in records] for records, _ in group]
            await batches.flush()
            await producer.commit_transaction()
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.abort_transaction(), timeout=self._timeout_s)
            raise
        return [[Written(m.topic, m.partition, m.offset) for m in map(Sent.result, sent)] for sent in placed]

    @staticmethod
    async def _append(batches: RecordBatches, record: OutRecord) -> Sent:
        """``record`` into the transaction's batches, in the partition ``producer.send`` would pick
        (Kafka's murmur2 of the key)."""
        every = range(await batches.partitions(record.topic))
        partition = partitioner(record.key, every, every)
        return await batches.append(record.topic, partition, record.key, record.value, record.headers)

    def _fenced(
        self,
        lane: int,
        group: list[tuple[Sequence[OutRecord], asyncio.Future[list[Written]]]],
        exc: BaseException,
    ) -> None:
        tid = f"{self._transactional_id}-{lane}"
        self.fenced = (
            f"Kafka fenced this writer: transactional id {tid!r} is used by another producer "
            "(another process with the same INGEST_INSTANCE?)"
        )
        log.error(
            "FENCED: Kafka refused transactional id %r (%r): another producer started with the same id, "
            "most likely another ingest with the same INGEST_INSTANCE. This process stops writing "
            "and answers 503 (/healthz too). Give every running ingest its own INGEST_INSTANCE "
            "(or leave it unset: the default is unique per process), then restart this one.",
            tid,
            exc,
        )
        for _, fut in group:
            if not fut.done():
                fut.set_exception(PublishError(self.fenced))
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(PublishError(self.fenced))

    async def _recover(self, lane: int) -> None:
        """After a failed or timed-out transaction start over with a fresh producer (fences the old one)."""
        old = self._producers[lane]
        self._producers[lane] = None
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), timeout=self._timeout_s)
        while self._producers[lane] is None:
            candidate = self._new_producer(lane)
            try:
                await asyncio.wait_for(candidate.start(), timeout=self._timeout_s)
                self._producers[lane] = candidate
            except Exception as exc:
                log.warning("Kafka producer restart failed: %r; retrying", exc)
                with contextlib.suppress(Exception):
                    await candidate.stop()
                # fail queued requests fast while the broker is away, instead of letting them time out
                while not self._queue.empty():
                    _, fut = self._queue.get_nowait()
                    if not fut.done():
                        fut.set_exception(PublishError(f"Kafka unavailable: {exc!r}"))
                await asyncio.sleep(0.5)


def acked_producer(bootstrap: str, *, client_id: str, timeout_s: float) -> AIOKafkaProducer:
    """The producer of single acknowledged records (:class:`AckedWriter`, and ``scripts.load``'s
    durable floor, which must write as the ingest writes): idempotent, ``acks=all``, no linger."""
    return AIOKafkaProducer(
        partitioner=partitioner,  # Kafka's murmur2, in half aiokafka's time
        bootstrap_servers=bootstrap_list(bootstrap),
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=0,  # one produce request in flight per broker: the next one batches meanwhile
        max_request_size=MAX_REQUEST_BYTES,
        request_timeout_ms=int(timeout_s * 1000),
    )


class Writer(Protocol):
    """What the ingest and the publisher write through (tests use an in-memory one)."""

    async def write(self, records: Sequence[OutRecord]) -> list[Written]: ...


class AckedWriter:
    """One record: an idempotent ``acks=all`` send, answered on its acknowledgement; several: the
    transactional group commit of :class:`TransactionalWriter` (nothing half-written).

    Why one record needs no transaction: a read_committed reader sees a non-transactional record
    as soon as it is below the high watermark, i.e. acknowledged by every in-sync replica (what
    ``acks=all`` waits for); idempotence (producer id and sequence numbers) keeps the producer's
    own retries from writing it twice; and a send that failed or timed out is never retried later:
    the producer is discarded at once with every record still queued in it (:meth:`_discard`), so
    a 503 means it was not written (the one window left, a broker that wrote the record but whose
    answer was lost, is the same as a transaction whose commit answer was lost).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        transactional_id: str,
        timeout_s: float = 5.0,
        max_group: int = 2000,
        lanes: int = 4,
    ) -> None:
        self.transactional = TransactionalWriter(
            bootstrap,
            transactional_id=transactional_id,
            timeout_s=timeout_s,
            max_group=max_group,
            lanes=lanes,
        )
        self._bootstrap = bootstrap
        self._client_id = f"{transactional_id}-acked"
        self._timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._ready = asyncio.Event()  # set while a producer is up
        #: why the last (re)start failed, while the broker is away: writes then fail fast
        self._unavailable: str | None = None
        self._restart: asyncio.Task[None] | None = None
        self._stopping = False
        self._background: set[asyncio.Task[None]] = set()
        self._inflight = 0

    @property
    def fenced(self) -> str | None:
        """Set once Kafka fenced the transactional path; every write is then refused (503)."""
        return self.transactional.fenced

    @fenced.setter
    def fenced(self, reason: str | None) -> None:
        self.transactional.fenced = reason

    def _new_producer(self) -> AIOKafkaProducer:
        return acked_producer(self._bootstrap, client_id=self._client_id, timeout_s=self._timeout_s)

    async def start(self) -> None:
        producer = self._new_producer()
        await asyncio.wait_for(producer.start(), timeout=max(self._timeout_s * 6, 30))
        self._producer = producer
        self._ready.set()
        await self.transactional.start()

    async def stop(self, drain_s: float = 0.0) -> None:
        """Stop; with ``drain_s``, first let writes in flight be acknowledged (bounded)."""
        for _ in range(int(drain_s * 100)):  # polled: only at shutdown
            if not self._inflight:
                break
            await asyncio.sleep(0.01)
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart
        producer, self._producer = self._producer, None
        self._ready.clear()
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout=self._timeout_s)
        for task in list(self._background):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        await self.transactional.stop(drain_s=drain_s)

    async def write(self, records: Sequence[OutRecord]) -> list[Written]:
        """Write ``records`` atomically; raise PublishError if Kafka did not acknowledge in time."""
        if not records:
            return []
        if self.fenced:
            raise PublishError(self.fenced)
        if len(records) > 1:
            return await self.transactional.write(records)
        return [await self._write_one(records[0])]

    async def _write_one(self, r: OutRecord) -> Written:
        self._inflight += 1
        producer: AIOKafkaProducer | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                while (producer := self._producer) is None:
                    if self._unavailable is not None or self._stopping:
                        raise PublishError(self._unavailable or "writer stopped")
                    await self._ready.wait()  # a restart after a failed send: usually milliseconds
                fut = await producer.send(r.topic, r.value, key=r.key, headers=r.headers)
                meta: RecordMetadata = await fut
        except TimeoutError as exc:
            reason = f"Kafka did not acknowledge within {self._timeout_s:g} s"
            self._discard(producer, reason)
            raise PublishError(reason) from exc
        except PublishError:
            raise
        except Exception as exc:  # refused by the broker, or discarded with its producer
            self._discard(producer, f"Kafka write failed: {exc!r}")
            raise PublishError(f"Kafka write failed: {exc!r}") from exc
        finally:
            self._inflight -= 1
        return Written(meta.topic, meta.partition, meta.offset)

    def _discard(self, producer: AIOKafkaProducer | None, reason: str) -> None:
        """Drop ``producer`` and every record still queued in it, so none is sent after its caller
        was told it failed; a fresh producer is started in the background."""
        if producer is None or producer is not self._producer:
            return  # already discarded (another write of the same producer failed first)
        assert producer is not None
        log.warning("idempotent producer discarded (%s); starting a new one", reason)
        sender = producer._sender
        if sender is not None and sender.sender_task is not None:
            sender.sender_task.cancel()  # nothing more leaves this producer
        producer._message_accumulator.fail_all(PublishError(reason))
        self._producer = None
        self._ready.clear()
        closing = asyncio.create_task(self._close(producer), name="acked-writer-close")
        self._background.add(closing)
        closing.add_done_callback(self._background.discard)
        if not self._stopping and (self._restart is None or self._restart.done()):
            self._restart = asyncio.create_task(self._start_again(), name="acked-writer-restart")

    async def _close(self, producer: AIOKafkaProducer) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), timeout=self._timeout_s)

    async def _start_again(self) -> None:
        """New producers until one starts; meanwhile writes fail fast once an attempt failed."""
        while not self._stopping:
            candidate = self._new_producer()
            try:
                await asyncio.wait_for(candidate.start(), timeout=self._timeout_s)
            except Exception as exc:
                log.warning("Kafka producer restart failed: %r; retrying", exc)
                self._unavailable = f"Kafka unavailable: {exc!r}"
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(candidate.stop(), timeout=self._timeout_s)
                await asyncio.sleep(0.5)
                continue
            self._producer, self._unavailable = candidate, None
            self._ready.set()
            return


async def partitions_of(bootstrap: str, topics: list[str]) -> dict[str, list[int]]:
    """Partition numbers of existing topics (the admin API; consumers only know subscribed ones)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_list(bootstrap))
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {d["topic"]: sorted(p["partition"] for p in d["partitions"]) for d in described}
