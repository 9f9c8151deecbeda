"""Stream benchmark: end-to-end throughput, trigger latency and memory of the worker, on a real broker.

Run with ``make bench`` (``python -m scripts.bench [--events N] [--out bench-results/bench.json]``).

What it does, all against the broker of ``pipeline.kafka.broker.find_broker`` with its own ``TOPIC_PREFIX``
and ``WORKER_ID`` (so it never touches anyone else's topics or groups):

1. Writes a tenants file (4 tenants, 20 domains, 4 seed 003 tasks, keys hashed with
   ``hash_api_key``) and builds a realistic mix of raw envelopes with ``pipeline.api.intake``: seed 000
   requests of 1 item and of 100 items over many seekers and candidates with every outcome label
   (built-in and tenant-registered), seed 002 nested feedback arrays, seed 001 corrections, seed 003
   scored entries (some ``source: seed``, which never count) and seed 004 search events of all nine
   types. The expand rules are replayed in memory (``pipeline.stream.expand.expand_event``) to know how
   many counting units each domain will get; thresholds are then chosen so that about
   ``--triggers`` train triggers fire during the throughput phase, and the run checks that exactly
   the predicted number did.
2. Pre-produces the envelopes to ``<prefix>feedback.raw`` with a plain idempotent producer (this
   measures the stream; ``scripts.load`` measures the HTTP path).
3. Baselines, same run, same raw data: a bare aiokafka consume-transform-produce loop (read_committed
   consumer, ``orjson`` decode and re-encode, produce to a scratch topic), once with a transactional
   producer that commits the input offsets in a transaction per partition and batch (the shape of
   ``pipeline.stream.runtime``) and once non-transactional (idempotent producer, consumer commits).
4. Starts a worker (``pipeline.procs.worker_service``), times it to ``/ready`` (reported, excluded),
   then times from ready until ``<prefix>feedback.results`` holds one result per raw event (every
   non-discarded raw event yields exactly one result once the count stage has committed it). The
   expand group's committed offsets reaching the raw end offsets are timed as well.
5. Trigger latency, paced phase: a producer writes new envelopes at a fixed rate (below capacity),
   each built just before it is sent with ``received_at`` = now. The count stage stamps a trigger's
   ``emitted_at`` with the ``received_at`` of the event whose units crossed the threshold, so
   ``latency = (wall time a read_committed consumer first sees the trigger) - emitted_at`` is the time
   from the crossing event being produced to the trigger being visible downstream: producer append,
   expand transaction, count transaction, visibility to a read_committed reader. (The throughput
   phase's triggers are not used for latency: they come out of a backlog.)
6. Worker peak RSS: ``VmHWM`` of the worker process from ``/proc/<pid>/status`` (exact peak), else
   sampled ``psutil`` RSS if installed.

Every loop is bounded in count and time; all traffic goes to the broker and 127.0.0.1. The
bench's topics are deleted at the end unless ``--keep-topics``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.api import intake
from pipeline.api.contracts import (
    CorrectionRequest,
    RankingOutcomeRequest,
    ScoredOutputRequest,
    SearchEventRequest,
)
from pipeline.contracts import expand_event, kafka_key
from pipeline.ids import new_request_id
from pipeline.kafka.topics import TopicNames, ensure_topics, topic_names
from pipeline.procs import Service, free_port, worker_service
from pipeline.rules.triplets import Limits, SeekerHistory
from pipeline.settings import REPO_ROOT, Settings
from pipeline.tenants import Tenant, TenantRegistry, hash_api_key, parse_tenants
from pipeline.wire import envelope
from pipeline.wire.envelope import RawEvent
from scripts.common import add_run_arguments, end_offsets, partitions_of, run_and_report, run_header

# --- the workload ----------------------------------------------------------------------------------

N_TENANTS = 4
RANKING_DOMAINS_PER_TENANT = 2  # + support, llm, search per tenant: 5 x 4 = 20 domains
SEEKERS_PER_DOMAIN = 400
CANDIDATES_PER_DOMAIN = 3000
SEARCHES_PER_TENANT = 300
CASES_PER_TENANT = 2000
SHARED_POOL = "__shared__"

#: every outcome label: the four built-ins and two tenant-registered ones
LABELS = ("converted", "accepted", "expired", "rejected", "super_like", "ghosted")
LABEL_WEIGHTS = (10, 25, 20, 35, 5, 5)
SEARCH_TYPES = (
    "result_helpful",
    "result_not_helpful",
    "passage_used",
    "read_abandoned",
    "duplicate_result",
    "stale_result",
    "spam_or_low_quality",
    "missing_expected_source",
    "unsafe_or_policy_issue",
)
SEARCH_WEIGHTS = (25, 25, 20, 8, 5, 5, 4, 4, 4)
SCORE_SOURCES = ("sdk", "user_rating", "auto_eval", "seed")
SCORE_SOURCE_WEIGHTS = (40, 20, 20, 20)
#: request kinds and their share of requests
MIX: dict[str, int] = {
    "ranking_1": 30,  # seed 000, 1 item
    "ranking_100": 1,  # seed 000, 100 items over 20 seekers
    "inference": 10,  # seed 002, 1-5 nested items
    "correction": 8,  # seed 001
    "scored": 8,  # seed 003
    "search": 15,  # seed 004
}


def tenant_key(i: int) -> str:
    return f"fs_bench_key_{i}"


def task_id(i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"feedstream-bench-task-{i}"))


def ranking_domains(i: int) -> list[str]:
    return [f"b{i}_rank{j}" for j in range(RANKING_DOMAINS_PER_TENANT)]


def tenants_data(thresholds: dict[str, int], *, rate_limit_rps: int = 100_000) -> dict[str, Any]:
    """The bench tenants; domains missing from ``thresholds`` get 1000."""
    tenants = []
    for i in range(N_TENANTS):
        domains = [*ranking_domains(i), f"b{i}_support", f"b{i}_llm", f"b{i}_search"]
        tenants.append(
            {
                "id": f"bench{i}",
                "api_keys": [hash_api_key(tenant_key(i))],
                "tier": "bench",
                "rate_limit_rps": rate_limit_rps,
                # one tenant also feeds the shared pool, so its path is exercised too
                "feedback_mode": "shared_improvement" if i == N_TENANTS - 1 else "tenant_tuning",
                "default_domains": {
                    "correction": f"b{i}_support",
                    "inference_feedback": f"b{i}_llm",
                    "search_event": f"b{i}_search",
                },
                "domains": {d: {"threshold": thresholds.get(d, 1000)} for d in domains},
                "tasks": {task_id(i): {"threshold": thresholds.get(task_id(i), 1000), "input_fields": None}},
                "labels": {
                    "super_like": {"grade": 2.5, "positive": True},
                    "ghosted": {"grade": 0.5, "positive": False},
                },
            }
        )
    return {"tenants": tenants}


@dataclass
class Request:
    """One API request of a tenant, as the ingest would have validated it."""

    tenant: int
    kind: str
    model: Any  # a contract model, or the seed 002 array
    items: int
    session: str | None = None


class Workload:
    """A seeded, endless source of realistic requests (pools of seekers, cases, searches...)."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.kinds = list(MIX)
        self.weights = list(MIX.values())
        self.searches = [
            [
                (str(uuid.UUID(int=self.rng.getrandbits(128), version=4)), f"query {t}-{s}")
                for s in range(SEARCHES_PER_TENANT)
            ]
            for t in range(N_TENANTS)
        ]

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _item(self, domain: str, seeker: str | None = None) -> dict[str, Any]:
        rng = self.rng
        item: dict[str, Any] = {
            "seeker_id": seeker or f"{domain}_s{rng.randrange(SEEKERS_PER_DOMAIN)}",
            "candidate_id": f"c{rng.randrange(CANDIDATES_PER_DOMAIN)}",
            "outcome": rng.choices(LABELS, LABEL_WEIGHTS)[0],
        }
        if rng.random() < 0.2:
            item["weight"] = round(rng.uniform(0.5, 2.0), 2)
        return item

    def ranking(self, tenant: int, n_items: int) -> Request:
        domain = self.rng.choice(ranking_domains(tenant))
        if n_items == 1:
            items = [self._item(domain)]
        else:  # a batch over 20 seekers
            seekers = [f"{domain}_s{self.rng.randrange(SEEKERS_PER_DOMAIN)}" for _ in range(20)]
            items = [self._item(domain, seekers[k % len(seekers)]) for k in range(n_items)]
        model = RankingOutcomeRequest.model_validate({"domain": domain, "items": items})
        return Request(tenant, f"ranking_{n_items}", model, n_items)

    def inference_items(self, n: int) -> list[dict[str, Any]]:
        rng = self.rng
        out = []
        for _ in range(n):
            feedback: dict[str, Any] = {
                "helpful": rng.random() < 0.7,
                "rating": round(rng.uniform(1, 5), 1),
                "quality": {
                    "accuracy": {"score": rng.randrange(1, 6), "reason": "mostly right"},
                    "tone": {"formal": rng.random() < 0.5, "clarity": round(rng.random(), 2)},
                },
            }
            if rng.random() < 0.3:
                feedback["comment"] = "Answered the question clearly"
            item: dict[str, Any] = {"id": self._uuid(), "feedback": feedback}
            if rng.random() < 0.5:
                item["tags"] = {"evaluator": rng.choice(["human", "llm"]), "task": "question-answering"}
            if rng.random() < 0.2:
                item["optimize"] = "min"
            out.append(item)
        return out

    def next(self) -> Request:
        rng = self.rng
        tenant = rng.randrange(N_TENANTS)
        kind = rng.choices(self.kinds, self.weights)[0]
        if kind == "ranking_1":
            return self.ranking(tenant, 1)
        if kind == "ranking_100":
            return self.ranking(tenant, 100)
        if kind == "inference":
            items = self.inference_items(rng.randint(1, 5))
            return Request(tenant, kind, items, len(items))
        if kind == "correction":
            correction = CorrectionRequest.model_validate(
                {
                    "case_id": f"case-{rng.randrange(CASES_PER_TENANT)}",
                    "module": rng.choice(["intent_classifier", "extract.quote", "router"]),
                    "original_output": {"intent": "billing", "confidence": round(rng.random(), 3)},
                    "corrected_output": {"intent": "refund"},
                    "actor": {"type": "agent", "id": f"agent-{rng.randrange(50)}"},
                }
            )
            return Request(tenant, kind, correction, 1)
        if kind == "scored":
            scored = ScoredOutputRequest.model_validate(
                {
                    "task_id": task_id(tenant),
                    "inputs": {
                        "ticket_text": f"Login fails on browser {rng.randrange(100)}",
                        "priority": "high",
                    },
                    "output": "Authentication issue. Check OAuth token handling.",
                    "score": round(rng.random(), 3),
                    "source": rng.choices(SCORE_SOURCES, SCORE_SOURCE_WEIGHTS)[0],
                    "metadata": {"model": "gpt-4o", "latency_ms": rng.randrange(100, 900)},
                }
            )
            return Request(tenant, kind, scored, 1)
        search_id, query = rng.choice(self.searches[tenant])
        docs = uuid.uuid5(uuid.NAMESPACE_URL, search_id)
        doc_n = rng.randrange(8)
        model = SearchEventRequest.model_validate(
            {
                "event_type": rng.choices(SEARCH_TYPES, SEARCH_WEIGHTS)[0],
                "search_id": search_id,
                "doc_id": str(uuid.uuid5(docs, f"doc{doc_n}")),
                "passage_id": str(uuid.uuid5(docs, f"passage{doc_n}-{rng.randrange(3)}")),
                "rank": doc_n + 1,
                "query": query,
                "agent_context": {"agent": "support-bot", "step": rng.randrange(1, 6)},
            }
        )
        return Request(tenant, kind, model, 1, session=self._uuid())


def envelopes(req: Request, tenant: Tenant, received_at: datetime) -> list[RawEvent]:
    """The raw envelopes of one request, built exactly as the ingest builds them."""
    ctx = intake.Context(tenant, new_request_id(), f"bench-{uuid.uuid4().hex[:12]}", received_at)
    if req.kind.startswith("ranking"):
        result = intake.ranking_outcomes(ctx, req.model)
    elif req.kind == "inference":
        result = intake.inference_feedback(ctx, req.model)
    elif req.kind == "correction":
        result = intake.correction(ctx, req.model)
    elif req.kind == "scored":
        result = intake.scored_output(ctx, req.model)
    else:
        result = intake.search_event(ctx, req.model, req.session)
    if result.rejected:
        raise AssertionError(f"the bench built an invalid {req.kind} request: {result.rejected}")
    return result.events


@dataclass
class Dataset:
    events: list[RawEvent] = field(default_factory=list)
    items: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    contracts: Counter[str] = field(default_factory=Counter)


def build_dataset(workload: Workload, registry: TenantRegistry, n_events: int) -> Dataset:
    data = Dataset()
    tenants = [registry.tenant(f"bench{i}") for i in range(N_TENANTS)]
    now = datetime.now(UTC)
    for _ in range(n_events * 2):  # bounded: every request yields at least one event
        if len(data.events) >= n_events:
            break
        req = workload.next()
        tenant = tenants[req.tenant]
        assert tenant is not None
        events = envelopes(req, tenant, now)
        data.events.extend(events)
        data.items += req.items
        data.requests[req.kind] += 1
        for e in events:
            data.contracts[str(e.contract)] += 1
    return data


def predict_counts(events: list[RawEvent], settings: Settings) -> Counter[str]:
    """Counting units per domain, by replaying the pure expand rules in Kafka's per-key order."""
    limits = Limits(max_items=settings.seeker_max_items, max_age_seconds=settings.seeker_max_age_s)
    history: dict[bytes, SeekerHistory] = {}
    counted: Counter[str] = Counter()
    for event in events:
        result = expand_event(event, history, limits=limits, shared_pool=SHARED_POOL)
        if result.state_key is not None and result.history is not None:
            history[result.state_key] = result.history
        for batch in result.batches:
            counted[batch.domain] += sum(1 for u in batch.units if u.counts)
    return counted


def choose_thresholds(counted: Counter[str], target: int) -> dict[str, int]:
    active = [d for d, n in counted.items() if n > 0]
    per_domain = max(1.0, target / max(1, len(active)))
    return {d: max(1, math.ceil(counted[d] / per_domain)) for d in active}


# --- Kafka helpers ---------------------------------------------------------------------------------


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        if name not in set(await admin.list_topics()):
            await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def produce_all(bootstrap: str, topic: str, events: list[RawEvent]) -> float:
    """Write the envelopes with a plain idempotent producer; returns seconds taken."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=10,
        max_batch_size=512 * 1024,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending: list[asyncio.Future[Any]] = []
        for e in events:
            pending.append(
                await producer.send(
                    topic, envelope.encode(e), key=kafka_key(e), headers=envelope.kafka_headers(e)
                )
            )
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def count_markers(bootstrap: str, topic: str) -> int:
    """Committed-or-aborted transactions that wrote to ``topic``: offsets not taken by a data record.

    Reads the topic read_uncommitted to its end; each transaction leaves one control record on
    every partition it wrote to. Used to count the stages' batches from their changelogs.
    """
    ends = await end_offsets(bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    markers = 0
    try:
        tps = list(ends)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        starts = await consumer.beginning_offsets(tps)
        data = Counter[TopicPartition]()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            todo = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            if not todo:
                break
            batch = await consumer.getmany(*todo, timeout_ms=200, max_records=10_000)
            for tp, recs in batch.items():
                data[tp] += sum(1 for r in recs if r.offset < ends[tp])
        for tp in tps:
            markers += (ends[tp] - starts[tp]) - data[tp]
    finally:
        await consumer.stop()
    return markers


# --- baseline --------------------------------------------------------------------------------------


async def baseline(
    bootstrap: str, raw: str, scratch: str, n_events: int, *, transactional: bool, tag: str, timeout_s: float
) -> dict[str, Any]:
    """Bare consume-transform-produce over the raw topic; per partition and batch like our runtime."""
    group = f"{tag}-baseline-{'tx' if transactional else 'plain'}"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"{group}-0" if transactional else None,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        max_batch_size=256 * 1024,
    )
    await consumer.start()
    await producer.start()
    processed = batches = 0
    try:
        tps = await partitions_of(bootstrap, raw)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        started = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        while processed < n_events and time.monotonic() < deadline:
            got = await consumer.getmany(timeout_ms=50, max_records=500)
            for tp, records in got.items():
                if not records:
                    continue
                if transactional:
                    await producer.begin_transaction()
                futures = []
                for rec in records:
                    value = orjson.dumps(orjson.loads(rec.value or b"null"))
                    futures.append(await producer.send(scratch, value, key=rec.key))
                await asyncio.gather(*futures)
                offsets = {tp: records[-1].offset + 1}
                if transactional:
                    await producer.send_offsets_to_transaction(offsets, group)
                    await producer.commit_transaction()
                else:
                    await consumer.commit(offsets)
                processed += len(records)
                batches += 1
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
        await consumer.stop()
    if processed < n_events:
        raise RuntimeError(f"baseline ({group}) processed {processed}/{n_events} within {timeout_s} s")
    return {"events": processed, "seconds": elapsed, "events_per_s": processed / elapsed, "batches": batches}


# --- observers -------------------------------------------------------------------------------------


class Observer:
    """Reads results and triggers (read_committed, from the beginning) and notes when each appears."""

    def __init__(self, bootstrap: str, names: TopicNames) -> None:
        self.bootstrap = bootstrap
        self.names = names
        self.result_events: set[str] = set()
        self.results_total = 0
        self.triggers: list[tuple[float, dict[str, Any]]] = []  # (wall time seen, trigger)
        self.changed = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20,  # do not add the broker's long-poll wait to the latency we measure
            max_poll_records=10_000,
        )
        await self._consumer.start()
        tps = []
        for topic in (self.names.results, self.names.triggers):
            tps += await partitions_of(self.bootstrap, topic)
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            got = await consumer.getmany(timeout_ms=100)
            seen = time.time()
            for tp, records in got.items():
                for rec in records:
                    value = orjson.loads(rec.value or b"{}")
                    if tp.topic == self.names.results:
                        self.results_total += 1
                        if value.get("event_id"):
                            self.result_events.add(value["event_id"])
                    else:
                        self.triggers.append((seen, value))
            if got:
                self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
        return True

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer:
            await self._consumer.stop()


async def committed_reach(
    bootstrap: str, group: str, ends: dict[TopicPartition, int], timeout_s: float
) -> float | None:
    """Poll a group's committed offsets until they reach ``ends``; the perf_counter time it did."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            offsets = await admin.list_consumer_group_offsets(group, partitions=list(ends))
            if all(offsets.get(tp) is not None and offsets[tp].offset >= end for tp, end in ends.items()):
                return time.perf_counter()
            await asyncio.sleep(0.1)
        return None
    finally:
        await admin.close()


def peak_rss_mib(pid: int) -> tuple[float | None, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "VmHWM"
    except OSError:
        pass
    return None, "unavailable"


class RssSampler:
    """Fallback where /proc has no VmHWM: sample psutil RSS (if installed) every 200 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        try:
            import psutil  # type: ignore[import-untyped]
        except ImportError:
            return
        proc = psutil.Process(self.pid)

        async def sample() -> None:
            while True:
                with contextlib.suppress(Exception):
                    self.peak = max(self.peak, proc.memory_info().rss / 2**20)
                await asyncio.sleep(0.2)

        self._task = asyncio.create_task(sample())

    async def stop(self) -> float | None:
        if self._task is None:
            return None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.peak


def http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


async def wait_ready(svc: Service, timeout_s: float) -> float:
    """Poll /ready every 50 ms (off the loop); the perf_counter time it first answered 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if svc.proc is not None and svc.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {svc.proc.returncode}; see {svc.log_path}")
        if await asyncio.to_thread(http_ready, svc.health_url):
            return time.perf_counter()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"worker not ready after {timeout_s} s; see {svc.log_path}")


# --- paced phase -----------------------------------------------------------------------------------


async def paced(
    bootstrap: str,
    topic: str,
    workload: Workload,
    registry: TenantRegistry,
    *,
    rate: float,
    seconds: float,
) -> tuple[int, float, float]:
    """Produce fresh envelopes at ``rate`` events/s for ``seconds``; (events, wall start, wall end)."""
    tenants = [registry.tenant(f"bench{i}") for i in range(N_TENANTS)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=1)
    await producer.start()
    sent = 0
    budget = int(rate * seconds)
    pending: list[asyncio.Future[Any]] = []
    wall_start = time.time()
    started = time.perf_counter()
    try:
        while sent < budget and time.perf_counter() - started < seconds + 5:
            due = started + sent / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            req = workload.next()
            tenant = tenants[req.tenant]
            assert tenant is not None
            for e in envelopes(req, tenant, datetime.now(UTC)):
                pending.append(
                    await producer.send(
                        topic,
                        envelope.encode(e),
                        key=kafka_key(e),
                        headers=envelope.kafka_headers(e),
                    )
                )
                sent += 1
            if len(pending) > 1000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent, wall_start, time.time()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# --- the run ---------------------------------------------------------------------------------------


async def measure(args: argparse.Namespace, bootstrap: str, broker_kind: str, tag: str) -> dict[str, Any]:
    prefix = f"{tag}."
    log_dir = REPO_ROOT / ".local" / "bench-logs" / tag
    tmp = Path(tempfile.mkdtemp(prefix="feedstream-bench-"))
    tenants_file = tmp / "tenants.yaml"
    base = dict(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, worker_id=f"fs-{tag}")

    print(f"[bench] broker {bootstrap} ({broker_kind}), prefix {prefix}, logs {log_dir}")
    phase: dict[str, float] = {}

    # 1. workload and thresholds
    t = time.perf_counter()
    placeholder = parse_tenants(tenants_data({}))
    workload = Workload(seed=args.seed)
    data = build_dataset(workload, placeholder, args.events)
    counted = predict_counts(data.events, Settings(**base, tenants_file=tenants_file))  # type: ignore[arg-type]
    thresholds = choose_thresholds(counted, args.triggers)
    shared_threshold = thresholds.pop(SHARED_POOL, 1000)
    tenants_file.write_text(yaml.safe_dump(tenants_data(thresholds)))
    registry = parse_tenants(yaml.safe_load(tenants_file.read_text()))
    thresholds[SHARED_POOL] = shared_threshold
    expected_triggers = sum(counted[d] // thresholds[d] for d in counted if counted[d])
    settings = Settings(**base, tenants_file=tenants_file, shared_pool_threshold=shared_threshold)  # type: ignore[arg-type]
    names = topic_names(settings)
    n = len(data.events)
    phase["build_s"] = time.perf_counter() - t
    print(
        f"[bench] {n} events from {sum(data.requests.values())} requests ({data.items} items), "
        f"{sum(counted.values())} counting units over {len(counted)} domains, "
        f"{expected_triggers} triggers expected ({phase['build_s']:.1f} s)"
    )

    # 2. topics and pre-production
    await ensure_topics(bootstrap, settings)
    scratch = prefix + "bench.scratch"
    await create_topic(bootstrap, scratch, settings.topic_partitions)
    phase["produce_s"] = await produce_all(bootstrap, names.raw, data.events)
    raw_ends = await end_offsets(bootstrap, names.raw)
    assert sum(raw_ends.values()) == n, f"raw holds {sum(raw_ends.values())} records, wrote {n}"
    print(f"[bench] pre-produced {n} envelopes in {phase['produce_s']:.1f} s")

    # 3. baselines (before the worker, so they have the machine to themselves)
    base_tx = await baseline(
        bootstrap, names.raw, scratch, n, transactional=True, tag=tag, timeout_s=args.phase_timeout
    )
    base_plain = await baseline(
        bootstrap, names.raw, scratch, n, transactional=False, tag=tag, timeout_s=args.phase_timeout
    )
    print(
        f"[bench] baseline: transactional {base_tx['events_per_s']:.0f} ev/s, "
        f"plain {base_plain['events_per_s']:.0f} ev/s"
    )

    # 4. the worker on the backlog
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        TOPIC_PREFIX=prefix,
        WORKER_ID=settings.worker_id,
        TENANTS_FILE=str(tenants_file),
        SHARED_POOL_THRESHOLD=str(shared_threshold),
    )
    observer = Observer(bootstrap, names)
    await observer.start()
    worker = worker_service(env, free_port(), log_dir)
    result: dict[str, Any] = {}
    try:
        t_spawn = time.perf_counter()
        worker.start()
        assert worker.proc is not None
        sampler = RssSampler(worker.proc.pid)
        if peak_rss_mib(worker.proc.pid)[0] is None:
            sampler.start()
        t_ready = await wait_ready(worker, args.phase_timeout)
        expand_done = asyncio.create_task(
            committed_reach(bootstrap, f"{settings.worker_id}-expand", raw_ends, args.phase_timeout)
        )
        done = await observer.wait_for(lambda: len(observer.result_events) >= n, args.phase_timeout)
        t_done = time.perf_counter()
        t_expand = await expand_done
        if not done:
            raise RuntimeError(
                f"worker produced {len(observer.result_events)}/{n} results within {args.phase_timeout} s; "
                f"see {worker.log_path}"
            )
        stream_s = t_done - t_ready
        # let stragglers (there should be none) arrive, then check exactly-once and the trigger count
        await asyncio.sleep(1.0)
        backlog_triggers = len(observer.triggers)
        events_per_s = n / stream_s
        print(
            f"[bench] worker ready in {t_ready - t_spawn:.1f} s; {n} events through both stages in "
            f"{stream_s:.2f} s ({events_per_s:.0f} ev/s); {backlog_triggers} triggers"
        )

        # 5. paced phase for trigger latency
        rate = args.paced_rate or max(20.0, min(400.0, 0.4 * events_per_s))
        before_results = len(observer.result_events)
        sent, wall_start, _wall_end = await paced(
            bootstrap, names.raw, workload, registry, rate=rate, seconds=args.paced_seconds
        )
        caught_up = await observer.wait_for(
            lambda: len(observer.result_events) >= before_results + sent, args.phase_timeout
        )
        await asyncio.sleep(1.0)
        latencies = [
            (seen - datetime.fromisoformat(trig["emitted_at"]).timestamp()) * 1000
            for seen, trig in observer.triggers[backlog_triggers:]
            if datetime.fromisoformat(trig["emitted_at"]).timestamp() >= wall_start - 1
        ]
        print(
            f"[bench] paced {sent} events at {rate:.0f} ev/s: {len(latencies)} triggers, "
            f"caught up: {caught_up}"
        )

        peak, how = peak_rss_mib(worker.proc.pid)
        if peak is None:
            peak, how = await sampler.stop(), "psutil-sampled"
        else:
            await sampler.stop()
    finally:
        worker.stop()
        await observer.stop()

    expand_tx = await count_markers(bootstrap, names.expand_state)
    count_tx = await count_markers(bootstrap, names.count_state)
    trigger_ids = [t["trigger_id"] for _, t in observer.triggers]
    result = {
        **run_header("scripts.bench", bootstrap, broker_kind),
        "config": {
            "events": n,
            "requests": dict(data.requests),
            "contracts": dict(data.contracts),
            "items": data.items,
            "tenants": N_TENANTS,
            "domains": 5 * N_TENANTS,
            "tasks": N_TENANTS,
            "thresholds": thresholds,
            "topic_partitions": settings.topic_partitions,
            "stage_batch": settings.stage_batch,
            "seed": args.seed,
        },
        "pipeline": {
            "ready_s": t_ready - t_spawn,
            "stream_s": stream_s,
            "expand_done_s": None if t_expand is None else t_expand - t_ready,
            "events_per_s": events_per_s,
            "items_per_s": data.items / stream_s,
            "counting_units": sum(counted.values()),
            "triggers_expected": expected_triggers,
            "triggers_seen": backlog_triggers,
            "results_seen": observer.results_total,
            "duplicate_triggers": len(trigger_ids) - len(set(trigger_ids)),
            "transactions": {
                "expand_at_least": expand_tx,
                "count": count_tx,
                "method": "commit markers on the stages' changelog topics",
            },
        },
        "baseline": {"transactional": base_tx, "plain": base_plain},
        "ratio": {
            "pipeline_vs_transactional_baseline": events_per_s / base_tx["events_per_s"],
            "pipeline_vs_plain_baseline": events_per_s / base_plain["events_per_s"],
        },
        "trigger_latency_ms": {
            "method": "paced phase: wall time a read_committed consumer sees the trigger minus its "
            "emitted_at (= received_at of the crossing event, stamped just before it was produced)",
            "rate_events_per_s": rate,
            "events": sent,
            "samples": len(latencies),
            "p50": percentile(latencies, 0.50),
            "p90": percentile(latencies, 0.90),
            "p99": percentile(latencies, 0.99),
            "max": max(latencies) if latencies else None,
            "caught_up": caught_up,
        },
        "worker_peak_rss_mib": peak,
        "worker_peak_rss_method": how,
        "phases_s": phase,
    }
    return result


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(r: dict[str, Any]) -> str:
    p, b, lat = r["pipeline"], r["baseline"], r["trigger_latency_ms"]
    rows = [
        (
            "run",
            "items/s",
            "events/s",
            "ratio vs tx",
            "trig p50 ms",
            "trig p99 ms",
            "peak RSS MiB",
            "batches",
        ),
        (
            "pipeline (expand+count, EOS)",
            fmt(p["items_per_s"], ".0f"),
            fmt(p["events_per_s"], ".0f"),
            fmt(r["ratio"]["pipeline_vs_transactional_baseline"], ".2f"),
            fmt(lat["p50"], ".0f"),
            fmt(lat["p99"], ".0f"),
            fmt(r["worker_peak_rss_mib"], ".0f"),
            f"{p['transactions']['expand_at_least']}+{p['transactions']['count']}",
        ),
    ]
    items_per_event = r["config"]["items"] / r["config"]["events"]
    for label, key in (("baseline, transactional", "transactional"), ("baseline, plain", "plain")):
        rows.append(
            (
                label,
                fmt(b[key]["events_per_s"] * items_per_event, ".0f"),
                fmt(b[key]["events_per_s"], ".0f"),
                fmt(b[key]["events_per_s"] / b["transactional"]["events_per_s"], ".2f"),
                "",
                "",
                "",
                str(b[key]["batches"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    notes = [
        "batches: transactions (expand+count) from commit markers on the changelogs; baseline: per partition",
        "ratio vs tx = events/s / events/s of the transactional baseline (same raw data, same run); "
        f"pipeline / plain baseline = {r['ratio']['pipeline_vs_plain_baseline']:.2f}; "
        f"{r['config']['events']} events, {r['config']['items']} items, nproc {r['nproc']}",
        f"worker ready in {p['ready_s']:.1f} s (excluded); stream {p['stream_s']:.2f} s; triggers "
        f"{p['triggers_seen']} (expected {p['triggers_expected']}); trigger latency over "
        f"{lat['samples']} triggers at {lat['rate_events_per_s']:.0f} ev/s paced",
    ]
    return "\n".join([*lines, "", *notes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="raw events of the throughput phase")
    parser.add_argument("--triggers", type=int, default=300, help="about how many triggers the backlog fires")
    parser.add_argument("--paced-rate", type=float, default=0.0, help="events/s (default: 40%% of measured)")
    parser.add_argument("--paced-seconds", type=float, default=20.0)
    parser.add_argument("--phase-timeout", type=float, default=150.0, help="bound on each phase, seconds")
    add_run_arguments(parser, "bench", seed=7)
    result = run_and_report("bench", measure, parser.parse_args(argv), table)
    ok = (
        result["pipeline"]["triggers_seen"] == result["pipeline"]["triggers_expected"]
        and result["pipeline"]["duplicate_triggers"] == 0
        and result["trigger_latency_ms"]["caught_up"]
    )
    if not ok:
        print("WARNING: trigger count or catch-up check failed (see JSON)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
