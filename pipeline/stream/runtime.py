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
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, runtime_checkable

from aiokafka import TopicPartition
from aiokafka.errors import (
    CorruptRecordException,
    InvalidProducerEpoch,
    InvalidTimestampError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    TransactionalIdAuthorizationFailed,
    TransactionCoordinatorFenced,
    UnknownProducerId,
)
from prometheus_client import Counter

from pipeline import metrics, tracing
from pipeline.kafka.batches import Mispredicted, RecordBatches, Sent
from pipeline.kafka.io import MAX_REQUEST_BYTES
from pipeline.kafka.partitioner import default_partition
from pipeline.stream.partitions import Backoff, Clients, KafkaClients, PartitionRunner, Producer, Record
from pipeline.wire.records import (
    MAX_DEAD_LETTER_KEY_BYTES,
    DeadLetterReason,
    InputOffset,
    dead_letter,
    dead_letter_headers,
    from_json,
    input_offset_key,
    input_offset_topic,
    to_json,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)

S = TypeVar("S")
T = TypeVar("T")
P = ParamSpec("P")

__all__ = [
    "Mispredicted",
    "OutputRefused",
    "Record",
    "Sent",
    "Stage",
    "StageRunner",
    "Table",
    "Tx",
    "key_partition",
    "output_headers",
    "refusal",
]


#: Keys whose partition is cached. Domains (units, triplets, counters) repeat and stay hot; request
#: ids, new seekers and sessions churn, and caching 65,536 of them held about 14 MiB of the worker for
#: nothing (docs/design.md, "Hardening: fuzz and soak"). About 250 bytes an entry: 1 MiB at most.
KEY_PARTITION_CACHE = 4096


@functools.lru_cache(maxsize=KEY_PARTITION_CACHE)
def key_partition(key: bytes, partitions: int) -> int | None:
    """Kafka's default partition of a key (murmur2, as Java and aiokafka), cached for the hot keys."""
    if partitions == 0:
        return None  # metadata not known yet: let the producer wait for it and partition
    return default_partition(key, partitions)


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


def header_bytes(headers: Sequence[tuple[str, bytes]]) -> int:
    """An upper bound of a record's headers' bytes (names, values, varints)."""
    return sum(len(k.encode()) + len(v) + 10 for k, v in headers)


def record_size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()) -> int:
    """An upper bound of a record's bytes in a batch of its own (what ``max.message.bytes`` limits)."""
    return RECORD_OVERHEAD + len(key or b"") + len(value or b"") + header_bytes(headers)


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


# -- error classes ------------------------------------------------------------------------------------

#: Another owner took the partition (its ``init_transactions`` bumped the epoch), or the broker
#: aborted our transaction and bumped it (a transaction timeout): this producer can do nothing
#: more. Kafka Streams' ``StreamsProducer`` maps these to ``TaskMigratedException``.
FENCED: tuple[type[BaseException], ...] = (
    ProducerFenced,
    InvalidProducerEpoch,
    TransactionCoordinatorFenced,
    TransactionalIdAuthorizationFailed,
    UnknownProducerId,
)

STAGE_ERRORS = Counter(
    "feedstream_stage_errors_total",
    "Failed stage transactions by how they were handled: fenced (partition dropped until the rebalance), "
    "transient (aborted, retried from the committed offset with backoff), unknown_outcome (the commit "
    "may have landed: partition re-taken), refused (an output refused: careful mode), mispredicted "
    "(another writer moved a predicted output offset: aborted, processed again), error (anything "
    "else: aborted and retried like a transient error).",
    ["stage", "kind"],
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def fenced(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says this producer was fenced."""
    return any(isinstance(e, FENCED) for e in _chain(exc))


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is an error a retry may cure: timeouts, connections, retriable codes."""
    return any(
        isinstance(e, KafkaTimeoutError | KafkaConnectionError | TimeoutError)
        or (isinstance(e, KafkaError) and bool(getattr(e, "retriable", False)))
        for e in _chain(exc)
    )


# -- what a stage sees ------------------------------------------------------------------------------


class Table(MutableMapping[bytes, S]):
    """A partition's committed table seen through this batch's changes (read your own writes).

    ``get``/``[]``/``in``/iteration see the batch's changes over the committed state; ``set`` and
    ``delete`` only record changes: the runtime writes each changed key once to the changelog and
    applies the changes to the committed table only after the transaction commits.
    """

    def __init__(self, committed: Mapping[bytes, S]) -> None:
        self._committed = committed
        self.changes: dict[bytes, S | None] = {}  # None: deleted (a tombstone on the changelog)

    def __getitem__(self, key: bytes) -> S:
        if key in self.changes:
            value = self.changes[key]
            if value is None:
                raise KeyError(key)
            return value
        return self._committed[key]

    def __setitem__(self, key: bytes, value: S) -> None:
        self.changes[key] = value

    def __delitem__(self, key: bytes) -> None:
        if key not in self:
            raise KeyError(key)
        self.changes[key] = None

    def delete(self, key: bytes) -> None:
        """Delete ``key`` whether or not it is there (a tombstone either way)."""
        self.changes[key] = None

    def __contains__(self, key: object) -> bool:
        if key in self.changes:
            return self.changes[key] is not None
        return key in self._committed

    def __iter__(self) -> Iterator[bytes]:
        for key in self._committed:
            if key not in self.changes:
                yield key
        for key, value in list(self.changes.items()):
            if value is not None:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Tx(RecordBatches):
    """What a stage may do inside the transaction of one batch: send, and dead-letter inputs.

    Its records go into record batches (:class:`pipeline.kafka.batches.RecordBatches`: flush,
    offsets, predicted offsets and their check); ``send`` adds the topic's size limit and the key's
    partition. ``predicted``: the next offset of partitions this producer alone writes (the runtime
    learns them from its own committed transactions).
    """

    def __init__(
        self,
        producer: Producer,
        *,
        stage: str = "stage",
        dlq: str | None = None,
        limits: Mapping[str, int] | None = None,
        predicted: Mapping[TopicPartition, int] | None = None,
    ) -> None:
        super().__init__(producer, predicted)
        self._producer: Producer = producer
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
    ) -> Sent:
        """Add a record to the transaction; its offset is known after :meth:`flush` (``.result()``).

        Raises :class:`OutputRefused` at once (nothing sent) for a record over its topic's limit.
        """
        # the per-record path of every stage: no helper objects, one dict lookup for the batch
        size = RECORD_OVERHEAD + (len(key) if key else 0) + (len(value) if value else 0)
        if headers:
            size += header_bytes(headers)
        limit = self.limits.get(topic, DEFAULT_LIMIT)
        if size > limit:
            raise OutputRefused(f"a {size}-byte record for {topic} is over its {limit}-byte limit")
        if partition is None:
            n = self._partitions.get(topic) or await self.partitions(topic)
            partition = 0 if key is None or n == 0 else key_partition(key, n) or 0
        return await self.append(topic, partition, key, value, headers)

    async def co_partition(self, topic: str, rec: Record) -> int | None:
        """The partition of an output to ``topic`` that keeps ``rec``'s partitioning: ``rec``'s own
        when ``topic`` has as many partitions as ``rec``'s topic, else None (the key's default)."""
        if await self.partitions(topic) == await self.partitions(rec.topic):
            return int(rec.partition)
        return None

    async def decode(self, rec: Record, decode: Callable[[bytes], T]) -> T | None:
        """``rec``'s value decoded, or None once ``rec`` is dead-lettered (``schema_violation``)."""
        try:
            return decode(rec.value or b"")
        except Exception as exc:  # undecodable or off the contract: park it, keep going
            await self.dead_letter(rec, exc, SCHEMA_VIOLATION)
            return None

    async def attempt(
        self, rec: Record, rule: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T | None:
        """``rule(*args, **kwargs)`` (pure: it sends nothing), or None once ``rec`` is dead-lettered
        (``processing_failure``) because the rule raised."""
        try:
            return rule(*args, **kwargs)
        except Exception as exc:  # a rule refused it: park it, keep going
            await self.dead_letter(rec, exc, PROCESSING_FAILURE)
            return None

    async def dead_letter(self, rec: Record, error: BaseException, reason: DeadLetterReason) -> None:
        """Park ``rec`` on the dead-letter topic with the error and its reason class.

        The letter always fits the topic: if the original (in base64) would not, only its head is kept
        and ``original_truncated`` says so. Typed headers (``feedstream.dlq.*``) say the same as the
        body for tools that filter on headers; the original's own headers follow (for a replay), unless
        they alone would take over a quarter of the room.
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
        letter = dead_letter(**fields)
        kept = rec.headers or ()
        if record_size(None, None, kept) > limit // 4:  # the originals' headers must not crowd it out
            kept = ()
        headers = dead_letter_headers(letter, kept)
        value = to_json(letter)
        if record_size(key, value, headers) > limit:
            bare = record_size(key, to_json(dead_letter(**fields, max_original_bytes=0)), headers)
            fields["max_original_bytes"] = max(0, (limit - bare) * 3 // 4 - 4)
            value = to_json(dead_letter(**fields))
        await self.send(self.dlq, value, key=key, headers=headers)
        metrics.DLQ.labels(self.stage, reason).inc()


def output_headers(rec: Record) -> tracing.TraceHeaders | None:
    """The headers of every record a stage derives from ``rec``: its W3C trace context (None without
    one, so the runtime sends no headers). One place for every stage, so other header kinds join here."""
    return tracing.carried(rec.headers)


class Stage(Protocol[S]):
    """A stage: pure rules behind ``process``; its state is a table per input partition."""

    name: str

    def decode_state(self, value: bytes) -> S: ...

    def encode_state(self, state: S) -> bytes: ...

    async def process(self, records: Sequence[Record], table: Table[S], tx: Tx) -> None:
        """Handle one partition's batch: send through ``tx``, change ``table``; nothing is visible
        (outputs, changelog, offsets, table) unless the runtime commits the whole batch."""
        ...


@runtime_checkable
class Ticking(Protocol[S]):
    """A stage that also acts on time, not only on input (e.g. ``max_wait`` triggers): the runtime asks
    ``due`` (pure, cheap) every ``tick_s`` per owned partition, and runs ``tick`` in a transaction of
    its own (outputs and changelog, no input offsets) when it says so. A tick is exactly-once like a
    batch: what it sends and the table change it makes commit together or not at all, and a fenced
    zombie cannot commit one."""

    def due(self, state: Mapping[bytes, S], now: datetime) -> bool: ...

    async def tick(self, table: Table[S], tx: Tx, now: datetime) -> None: ...


# -- the runtime ------------------------------------------------------------------------------------


@dataclass
class _Owned(Generic[S]):
    producer: Producer | None
    state: dict[bytes, S] = field(default_factory=dict)
    sizes: dict[bytes, int] = field(default_factory=dict)  # changelog bytes (key + value) per key
    state_bytes: int = 0
    #: the next offset of the output partitions only this producer writes (``Stage.predict_offsets``),
    #: learnt from its committed transactions; forgotten on any failure
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    predicting: bool = True  # off once another writer was found in a predicted partition
    #: the input offsets the changelog holds (``InputOffset``), by input topic
    inputs: dict[str, int] = field(default_factory=dict)

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


class _Committing(Exception):
    """The commit itself failed: its outcome is unknown (it may have landed)."""


class StageRunner(PartitionRunner[_Owned[S]]):
    """Runs one stage for this process's share of the input partitions, one transaction per batch."""

    def __init__(
        self,
        stage: Stage[S],
        *,
        bootstrap: str = "",
        group_id: str,
        input_topic: str,
        changelog_topic: str,
        dlq_topic: str,
        limits: Mapping[str, int] | None = None,
        max_batch: int = 500,
        poll_ms: int = 10,
        clients: Clients | None = None,
        backoff: Backoff | None = None,
        fence_grace_s: float = 10.0,
        retake_delay_s: float = 0.5,
        tick_s: float = 1.0,
        advise_every_s: float = 0.1,
    ) -> None:
        super().__init__(
            clients=clients or KafkaClients(bootstrap, poll_ms=poll_ms),
            group_id=group_id,
            topics=[input_topic],
            max_batch=max_batch,
            poll_ms=poll_ms,
            backoff=backoff,
        )
        self.name = stage.name
        self.stage = stage
        #: set by the worker when it exports traces (pipeline.tracing.setup); None: no spans at all
        self.tracer: Tracer | None = None
        self.input_topic = input_topic
        self.changelog_topic = changelog_topic
        self.dlq_topic = dlq_topic
        self.limits = dict(limits or {})
        self.fence_grace_s = fence_grace_s  # a fenced partition still ours after this is re-taken
        self.retake_delay_s = retake_delay_s  # pause before re-taking a partition after a failure
        self._careful: dict[int, _Careful] = {}
        #: output topics whose partition only this partition's producer writes (the stage says which)
        self.predictable: frozenset[str] = frozenset(getattr(stage, "predict_offsets", ()))
        self.tick_s = tick_s  # how often a Ticking stage is asked whether a partition is due
        self._ticked = 0.0
        self._advised: dict[TopicPartition, int] = {}  # group offsets not yet committed (monitoring)
        self._advising: asyncio.Task[None] | None = None
        #: at most one group offset commit per this many seconds: a busy stage commits hundreds of
        #: transactions a second, and each group commit is a write on the broker
        self.advise_every_s = advise_every_s

    async def stop(self) -> None:
        """Stop; first the group's offsets of the partitions it owns, exactly where they stand
        (bounded; the next owner's open commits them anyway)."""
        if self._advising is not None:
            self._advising.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._advising
        self._advised = {}
        await self._commit_where_they_stand(list(self._owned), within_s=2.0, why="at stop")
        await super().stop()

    def state(self, partition: int) -> dict[bytes, S] | None:
        """The committed table of an owned partition (None if not owned)."""
        owned = self._owned.get(TopicPartition(self.input_topic, partition))
        return None if owned is None else owned.state

    # -- taking and letting go ---------------------------------------------------------------------

    async def _open(self, tp: TopicPartition) -> tuple[_Owned[S], int]:
        """Fence the previous owner, restore the table and the input offset committed with it (a
        changelog from before offsets were kept there: the group's committed offset)."""
        producer = self.clients.producer(f"{self.group_id}-{self.stage.name}-{tp.partition}")
        await producer.start()  # init_transactions: fences the previous owner, aborts its open txn
        try:
            owned = await self._restore(tp.partition, producer)
            committed = owned.inputs.get(tp.topic)  # final: nobody else can commit for it now
            if committed is None:
                committed = await self.consumer.committed(tp)
            if committed is None:
                committed = (await self.consumer.beginning_offsets([tp]))[tp]
            self._advise(tp, committed)  # the group's offset catches up with where we stand
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        log.info(
            "%s: partition %d restored: %d state keys (%d bytes)",
            self.stage.name,
            tp.partition,
            len(owned.state),
            owned.state_bytes,
        )
        return owned, committed

    async def _restore(self, partition: int, producer: Producer) -> _Owned[S]:
        """Rebuild a partition's table from its changelog (committed records only)."""
        owned: _Owned[S] = _Owned(producer)
        async for batch in self.clients.changelog(TopicPartition(self.changelog_topic, partition)):
            for rec in batch:
                if rec.key is None:
                    continue
                topic = input_offset_topic(rec.key)
                if topic is not None:
                    if rec.value is not None:
                        owned.inputs[topic] = from_json(InputOffset, rec.value).next_offset
                    continue
                if rec.value is None:
                    owned.apply(rec.key, None, 0)
                else:
                    owned.apply(rec.key, self.stage.decode_state(rec.value), len(rec.key) + len(rec.value))
        return owned

    async def _close(self, tp: TopicPartition, handle: _Owned[S]) -> None:
        if handle.producer is not None:
            with contextlib.suppress(Exception):
                await handle.producer.stop()
        self._state_metrics()

    def _forget(self, tp: TopicPartition) -> None:
        super()._forget(tp)
        self._careful.pop(tp.partition, None)

    # -- processing -------------------------------------------------------------------------------

    pipelined = True  # partitions have their own producers and transactions: none waits for another

    async def _process_partition(self, tp: TopicPartition, records: list[Record], after: int) -> None:
        await self._partition(tp, records, after)
        self._state_metrics()

    async def _partition(self, tp: TopicPartition, records: list[Record], after: int) -> None:
        """One partition's fetched records: one transaction, or one per input in careful mode."""
        p = tp.partition
        careful = self._careful.get(p)
        if careful is None:
            if await self._transact(tp, records):
                self.committed(tp, records[-1].offset + 1, after)
            return
        for i, rec in enumerate(records):
            if rec.offset > careful.until:
                log.info("%s: partition %d leaves careful mode at offset %d", self.stage.name, p, rec.offset)
                self._careful.pop(p, None)
                if await self._transact(tp, records[i:]):
                    self.committed(tp, records[-1].offset + 1, after)
                return
            if not await self._transact(tp, [rec]):
                return  # the partition was rewound: what is left of ``records`` comes again
            self.committed(tp, rec.offset + 1, after if rec is records[-1] else rec.offset + 1)
        if records[-1].offset >= careful.until:
            log.info("%s: partition %d leaves careful mode", self.stage.name, p)
            self._careful.pop(p, None)

    async def _transact(self, tp: TopicPartition, records: list[Record]) -> bool:
        """One transaction over ``records``; False if it did not commit (the failure is handled)."""
        owned = self._owned.get(tp)
        if owned is None or owned.producer is None:
            return False
        producer = owned.producer
        careful = self._careful.get(tp.partition)
        poison = careful.poison.get(records[0].offset) if careful and len(records) == 1 else None
        tx = Tx(
            producer,
            stage=self.stage.name,
            dlq=self.dlq_topic,
            limits=self.limits,
            predicted=owned.next_offsets,
        )
        table: Table[S] = Table(owned.state)
        sizes: dict[bytes, int] = {}
        started = time.perf_counter()
        try:
            await producer.begin_transaction()
            if poison is not None:  # its own transaction was refused: park it, move on
                await tx.dead_letter(records[0], poison, poison.reason)
            else:
                if self.tracer is None:
                    await self.stage.process(records, table, tx)
                else:  # the worker exports traces (OTEL_*): a span per batch, linked to its inputs
                    with tracing.batch_span(self.tracer, self.stage.name, tp.topic, tp.partition, records):
                        await self.stage.process(records, table, tx)
                sizes = await self._changelog(tp, table, tx)
            # the input offset is a record of the transaction (the changelog's): no AddOffsetsToTxn
            # and TxnOffsetCommit round trips, no marker on __consumer_offsets (``InputOffset``)
            next_offset = records[-1].offset + 1
            offset, key = to_json(InputOffset(next_offset=next_offset)), input_offset_key(tp.topic)
            await tx.send(self.changelog_topic, offset, key=key, partition=tp.partition)
            await tx.flush()
            tx.verify()  # a wrong predicted offset: abort, nothing of it is seen
            try:
                await producer.commit_transaction()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise _Committing(str(exc)) from exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            owned.next_offsets.clear()  # an abort marker, or an unknown outcome: learn them again
            await self._failed(tp, owned, tx, records, exc, poisoned=poison is not None)
            return False
        self._committed(owned, tx, table, sizes)
        owned.inputs[tp.topic] = next_offset
        self._advise(tp, next_offset)
        self.batches += 1
        metrics.STAGE_BATCHES.labels(self.stage.name).inc()
        metrics.STAGE_BATCH_SIZE.labels(self.stage.name).observe(len(records))
        metrics.STAGE_TRANSACTION_SECONDS.labels(self.stage.name).observe(time.perf_counter() - started)
        return True

    async def _handing_over(self, tps: Sequence[TopicPartition]) -> None:
        """The group's offsets of partitions going elsewhere, exactly where they stand (still in the
        revocation, before the group moves on): monitoring, and an older release taking over (which
        starts from the group's offset), see them right."""
        await self._commit_where_they_stand(tps, within_s=5.0, why="of revoked partitions")

    async def _commit_where_they_stand(
        self, tps: Sequence[TopicPartition], *, within_s: float, why: str
    ) -> None:
        """Commit to the group the committed input offsets of ``tps`` (those owned), now and bounded,
        instead of the coalesced commit still pending for them."""
        offsets = {
            tp: owned.inputs[tp.topic]
            for tp in tps
            if (owned := self._owned.get(tp)) and tp.topic in owned.inputs
        }
        for tp in offsets:
            self._advised.pop(tp, None)
        if not offsets:
            return
        try:
            await asyncio.wait_for(self.consumer.commit(offsets), timeout=within_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: group offsets %s not committed: %r", self.name, why, exc)

    def _advise(self, tp: TopicPartition, offset: int) -> None:
        """Commit ``offset`` to the consumer group, outside any transaction and off the partition's
        path: the group's offsets are for monitoring (lag, ``feedstream status``) only; the stage
        restarts from its changelog's. Pending offsets are coalesced into one commit at a time."""
        self._advised[tp] = offset
        if self._advising is None or self._advising.done():
            self._advising = asyncio.create_task(self._commit_advised(), name=f"{self.name}-advise")

    async def _commit_advised(self) -> None:
        while self._advised:
            assigned = self.consumer.assignment()
            offsets = {tp: offset for tp, offset in self._advised.items() if tp in assigned}
            self._advised = {}
            if not offsets:
                continue
            try:
                await self.consumer.commit(offsets)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a rebalance under way: the next commit or open says it again
                log.debug("%s: advisory offset commit failed: %r", self.name, exc)
            if self.advise_every_s:
                await asyncio.sleep(self.advise_every_s)  # offsets advised meanwhile wait, coalesced

    async def _changelog(self, tp: TopicPartition, table: Table[S], tx: Tx) -> dict[bytes, int]:
        """Send the table's changes to the changelog partition of ``tp``; their sizes by key."""
        sizes: dict[bytes, int] = {}
        for key, value in table.changes.items():
            encoded = None if value is None else self.stage.encode_state(value)
            sizes[key] = len(key) + len(encoded or b"")
            await tx.send(self.changelog_topic, encoded, key=key, partition=tp.partition)
        return sizes

    # -- acting on time (Ticking stages) ---------------------------------------------------------

    async def step(self) -> None:
        self._start_due_ticks()
        await super().step()

    def _start_due_ticks(self) -> None:
        """Every ``tick_s``: a tick transaction for each owned partition the stage says is due (as an
        in-flight task of the partition, so it never overlaps one of its batches)."""
        stage = self.stage
        if not isinstance(stage, Ticking) or time.monotonic() - self._ticked < self.tick_s:
            return
        self._ticked = time.monotonic()
        now = datetime.now(UTC)
        for tp, owned in list(self._owned.items()):
            idle = tp not in self._inflight and tp not in self._revoking and tp not in self._paused
            if idle and tp in self._places and owned.producer is not None and stage.due(owned.state, now):
                self._inflight[tp] = asyncio.create_task(
                    self._tick(tp, now), name=f"{self.name}-tick-{tp.partition}"
                )

    async def _tick(self, tp: TopicPartition, now: datetime) -> None:
        """One tick transaction; any failure aborts it and re-takes the partition (its table comes
        back from the changelog, so the next tick decides again from what was committed)."""
        owned = self._owned.get(tp)
        stage = self.stage
        if owned is None or owned.producer is None or not isinstance(stage, Ticking):
            return
        producer = owned.producer
        tx = Tx(producer, stage=stage.name, dlq=self.dlq_topic, limits=self.limits)
        table: Table[S] = Table(owned.state)
        try:
            await producer.begin_transaction()
            await stage.tick(table, tx, now)
            sizes = await self._changelog(tp, table, tx)
            await tx.flush()
            await producer.commit_transaction()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            owned.next_offsets.clear()
            name, p = stage.name, tp.partition
            if fenced(exc):
                STAGE_ERRORS.labels(name, "fenced").inc()
                log.warning("%s: partition %d fenced in a tick: %r; dropping it", name, p, exc)
                self.drop(tp, grace=self.fence_grace_s)
                return
            STAGE_ERRORS.labels(name, "transient" if transient(exc) else "error").inc()
            log.warning("%s: partition %d tick failed: %r; re-taking the partition", name, p, exc)
            await self._abort(tp, owned, tx)
            self.reopen(tp, delay=self.retake_delay_s)
            return
        self._committed(owned, tx, table, sizes)
        self._state_metrics()

    def _committed(self, owned: _Owned[S], tx: Tx, table: Table[S], sizes: dict[bytes, int]) -> None:
        """After a commit (a batch's or a tick's): the table's changes become the partition's state,
        and the predicted partitions' next offsets are learnt from what the transaction wrote."""
        if owned.predicting:
            owned.next_offsets.update(tx.next_offsets(self.predictable))
        for key, value in table.changes.items():
            owned.apply(key, value, sizes[key])

    async def _failed(
        self,
        tp: TopicPartition,
        owned: _Owned[S],
        tx: Tx,
        records: list[Record],
        exc: Exception,
        *,
        poisoned: bool,
    ) -> None:
        """Handle a failed batch by its error class (the table and the offsets are untouched)."""
        name, p = self.stage.name, tp.partition
        span = f"offsets {records[0].offset}..{records[-1].offset}"
        if fenced(exc):
            # another owner has the partition: stop at once (no abort: this producer can do nothing
            # more), let the rebalance take it away; re-taken after a grace if it stays ours
            STAGE_ERRORS.labels(name, "fenced").inc()
            log.warning("%s: partition %d fenced (%s): %r; dropping it", name, p, span, exc)
            self.drop(tp, grace=self.fence_grace_s)
            return
        if isinstance(exc, Mispredicted):
            # Someone else wrote a partition we predicted: nothing was committed. Abort, and take the
            # same records again; the next transaction learns the offsets from the broker.
            STAGE_ERRORS.labels(name, "mispredicted").inc()
            owned.predicting = False  # not a partition this producer alone writes: until re-taken
            log.warning(
                "%s: partition %d %s: %s; processing them again, without predicting", name, p, span, exc
            )
            if await self._abort(tp, owned, tx):
                self.seek(tp, records[0].offset)
            else:
                self.reopen(tp, delay=self.retake_delay_s)
            return
        refused = None if poisoned else refusal(exc)
        if refused is not None:
            # An output of some input is refused: nothing of this batch is committed. Go back to its
            # first record and take the inputs one per transaction until past its last one.
            STAGE_ERRORS.labels(name, "refused").inc()
            careful = self._careful.setdefault(p, _Careful(records[-1].offset))
            careful.until = max(careful.until, records[-1].offset)
            if len(records) == 1:
                careful.poison[records[0].offset] = refused
            log.warning(
                "%s: partition %d %s: %s; processing them one per transaction", name, p, span, refused
            )
            if refused.by_broker or not await self._abort(tp, owned, tx):
                # a broker refusal leaves the idempotent sequence in doubt: take the partition anew
                self.reopen(tp, delay=self.retake_delay_s)
            else:
                self.seek(tp, records[0].offset)
            return
        if isinstance(exc, _Committing):
            # The commit may have landed: start over from what Kafka says was committed, with a
            # fresh, fencing producer and the table restored.
            STAGE_ERRORS.labels(name, "unknown_outcome").inc()
            log.warning("%s: partition %d commit outcome unknown (%s): %r; re-taking it", name, p, span, exc)
            self.reopen(tp, delay=self.retake_delay_s)
            return
        kind = "transient" if transient(exc) else "error"
        STAGE_ERRORS.labels(name, kind).inc()
        if kind == "transient":
            log.warning(
                "%s: partition %d %s failed: %r; retrying from the committed offset", name, p, span, exc
            )
        else:
            log.exception("%s: partition %d %s failed; retrying from the committed offset", name, p, span)
        if not await self._abort(tp, owned, tx) or not self.retry_later(tp):
            log.warning("%s: partition %d: abort failed or retries used up; re-taking it", name, p)
            self.reopen(tp, delay=self.retake_delay_s)

    async def _abort(self, tp: TopicPartition, owned: _Owned[S], tx: Tx) -> bool:
        """Abort the open transaction; False if that failed (the partition must be re-taken)."""
        if owned.producer is None:
            return False
        try:
            await tx.settle()
            await owned.producer.abort_transaction()
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: abort on partition %d failed: %r", self.stage.name, tp.partition, exc)
            return False

    def _state_metrics(self) -> None:
        name = self.stage.name
        metrics.STATE_KEYS.labels(name).set(sum(len(o.state) for o in self._owned.values()))
        metrics.STATE_BYTES.labels(name).set(sum(o.state_bytes for o in self._owned.values()))
