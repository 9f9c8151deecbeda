"""The ingest's read side of the stream: per-request results and per-domain counters.

One consumer (no group: every ingest instance sees everything) reads ``feedback.results`` from
its end and the counting stage's compacted changelog from its beginning, ``read_committed``.
Waiters register *before* their request is written, so no result can slip past them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.counters import DomainCounter
from pipeline.kafka_io import bootstrap_list, partitions_of
from pipeline.records import StageResult
from pipeline.topics import TopicNames

log = logging.getLogger(__name__)


@dataclass
class _Waiter:
    expected: int
    future: asyncio.Future[list[StageResult]]
    results: list[StageResult] = field(default_factory=list)


class StreamView:
    def __init__(self, bootstrap: str, names: TopicNames, keep_results: int = 50_000) -> None:
        self.bootstrap = bootstrap
        self.names = names
        self.domains: dict[str, DomainCounter] = {}
        self.recent: OrderedDict[str, list[StageResult]] = OrderedDict()
        self._keep = keep_results
        self._waiters: dict[str, _Waiter] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.caught_up = asyncio.Event()

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_list(self.bootstrap),
            group_id=None,
            isolation_level="read_committed",
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
        )
        await consumer.start()
        parts = await partitions_of(self.bootstrap, [self.names.results, self.names.count_state])
        tps = [TopicPartition(topic, p) for topic, ps in parts.items() for p in ps]
        consumer.assign(tps)
        # explicit offsets: aiokafka's seek_to_* can lose to the initial offset reset
        ends = await consumer.end_offsets([tp for tp in tps if tp.topic == self.names.results])
        starts = await consumer.beginning_offsets([tp for tp in tps if tp.topic == self.names.count_state])
        for tp, offset in {**ends, **starts}.items():
            consumer.seek(tp, offset)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="stream-view")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer:
            await self._consumer.stop()

    def expect(self, request_id: str, count: int) -> asyncio.Future[list[StageResult]]:
        """Register before writing: resolves with ``count`` results of ``request_id``."""
        fut: asyncio.Future[list[StageResult]] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(count, fut)
        for result in self.recent.get(request_id, []):
            waiter.results.append(result)
        self._waiters[request_id] = waiter
        self._maybe_done(request_id, waiter)
        return fut

    async def wait(
        self, request_id: str, fut: asyncio.Future[list[StageResult]], timeout_s: float
    ) -> list[StageResult] | None:
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except TimeoutError:
            return None
        finally:
            self._waiters.pop(request_id, None)

    def forget(self, request_id: str) -> None:
        self._waiters.pop(request_id, None)

    def _maybe_done(self, request_id: str, waiter: _Waiter) -> None:
        if len(waiter.results) >= waiter.expected and not waiter.future.done():
            waiter.future.set_result(list(waiter.results))

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

    def _apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        if topic == self.names.count_state:
            if key is None:
                return
            if value is None:
                self.domains.pop(key.decode(), None)
            else:
                self.domains[key.decode()] = DomainCounter.model_validate_json(value)
            return
        if value is None:
            return
        result = StageResult.model_validate_json(value)
        self.recent.setdefault(result.request_id, []).append(result)
        self.recent.move_to_end(result.request_id)
        while len(self.recent) > self._keep:
            self.recent.popitem(last=False)
        waiter = self._waiters.get(result.request_id)
        if waiter is not None:
            waiter.results.append(result)
            self._maybe_done(result.request_id, waiter)
