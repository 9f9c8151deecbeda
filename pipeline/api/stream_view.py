"""The ingest's read side of the stream: per-request results and per-domain counters.

One consumer (no group: every ingest instance sees everything) reads ``feedback.results`` from
its end and the counting stage's compacted changelog from its beginning, ``read_committed``.
Waiters register *before* their request is written, so no result can slip past them.

A raw event whose units were split into chunks has one result per chunk: it is done once every
chunk's result is in, and a request once all its raw events are done. Results are kept (as their
JSON bytes) for ``GET /v1/requests/{id}``, bounded in bytes per tenant (the owner of the result's
domain): a tenant over its budget loses its own oldest requests, never another tenant's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline import metrics
from pipeline.kafka.io import bootstrap_list, partitions_of
from pipeline.kafka.topics import TopicNames
from pipeline.rules.counters import DomainCounter, apply_changelog
from pipeline.settings import get_settings
from pipeline.wire.records import StageResult, TrainingResult, from_json, latest_training

log = logging.getLogger(__name__)

#: Memory a kept request and a kept result take beyond the result's JSON bytes (dict and list slots,
#: the bytes object and id strings), as measured with tracemalloc (docs/design.md). The request's id
#: string (~85 bytes) is its own: msgspec, unlike pydantic-core, does not share it from a cache.
REQUEST_OVERHEAD_BYTES = 500
RESULT_OVERHEAD_BYTES = 80
#: Requests whose event count is known only from a wait that timed out on this instance (the 202
#: path), remembered for ``GET /v1/requests/{id}``.
MAX_REMEMBERED_EXPECTATIONS = 10_000
#: Results of domains no tenant owns (only injected records can have them) share one budget.
NO_TENANT = ""
#: Domains whose last training is kept (train.completed can name any domain): bounds its memory.
MAX_TRAINING_DOMAINS = 100_000


def events_done(results: Iterable[StageResult]) -> int:
    """Raw events (or train requests) all of whose chunks have a result."""
    chunks: dict[str | None, tuple[int, set[int]]] = {}
    for r in results:
        key = r.event_id if r.kind == "units" else f"train:{r.request_id}"
        _total, seen = chunks.setdefault(key, (r.chunks, set()))
        seen.add(r.chunk)
    return sum(1 for total, seen in chunks.values() if len(seen) >= total)


@dataclass(frozen=True)
class RequestStatus:
    """What the stream has answered so far for one request."""

    results: list[StageResult]
    events_expected: int | None  # None: not known here (nor carried by the results)
    events_done: int

    @property
    def complete(self) -> bool:
        return self.events_expected is not None and self.events_done >= self.events_expected


@dataclass
class _Waiter:
    expected: int
    future: asyncio.Future[list[StageResult]]
    results: list[StageResult] = field(default_factory=list)


@dataclass
class _Kept:
    tenant: str
    values: list[bytes] = field(default_factory=list)
    size: int = REQUEST_OVERHEAD_BYTES
    expected: int | None = None  # raw events of the request, when a waiter here knew it


class StreamView:
    def __init__(
        self,
        bootstrap: str,
        names: TopicNames,
        keep_results: int | None = None,
        *,
        owner_of: Callable[[str], str | None] | None = None,
        max_bytes_per_tenant: int | None = None,
    ) -> None:
        """``owner_of`` maps a domain to its tenant id (None: no tenant); ``max_bytes_per_tenant``
        bounds what is kept per tenant (default: the ``VIEW_MAX_BYTES_PER_TENANT`` setting);
        ``keep_results`` optionally bounds the number of requests kept in all."""
        self.bootstrap = bootstrap
        self.names = names
        self.domains: dict[str, DomainCounter] = {}
        #: the last training per domain (train.completed, read from its beginning; latest_training),
        #: least recently reported first, at most MAX_TRAINING_DOMAINS domains
        self.trainings: dict[str, TrainingResult] = {}
        self.owner_of = owner_of or (lambda domain: None)
        self.max_bytes_per_tenant = (
            max_bytes_per_tenant
            if max_bytes_per_tenant is not None
            else get_settings().view_max_bytes_per_tenant
        )
        self._keep = keep_results
        self._kept: OrderedDict[str, _Kept] = OrderedDict()  # oldest first, all tenants
        self._by_tenant: dict[str, OrderedDict[str, None]] = {}
        self._tenant_bytes: dict[str, int] = {}
        self._expected: OrderedDict[str, int] = OrderedDict()
        self._waiters: dict[str, _Waiter] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.caught_up = asyncio.Event()
        self._catch_up: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_list(self.bootstrap),
            group_id=None,
            isolation_level="read_committed",
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
        )
        await consumer.start()
        from_start = (self.names.count_state, self.names.trainings)
        parts = await partitions_of(self.bootstrap, [self.names.results, *from_start])
        tps = [TopicPartition(topic, p) for topic, ps in parts.items() for p in ps]
        consumer.assign(tps)
        # explicit offsets: aiokafka's seek_to_* can lose to the initial offset reset
        ends = await consumer.end_offsets([tp for tp in tps if tp.topic == self.names.results])
        starts = await consumer.beginning_offsets([tp for tp in tps if tp.topic in from_start])
        for tp, offset in {**ends, **starts}.items():
            consumer.seek(tp, offset)
        # caught up once the counters changelog is read up to where it ended at start
        self._catch_up = await consumer.end_offsets([tp for tp in tps if tp.topic == self.names.count_state])
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="stream-view")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer:
            await self._consumer.stop()

    # -- waiting for a request's results -----------------------------------------------------------

    def expect(self, request_id: str, count: int) -> asyncio.Future[list[StageResult]]:
        """Register before writing: resolves with every result (chunk) of ``request_id`` once its
        ``count`` raw events are all done."""
        fut: asyncio.Future[list[StageResult]] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(count, fut, self.results_of(request_id))
        self._waiters[request_id] = waiter
        self._maybe_done(request_id, waiter)
        return fut

    async def wait(
        self, request_id: str, fut: asyncio.Future[list[StageResult]], timeout_s: float
    ) -> list[StageResult] | None:
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except TimeoutError:
            waiter = self._waiters.get(request_id)
            if waiter is not None:  # answered 202: remember how many events GET should wait for
                kept = self._kept.get(request_id)
                if kept is not None:
                    kept.expected = waiter.expected
                else:
                    self._remember(request_id, waiter.expected)
            return None
        finally:
            self._waiters.pop(request_id, None)

    def forget(self, request_id: str) -> None:
        self._waiters.pop(request_id, None)

    def _maybe_done(self, request_id: str, waiter: _Waiter) -> None:
        if not waiter.future.done() and events_done(waiter.results) >= waiter.expected:
            waiter.future.set_result(list(waiter.results))
            kept = self._kept.get(request_id)
            if kept is not None:
                kept.expected = waiter.expected

    def _remember(self, request_id: str, events: int) -> None:
        self._expected[request_id] = events
        self._expected.move_to_end(request_id)
        while len(self._expected) > MAX_REMEMBERED_EXPECTATIONS:
            self._expected.popitem(last=False)

    # -- reading what is kept ----------------------------------------------------------------------

    def results_of(self, request_id: str) -> list[StageResult]:
        kept = self._kept.get(request_id)
        return [] if kept is None else [from_json(StageResult, v) for v in kept.values]

    def request_status(self, request_id: str) -> RequestStatus | None:
        """The kept results of a request and whether it is complete; None if nothing is kept."""
        results = self.results_of(request_id)
        if not results:
            return None
        expected = next((r.request_events for r in results if r.request_events is not None), None)
        if expected is None:
            kept = self._kept.get(request_id)
            expected = kept.expected if kept is not None else None
        if expected is None and all(r.kind == "train" for r in results):
            expected = 1
        return RequestStatus(results, expected, events_done(results))

    def kept_bytes(self, tenant: str) -> int:
        return self._tenant_bytes.get(tenant, 0)

    # -- the consumer ------------------------------------------------------------------------------

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("stream view: fetch failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if not batches:
                self.caught_up.set()
            for tp, records in batches.items():
                for rec in records:
                    try:
                        self._apply(tp.topic, rec.key, rec.value)
                    except Exception:
                        log.exception(
                            "stream view: bad record at %s:%d@%d", tp.topic, tp.partition, rec.offset
                        )
            if not self.caught_up.is_set():
                positions = [(await consumer.position(tp), end) for tp, end in self._catch_up.items()]
                if all(position >= end for position, end in positions):
                    self.caught_up.set()

    def _apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        if topic == self.names.count_state:
            apply_changelog(self.domains, key, value)
            return
        if value is None:
            return
        if topic == self.names.trainings:
            self._keep_training(from_json(TrainingResult, value))
            return
        result = from_json(StageResult, value)
        self._keep_result(result, value)
        waiter = self._waiters.get(result.request_id)
        if waiter is not None:
            waiter.results.append(result)
            self._maybe_done(result.request_id, waiter)

    def _keep_training(self, training: TrainingResult) -> None:
        """The domain's last training (:func:`latest_training`), for at most MAX_TRAINING_DOMAINS
        domains (least recently reported out first): the topic takes any domain's records."""
        domain = training.domain
        kept = self.trainings.pop(domain, None)
        self.trainings[domain] = latest_training(kept, training)
        while len(self.trainings) > MAX_TRAINING_DOMAINS:
            del self.trainings[next(iter(self.trainings))]

    def _keep_result(self, result: StageResult, value: bytes) -> None:
        request_id = result.request_id
        kept = self._kept.get(request_id)
        if kept is None:
            tenant = self.owner_of(result.domain) or NO_TENANT
            kept = self._kept[request_id] = _Kept(tenant, expected=self._expected.pop(request_id, None))
            self._tenant_bytes[kept.tenant] = self._tenant_bytes.get(kept.tenant, 0) + kept.size
        tenant = kept.tenant
        order = self._by_tenant.setdefault(tenant, OrderedDict())
        order[request_id] = None
        order.move_to_end(request_id)
        self._kept.move_to_end(request_id)
        kept.values.append(value)
        added = len(value) + RESULT_OVERHEAD_BYTES
        kept.size += added
        self._tenant_bytes[tenant] += added
        while self._tenant_bytes[tenant] > self.max_bytes_per_tenant and len(order) > 1:
            self._evict(next(iter(order)))
        while self._keep is not None and len(self._kept) > self._keep:
            self._evict(next(iter(self._kept)))
        metrics.VIEW_BYTES.labels(tenant).set(self._tenant_bytes[tenant])

    def _evict(self, request_id: str) -> None:
        kept = self._kept.pop(request_id)
        self._by_tenant[kept.tenant].pop(request_id, None)
        self._tenant_bytes[kept.tenant] -= kept.size
        metrics.VIEW_BYTES.labels(kept.tenant).set(self._tenant_bytes[kept.tenant])
