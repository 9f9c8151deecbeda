"""Stream benchmark: the stream's events/s and CPU per event beside a raw aiokafka loop, trigger latency
and worker memory, on a real broker.

Run with ``make bench`` (``python -m scripts.bench [--events N] [--rounds N]
[--runs tx,plain,chain,chainlog,chainfan,chain1,combined,stage1,stage2] [--seekers 1000000] [--profile DIR]
[--out bench-results/bench.json]``).

All against the broker of ``pipeline.kafka.broker.find_broker``; every run has topics and groups of
its own (``<tag>.<run>.``), deleted at the end unless ``--keep-topics``.

1. Writes a tenants file (4 tenants, 20 domains, 4 seed 003 tasks, keys hashed with
   ``hash_api_key``) and builds a realistic mix of raw envelopes with ``pipeline.api.intake``: seed 000
   requests of 1 item and of 100 items over many seekers and candidates with every outcome label
   (built-in and tenant-registered), seed 002 nested feedback arrays, seed 001 corrections, seed 003
   scored entries (some ``source: seed``, which never count) and seed 004 search events of all nine
   types. The expand rules are replayed in memory (``pipeline.contracts.expand_event``) to know how
   many counting units each domain will get; thresholds are then chosen so that about
   ``--triggers`` train triggers fire on the data set, and every pipeline run checks that exactly
   the predicted number did, none twice.
2. One clock for every row (``CLOCK`` below, printed with the table): the processors are started and
   settled (ready, owning every partition, idle on empty input); the data set is written in one open
   Kafka transaction, invisible to their read_committed consumers; t0; commit; t1 when a
   read_committed reader has seen the last output. Rows: a bare aiokafka consume-transform-produce
   loop (orjson decode and re-encode, per partition and batch like ``pipeline.stream.runtime``),
   transactional (the baseline) and plain; a bare two-hop chain (raw -> mid -> out, one process per
   hop, Kafka clients made as the stage runtime makes them) with a transactional producer per input
   partition, the input offsets sent to the transaction (``chain``) or written as a record of it
   (``chainlog``, the stage runtime's way), the same writing as many records per event as the
   stages do, without their rules (``chainfan``: expand's signals and history writes, count's
   training units, from the rules replayed on the data set), and with one producer per process
   (``chain1``, the shape exactly-once v2 would allow; a baseline only); the pipeline with expand and
   count in one process; one process per stage; two per stage on the same partitions. CPU:
   utime+stime of the processor processes over t0..t1 from ``/proc/<pid>/stat`` (the loops run in a
   child process); peak RSS: ``VmHWM`` of each. The store stage is not part of the stream here
   (``scripts.store_bench``).
3. Trigger latency, in the one-process-per-stage run after its throughput phase: paced at
   ``--paced-rate`` (400) events/s and at 80 % of that run's events/s, each event built beforehand
   and stamped ``received_at`` = now (and encoded) just before it is sent. The count stage stamps a
   trigger's ``emitted_at`` with the ``received_at`` of the event whose units crossed the
   threshold, so ``latency = (wall time a read_committed consumer first sees the trigger) -
   emitted_at``: producer append, expand
   transaction, count transaction, visibility downstream. Each chain row runs a paced phase at the
   same rate of records stamped with their sending time: its latency (seen on ``out`` by a
   read_committed reader - sent) is what two exactly-once hops cost on this stack in the same round,
   the floor under the trigger latency.
4. ``--seekers N``: an expand-only worker takes one outcome each of N distinct seekers; its VmRSS
   once its group committed them, minus its VmRSS settled on empty topics, is the memory per seeker
   (``python -m scripts.state_size`` measures the same in process with tracemalloc).
5. ``--profile DIR``: ``py-spy record`` on each worker process during the throughput phase of every
   pipeline run (their rows say so: py-spy's sampling costs CPU on a small machine, so compare
   them with care); the top self and inclusive lines are printed (``scripts.topprof``).

Every phase is bounded in time (``--phase-timeout``); all traffic goes to the broker and 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import msgspec
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
from pipeline.stream.partitions import KafkaClients
from pipeline.tenants import Tenant, TenantRegistry, hash_api_key, parse_tenants
from pipeline.wire import envelope
from pipeline.wire.envelope import RawEvent
from scripts.common import add_run_arguments, end_offsets, partitions_of, run_and_report, run_header
from scripts.topprof import summarise

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


def predict_counts(events: list[RawEvent], settings: Settings) -> tuple[Counter[str], tuple[float, float]]:
    """Counting units per domain, by replaying the pure expand rules in Kafka's per-key order; and
    the records per event each stage writes beyond one (``Bench.fanout``)."""
    limits = Limits(max_items=settings.seeker_max_items, max_age_seconds=settings.seeker_max_age_s)
    history: dict[bytes, SeekerHistory] = {}
    counted: Counter[str] = Counter()
    signals = histories = units = 0
    for event in events:
        result = expand_event(event, history, limits=limits, shared_pool=SHARED_POOL)
        if result.state_key is not None and result.history is not None:
            history[result.state_key] = result.history
        signals += len(result.signals)
        histories += result.state_key is not None
        for batch in result.batches:
            counted[batch.domain] += sum(1 for u in batch.units if u.counts)
            units += len(batch.units)
    n = max(1, len(events))
    return counted, ((signals + histories) / n, units / n)


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


# --- processes: CPU and memory from /proc ----------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (all its threads), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()  # fields from 3 (state) on; the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime (14), stime (15)


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (every core, every process), from ``/proc/stat``:
    what else ran during a timed phase (the broker, this process, other users) shows beside ours."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def status_mib(pid: int, key: str) -> float | None:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of a process in MiB, None if unavailable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@dataclass
class Proc:
    """A process of a run whose CPU and memory the bench reads (a worker, or a baseline loop)."""

    name: str
    pid: int
    stop: Callable[[], object]
    cpu_at_t0: float = 0.0
    cpu_s: float = 0.0  # over the timed phase
    peak_rss_mib: float | None = None

    def mark(self) -> None:
        self.cpu_at_t0 = cpu_seconds(self.pid)

    def measure(self) -> None:
        self.cpu_s = cpu_seconds(self.pid) - self.cpu_at_t0
        self.peak_rss_mib = status_mib(self.pid, "VmHWM")


# --- the baseline loops, each in a child process (its CPU measured like a worker's) ---------------


async def baseline_loop(
    conn: Connection,
    bootstrap: str,
    raw: str,
    scratch: str,
    group: str,
    transactional: bool,
    n_events: int,
    timeout_s: float,
) -> dict[str, Any]:
    """Bare consume-transform-produce over the raw topic, per partition and batch like our runtime
    (read_committed, ``orjson`` decode and re-encode, a transaction per partition and batch that also
    commits the input offsets, or an idempotent producer and consumer commits). Says "ready" on
    ``conn`` once it owns every partition and found the input empty."""
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
        await consumer.getmany(timeout_ms=200)  # positions known, input empty
        conn.send("ready")
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
    finally:
        await producer.stop()
        await consumer.stop()
    return {"events": processed, "batches": batches}


def child_main(
    conn: Connection, loop: Callable[..., Coroutine[Any, Any, dict[str, Any]]], *args: Any
) -> None:
    """Entry point of a baseline's child process (a loop or a chain's hop): run it, send its result."""
    try:
        conn.send(asyncio.run(loop(conn, *args)))
    except BaseException as exc:
        conn.send({"error": repr(exc)})
        raise


# --- the raw two-stage chain: what two exactly-once hops cost on this stack ------------------------


async def chain_stage(
    conn: Connection,
    bootstrap: str,
    src: str,
    dst: str,
    group: str,
    per_partition: bool,
    offsets_to: str = "",
    side: str = "",
    fanout: float = 0.0,
) -> dict[str, Any]:
    """One hop of a bare two-stage chain: ``src`` read_committed, each record re-encoded (orjson) to
    ``dst`` with its key, the input offsets in the same transaction; Kafka clients made as the stage
    runtime makes them (``KafkaClients``: the same poll, linger and retry settings).

    ``per_partition``: a transactional producer per input partition and the partitions pipelined
    (no barrier between them), the shape of ``pipeline.stream`` (exactly-once v1). Otherwise one
    producer for the process and one transaction per poll over every partition: the shape
    exactly-once v2 (KIP-447) allows, which aiokafka 0.14 cannot make safe on a rebalance, so it is a
    baseline here, never a design. ``offsets_to``: the input offsets go to that topic as records of
    the transaction (the stage runtime's changelog record) instead of ``send_offsets_to_transaction``.
    ``fanout``: besides each record to ``dst``, that many more (on average) of the same to ``side``
    in the same transaction, so a hop writes as many records as a stage does, without its rules.
    Says "ready" once it owns every partition, runs until "stop"."""
    clients = KafkaClients(bootstrap, poll_ms=10)
    consumer = cast(AIOKafkaConsumer, clients.consumer(group, f"{group}-consumer", max_poll_records=500))
    tps = await partitions_of(bootstrap, src)
    producers = {tp: clients.producer(f"{group}-{tp.partition}") for tp in tps} if per_partition else {}
    single = None if per_partition else clients.producer(f"{group}-0")
    await consumer.start()
    for producer in [*producers.values(), single]:
        if producer is not None:
            await producer.start()
    processed = transactions = 0
    cycles: list[tuple[float, float, int]] = []  # (wall time begun, seconds, input records)

    owed = 0.0  # side records owed: ``fanout`` per input record, sent once whole

    async def commit(producer: Any, batch: dict[TopicPartition, list[Any]]) -> None:
        nonlocal processed, transactions, owed
        begun, started = time.time(), time.perf_counter()
        await producer.begin_transaction()
        for records in batch.values():
            for rec in records:
                value = orjson.dumps(orjson.loads(rec.value or b"null"))
                await producer.send(dst, value, key=rec.key)
                owed += fanout
                while owed >= 1.0:
                    await producer.send(side, value, key=rec.key)
                    owed -= 1.0
        # the offsets beside the records, not after their acks (as the stage runtime does)
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
        if offsets_to:  # a record of the transaction itself
            for tp, offset in offsets.items():
                await producer.send(
                    offsets_to, str(offset).encode(), key=group.encode(), partition=tp.partition
                )
        else:
            await producer.send_offsets_to_transaction(offsets, group)
        await producer.commit_transaction()
        n = sum(len(records) for records in batch.values())
        cycles.append((begun, time.perf_counter() - started, n))
        processed += n
        transactions += 1

    inflight: dict[TopicPartition, asyncio.Task[None]] = {}
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        await consumer.getmany(timeout_ms=200)  # positions known, input empty
        conn.send("ready")
        while not conn.poll():
            for tp, task in list(inflight.items()):
                if task.done():
                    del inflight[tp]
                    task.result()
            active = [tp for tp in tps if tp not in inflight]
            if not active:
                await asyncio.wait(inflight.values(), timeout=0.01, return_when=asyncio.FIRST_COMPLETED)
                continue
            got = await consumer.getmany(*active, timeout_ms=10, max_records=500 * len(active))
            got = {tp: records for tp, records in got.items() if records}
            if not got:
                continue
            if single is None:
                for tp, records in got.items():
                    inflight[tp] = asyncio.create_task(commit(producers[tp], {tp: records}))
            else:
                await commit(single, got)
        await asyncio.gather(*inflight.values())
    finally:
        for producer in [*producers.values(), single]:
            if producer is not None:
                await producer.stop()
        await consumer.stop()
    return {"events": processed, "batches": transactions, "cycles": cycles}


async def receive(conn: Connection, timeout_s: float) -> Any:
    """The next message from a child, waited for off the loop; TimeoutError after ``timeout_s``."""
    if not await asyncio.to_thread(conn.poll, timeout_s):
        raise TimeoutError(f"no word from a baseline process within {timeout_s} s")
    return conn.recv()


# --- the pipeline's worker processes --------------------------------------------------------------


#: The stage runtime's cadence metrics: (count, sum) of each, by stage.
CADENCE_METRICS = ("feedstream_stage_transaction_seconds", "feedstream_stage_batch_records")


def cadence_totals(services: list[Service]) -> dict[str, dict[str, float]]:
    """The workers' cadence histograms summed by stage: ``{stage: {"<metric>_count": n, ...}}``."""
    totals: dict[str, dict[str, float]] = {}
    for svc in services:
        url = svc.health_url.rsplit("/", 1)[0] + "/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            name, _, rest = line.partition("{")
            if not name.endswith(("_count", "_sum")) or not name.startswith(CADENCE_METRICS):
                continue
            labels, _, value = rest.rpartition("} ")
            stage = labels.split('stage="', 1)[1].split('"', 1)[0]
            totals.setdefault(stage, {})
            totals[stage][name] = totals[stage].get(name, 0.0) + float(value)
    return totals


def cadence(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], seconds: float
) -> dict[str, Any]:
    """Each stage's committed transactions between two readings: per second, mean wall ms, mean
    input records (what a record waits for: the transaction in flight, then its own)."""
    out: dict[str, Any] = {}
    for stage, now in after.items():
        was = before.get(stage, {})
        tx, tx_s, batch_n, batch_sum = (
            now.get(f"{m}{suffix}", 0.0) - was.get(f"{m}{suffix}", 0.0)
            for m in CADENCE_METRICS
            for suffix in ("_count", "_sum")
        )
        if tx:
            out[stage] = {
                "transactions_per_s": tx / seconds,
                "mean_ms": 1000 * tx_s / tx,
                "mean_records": batch_sum / batch_n if batch_n else None,
            }
    return out


def hop_cadence(cycles: list[tuple[float, float, int]], start: float, end: float) -> dict[str, Any]:
    """A chain hop's transactions begun in [start, end) (wall time), as :func:`cadence` gives a stage's."""
    within = [(s, n) for begun, s, n in cycles if start <= begun < end]
    return {
        "transactions_per_s": len(within) / (end - start),
        "mean_ms": 1000 * sum(s for s, _ in within) / len(within) if within else None,
        "mean_records": sum(n for _, n in within) / len(within) if within else None,
    }


def ready_body(url: str) -> dict[str, Any]:
    """``/ready``'s JSON (200 or 503), {} while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body: dict[str, Any] = orjson.loads(resp.read())
            return body
    except urllib.error.HTTPError as err:
        with contextlib.suppress(orjson.JSONDecodeError):
            failed: dict[str, Any] = orjson.loads(err.read())
            return failed
        return {}
    except OSError:
        return {}


def settled(bodies: list[dict[str, Any]], layout: list[tuple[str, ...]], partitions: int) -> bool:
    """Every process ready, and each stage's partitions owned exactly once between its processes, each
    process some (the stage's consumer group has settled)."""
    if not all(b.get("ready") for b in bodies):
        return False
    for stage in {s for stages in layout for s in stages}:
        owned = [b.get(stage, []) for b, stages in zip(bodies, layout, strict=True) if stage in stages]
        if not all(owned) or sorted(p for ps in owned for p in ps) != list(range(partitions)):
            return False
    return True


async def wait_settled(
    services: list[Service], layout: list[tuple[str, ...]], partitions: int, timeout_s: float
) -> float:
    """Until the processes are ready and own their stages' partitions between them, twice in a row
    0.3 s apart; seconds waited."""
    started = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    in_a_row = 0
    while time.monotonic() < deadline:
        for svc in services:
            if svc.proc is not None and svc.proc.poll() is not None:
                raise RuntimeError(f"{svc.name} exited with {svc.proc.returncode}; see {svc.log_path}")
        bodies = await asyncio.to_thread(lambda: [ready_body(s.health_url) for s in services])
        in_a_row = in_a_row + 1 if settled(bodies, layout, partitions) else 0
        if in_a_row >= 2:
            return time.perf_counter() - started
        await asyncio.sleep(0.3)
    raise TimeoutError(f"workers not settled after {timeout_s} s; see {services[0].log_path.parent}")


# --- input, output -------------------------------------------------------------------------------

#: a raw record: (value, key, headers)
RawRecord = tuple[bytes, bytes | None, list[tuple[str, bytes]]]


def raw_records(events: list[RawEvent]) -> list[RawRecord]:
    return [(envelope.encode(e), kafka_key(e), envelope.kafka_headers(e)) for e in events]


class HeldInput:
    """The data set written in one open transaction: invisible to read_committed readers (every
    processor here reads so) until :meth:`release` commits it, so the clock can start with the
    processors idle and nothing of the writing on it."""

    def __init__(self, bootstrap: str, topic: str, transactional_id: str) -> None:
        self.topic = topic
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            transactional_id=transactional_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=10,
            max_batch_size=512 * 1024,
            transaction_timeout_ms=120_000,
        )
        self.started = False

    async def write(self, records: list[RawRecord]) -> float:
        """Begin, write every record and wait for the acks; seconds taken."""
        started = time.perf_counter()
        await self.producer.start()
        self.started = True
        await self.producer.begin_transaction()
        pending: list[asyncio.Future[Any]] = []
        for value, key, headers in records:
            pending.append(await self.producer.send(self.topic, value, key=key, headers=headers))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return time.perf_counter() - started

    async def release(self) -> None:
        await self.producer.commit_transaction()

    async def close(self) -> None:
        if self.started:
            await self.producer.stop()


class Observer:
    """Reads topics read_committed from the beginning and notes what appears when: results (by
    event id), triggers (with the wall time first seen), the latency of stamped records (a chain's
    output: wall time seen - the ``sent`` in its value) and a record count per topic."""

    def __init__(
        self, bootstrap: str, topics: list[str], *, results: str = "", triggers: str = "", stamped: str = ""
    ) -> None:
        self.bootstrap, self.topics = bootstrap, topics
        self.results_topic, self.triggers_topic, self.stamped_topic = results, triggers, stamped
        self.stamps_ms: list[float] = []
        self.counts: Counter[str] = Counter()
        self.result_events: set[str] = set()
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
            fetch_max_wait_ms=20,  # do not add the broker's long-poll wait to what we measure
            max_poll_records=10_000,
        )
        await self._consumer.start()
        tps = []
        for topic in self.topics:
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
                self.counts[tp.topic] += len(records)
                if tp.topic == self.results_topic:
                    for rec in records:
                        event_id = orjson.loads(rec.value or b"{}").get("event_id")
                        if event_id:
                            self.result_events.add(event_id)
                elif tp.topic == self.triggers_topic:
                    self.triggers += [(seen, orjson.loads(rec.value or b"{}")) for rec in records]
                elif tp.topic == self.stamped_topic:
                    for rec in records:
                        value = orjson.loads(rec.value or b"null")
                        if isinstance(value, dict) and "sent" in value:
                            self.stamps_ms.append((seen - value["sent"]) * 1000)
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
            await asyncio.sleep(0.2)
        return None
    finally:
        await admin.close()


# --- profiling ------------------------------------------------------------------------------------


class Profiler:
    """``py-spy record`` (the venv's) on each process from :meth:`start` until :meth:`stop` (SIGINT:
    py-spy then writes its collapsed stacks)."""

    def __init__(self, out_dir: Path | None) -> None:
        self.out_dir = out_dir
        self.running: list[tuple[subprocess.Popen[bytes], Path]] = []

    def launch(self, procs: list[Proc], run: str) -> bool:
        """Start py-spy on each process (outputs ``DIR/<run>-<process>.txt``); False without a DIR."""
        if self.out_dir is None:
            return False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        py_spy = Path(sys.executable).parent / "py-spy"
        for p in procs:
            out = self.out_dir / f"{run}-{p.name}.txt"
            argv = [str(py_spy), "record", "-p", str(p.pid), "-r", "200", "-f", "raw", "-o", str(out)]
            with (self.out_dir / f"{run}-{p.name}.py-spy.log").open("wb") as log:
                proc = subprocess.Popen([*argv, "--nonblocking"], stdout=log, stderr=subprocess.STDOUT)
            self.running.append((proc, out))
        return True

    async def start(self, procs: list[Proc], run: str) -> None:
        if self.launch(procs, run):
            await asyncio.sleep(1.0)  # py-spy attaches

    async def stop(self) -> list[Path]:
        done = []
        for proc, out in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)
            if out.exists():
                done.append(out)
        self.running.clear()
        return done


# --- one run: processors started and settled, t0, input released, t1 at the last output -----------


@dataclass
class Run:
    """One row of the table: which processors, on topics and groups of its own."""

    key: str
    label: str
    layout: list[tuple[str, ...]] = field(default_factory=list)  # worker processes' stages; [] = a loop
    transactional: bool = True
    #: a raw two-stage chain: "partition" (a producer per input partition), "log" (the same, offsets as
    #: records), "process" (one producer per process)
    chain: str = ""
    #: a chain whose hops write as many records per event as the stages do (``Bench.fanout``)
    fanout: bool = False


RUNS = {
    "tx": Run("tx", "raw aiokafka loop, transactional (baseline)"),
    "plain": Run("plain", "raw aiokafka loop, plain", transactional=False),
    "chain": Run(
        "chain", "raw 2-stage chain, producer per partition, offsets to the group", chain="partition"
    ),
    "chainlog": Run("chainlog", "raw 2-stage chain, producer per partition, offsets as records", chain="log"),
    "chain1": Run("chain1", "raw 2-stage chain, 1 producer per process", chain="process"),
    "chainfan": Run(
        "chainfan", "raw 2-stage chain as chainlog, the stages' records per event", chain="log", fanout=True
    ),
    "combined": Run("combined", "pipeline, expand+count in 1 process", [("expand", "count")]),
    "stage1": Run("stage1", "pipeline, 1 process per stage", [("expand",), ("count",)]),
    "stage2": Run(
        "stage2", "pipeline, 2 processes per stage", [("expand",), ("expand",), ("count",), ("count",)]
    ),
}


@dataclass
class Bench:
    """What every run shares: the broker, the data set, the tenants, the bounds."""

    args: argparse.Namespace
    bootstrap: str
    tag: str
    tenants_file: Path
    shared_threshold: int
    records: list[RawRecord]
    expected_triggers: int
    workload: Workload
    registry: TenantRegistry
    profiler: Profiler
    #: the stages' records per raw event beyond one each (expand: signals and history writes;
    #: count: training units beyond the result), from the rules replayed on the data set
    fanout: tuple[float, float] = (0.0, 0.0)
    round: int = 1  # --rounds: every round on topics and groups of its own

    def key(self, run: str) -> str:
        """``run``'s name in this round's topics, groups and logs."""
        return run if self.round == 1 else f"{run}-r{self.round}"

    def settings(self, run: str) -> Settings:
        return Settings(
            kafka_bootstrap_servers=self.bootstrap,
            topic_prefix=f"{self.tag}.{self.key(run)}.",
            worker_id=f"fs-{self.tag}-{self.key(run)}",
            tenants_file=self.tenants_file,
            shared_pool_threshold=self.shared_threshold,
        )

    def env(self, settings: Settings) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_", "WORKER_STAGES"))}
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            TOPIC_PREFIX=settings.topic_prefix,
            WORKER_ID=settings.worker_id,
            TENANTS_FILE=str(self.tenants_file),
            SHARED_POOL_THRESHOLD=str(self.shared_threshold),
        )
        return env


async def timed(
    bench: Bench,
    run: str,
    procs: list[Proc],
    held: HeldInput,
    observer: Observer,
    done: Callable[[], bool],
    *,
    profile: bool = False,
) -> tuple[float, float, bool]:
    """The clock: processors settled and idle, CPU noted, t0, input committed (visible at once),
    until ``done`` (the last output visible to ``observer``), t1, CPU noted; (seconds, the machine's
    busy CPU seconds meanwhile, finished).
    ``profile``: under py-spy (with ``--profile``), its summaries printed afterwards."""
    if profile:
        await bench.profiler.start(procs, run)
    for p in procs:
        p.mark()
    busy = machine_busy_s()
    t0 = time.perf_counter()
    await held.release()
    finished = await observer.wait_for(done, bench.args.phase_timeout)
    seconds = time.perf_counter() - t0
    busy = machine_busy_s() - busy
    for p in procs:
        p.measure()
    for out in await bench.profiler.stop():
        print(summarise(out, bench.args.profile_top))
    return seconds, busy, finished


def row(run: Run, n: int, seconds: float, busy: float, procs: list[Proc]) -> dict[str, Any]:
    cpu = sum(p.cpu_s for p in procs)
    return {
        "label": run.label,
        "processes": len(procs),
        "events": n,
        "seconds": seconds,
        "events_per_s": n / seconds,
        "cpu_s": cpu,
        "cpu_s_per_1k_events": 1000 * cpu / n,
        "events_per_cpu_s": n / cpu if cpu else None,
        "cpu_by_process": {p.name: p.cpu_s for p in procs},
        "peak_rss_mib": {p.name: p.peak_rss_mib for p in procs},
        "machine_busy_cores": busy / seconds,
        "other_busy_cores": (busy - cpu) / seconds,  # broker, this process, anything else running
    }


@dataclass
class Child:
    """A baseline's child process (``child_main``) and our end of its pipe."""

    conn: Connection
    process: multiprocessing.process.BaseProcess
    proc: Proc

    @classmethod
    def start(cls, name: str, loop: Callable[..., Coroutine[Any, Any, dict[str, Any]]], *args: Any) -> Child:
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        process = ctx.Process(target=child_main, args=(theirs, loop, *args), daemon=True)
        process.start()
        assert process.pid is not None
        return cls(ours, process, Proc(name, process.pid, process.terminate))

    def reap(self) -> None:
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


async def released(
    bench: Bench,
    run: Run,
    children: list[Child],
    held: HeldInput,
    observer: Observer,
    done: Callable[[], bool],
) -> tuple[float, float, float, bool]:
    """The children ready, the observer reading, the data set written and then released on the
    bench's clock (``timed``); (seconds writing it, seconds, busy CPU seconds, finished)."""
    for child in children:
        if (said := await receive(child.conn, bench.args.phase_timeout)) != "ready":
            raise RuntimeError(f"{run.label}: {said}")
    await observer.start()
    write_s = await held.write(bench.records)
    seconds, busy, finished = await timed(
        bench, bench.key(run.key), [c.proc for c in children], held, observer, done
    )
    return write_s, seconds, busy, finished


async def loop_run(bench: Bench, run: Run) -> dict[str, Any]:
    settings = bench.settings(run.key)
    names = topic_names(settings)
    scratch = settings.topic_prefix + "bench.scratch"
    await ensure_topics(bench.bootstrap, settings)
    await create_topic(bench.bootstrap, scratch, settings.topic_partitions)
    n = len(bench.records)
    held = HeldInput(bench.bootstrap, names.raw, f"{bench.tag}-{bench.key(run.key)}-input")
    observer = Observer(bench.bootstrap, [scratch])
    group = f"{bench.tag}-{bench.key(run.key)}-loop"
    args = (bench.bootstrap, names.raw, scratch, group, run.transactional, n, bench.args.phase_timeout)
    child = Child.start("loop", baseline_loop, *args)
    try:
        write_s, seconds, busy, finished = await released(
            bench, run, [child], held, observer, lambda: observer.counts[scratch] >= n
        )
        loop = await receive(child.conn, 30)
        if not finished or loop.get("events") != n:
            raise RuntimeError(f"{run.label}: {observer.counts[scratch]}/{n} outputs seen, loop says {loop}")
        print(f"[bench] {run.label}: {n / seconds:.0f} ev/s ({seconds:.2f} s)")
        return row(run, n, seconds, busy, [child.proc]) | {
            "batches": loop["batches"],
            "input_write_s": write_s,
        }
    finally:
        await held.close()
        await observer.stop()
        child.reap()


async def chain_run(bench: Bench, run: Run) -> dict[str, Any]:
    """Two bare hops (``chain_stage``), each in a child process, raw -> mid -> out: the data set's
    events/s and CPU on the bench's clock, then a paced phase at ``--paced-rate`` of stamped records
    (``{"sent": wall time}``, the data set's keys) whose latency is (wall time a read_committed
    reader first sees it on ``out``) - ``sent``: what two exactly-once hops cost on this stack, the
    floor under the pipeline's trigger latency (which adds the stages' work and a third topic)."""
    settings = bench.settings(run.key)
    names = topic_names(settings)
    mid, out = settings.topic_prefix + "bench.mid", settings.topic_prefix + "bench.out"
    await ensure_topics(bench.bootstrap, settings)
    offsets_to = settings.topic_prefix + "bench.offsets" if run.chain == "log" else ""
    sides = [settings.topic_prefix + f"bench.side{i + 1}" if run.fanout else "" for i in range(2)]
    for topic in (mid, out, offsets_to, *sides):
        if topic:
            await create_topic(bench.bootstrap, topic, settings.topic_partitions)
    n = len(bench.records)
    held = HeldInput(bench.bootstrap, names.raw, f"{bench.tag}-{bench.key(run.key)}-input")
    observer = Observer(bench.bootstrap, [out], stamped=out)
    hops = [
        Child.start(
            f"hop{i + 1}",
            chain_stage,
            bench.bootstrap,
            src,
            dst,
            f"{bench.tag}-{bench.key(run.key)}-hop{i + 1}",
            run.chain != "process",
            offsets_to,
            sides[i],
            bench.fanout[i] if run.fanout else 0.0,
        )
        for i, (src, dst) in enumerate(((names.raw, mid), (mid, out)))
    ]
    procs = [hop.proc for hop in hops]
    try:
        write_s, seconds, busy, finished = await released(
            bench, run, hops, held, observer, lambda: observer.counts[out] >= n
        )
        if not finished:
            raise RuntimeError(f"{run.label}: {observer.counts[out]}/{n} outputs seen")
        print(f"[bench] {run.label}: {n / seconds:.0f} ev/s ({seconds:.2f} s)")
        result = row(run, n, seconds, busy, procs) | {"input_write_s": write_s}
        rate = bench.args.paced_rate
        keys = [key for _, key, _ in bench.records]
        stamped: Iterator[list[RawRecord]] = (
            [(orjson.dumps({"sent": time.time()}), keys[i % n], [])] for i in itertools.count()
        )
        budget = int(rate * bench.args.paced_seconds)
        sent, produced_s, wall_start = await pace(bench, names.raw, rate, budget, stamped)
        caught_up = await observer.wait_for(lambda: len(observer.stamps_ms) >= sent, bench.args.phase_timeout)
        print(f"[bench] {run.label}: paced {sent} records at {rate:.0f}/s, caught up: {caught_up}")
        phase = latency_phase(rate, sent, produced_s, observer.stamps_ms, caught_up)
        for hop in hops:
            hop.conn.send("stop")
        said = [await receive(hop.conn, 30) for hop in hops]
        if any("error" in each for each in said):
            raise RuntimeError(f"{run.label}: {said}")
        result["batches"] = sum(each["batches"] for each in said)
        phase["cadence"] = {
            f"hop{i + 1}": hop_cadence(each["cycles"], wall_start, wall_start + produced_s)
            for i, each in enumerate(said)
        }
        result["latency_ms"] = [phase]
        for p in procs:
            p.peak_rss_mib = status_mib(p.pid, "VmHWM")
        result["peak_rss_mib"] = {p.name: p.peak_rss_mib for p in procs}
        return result
    finally:
        await held.close()
        await observer.stop()
        for hop in hops:
            hop.reap()


async def pipeline_run(bench: Bench, run: Run, paced_at: list[float] | None = None) -> dict[str, Any]:
    """The worker processes of ``run.layout`` on the data set; with ``paced_at``, trigger latency
    phases at those rates afterwards (the rate 0 stands for 80 % of this run's events/s)."""
    settings = bench.settings(run.key)
    names = topic_names(settings)
    await ensure_topics(bench.bootstrap, settings)
    n = len(bench.records)
    log_dir = REPO_ROOT / ".local" / "bench-logs" / bench.tag / bench.key(run.key)
    env = bench.env(settings)
    held = HeldInput(bench.bootstrap, names.raw, f"{bench.tag}-{bench.key(run.key)}-input")
    observer = Observer(
        bench.bootstrap, [names.results, names.triggers], results=names.results, triggers=names.triggers
    )
    services: list[Service] = []
    procs: list[Proc] = []
    seen: Counter[str] = Counter()
    try:
        t_spawn = time.perf_counter()
        for stages in run.layout:
            name = "+".join(stages)
            seen[name] += 1
            name = f"{name}-{seen[name]}" if run.layout.count(stages) > 1 else name
            svc = worker_service(env, free_port(), log_dir, name=name, stages=stages).start()
            services.append(svc)
            assert svc.proc is not None
            procs.append(Proc(name, svc.proc.pid, svc.stop))
        await wait_settled(services, run.layout, settings.topic_partitions, bench.args.phase_timeout)
        ready_s = time.perf_counter() - t_spawn
        await observer.start()
        write_s = await held.write(bench.records)
        seconds, busy, finished = await timed(
            bench,
            bench.key(run.key),
            procs,
            held,
            observer,
            lambda: len(observer.result_events) >= n,
            profile=bench.args.profile is not None,
        )
        if not finished:
            raise RuntimeError(
                f"{run.label}: {len(observer.result_events)}/{n} results within "
                f"{bench.args.phase_timeout} s; see {log_dir}"
            )
        await asyncio.sleep(1.0)  # stragglers (there should be none): duplicates, extra triggers
        backlog = len(observer.triggers)
        print(f"[bench] {run.label}: {n / seconds:.0f} ev/s ({seconds:.2f} s), {backlog} triggers")
        result = row(run, n, seconds, busy, procs) | {
            "ready_s": ready_s,
            "profiled": bench.args.profile is not None,
            "input_write_s": write_s,
            "results_seen": observer.counts[names.results],
            "triggers_expected": bench.expected_triggers,
            "triggers_seen": backlog,
        }
        result["transactions"] = {  # of the throughput phase (before the paced phases)
            "expand_at_least": await count_markers(bench.bootstrap, names.expand_state),
            "count": await count_markers(bench.bootstrap, names.count_state),
            "method": "commit markers on the stages' changelog topics after the throughput phase",
        }
        latency = []
        for rate in paced_at or []:
            before, t = cadence_totals(services), time.perf_counter()
            phase = await paced_phase(bench, names, observer, rate or 0.8 * n / seconds)
            phase["cadence"] = cadence(before, cadence_totals(services), time.perf_counter() - t)
            latency.append(phase)
        if latency:
            result["trigger_latency_ms"] = latency
        trigger_ids = [t["trigger_id"] for _, t in observer.triggers]
        result["duplicate_triggers"] = len(trigger_ids) - len(set(trigger_ids))
        for p in procs:
            p.peak_rss_mib = status_mib(p.pid, "VmHWM")  # the peak over the paced phases too
        result["peak_rss_mib"] = {p.name: p.peak_rss_mib for p in procs}
    finally:
        for svc in reversed(services):
            svc.stop()
        await held.close()
        await observer.stop()
    return result


# --- paced phase: trigger latency ------------------------------------------------------------------


async def paced_phase(bench: Bench, names: TopicNames, observer: Observer, rate: float) -> dict[str, Any]:
    """Envelopes at ``rate`` events/s for ``--paced-seconds``, built beforehand and stamped
    (``received_at`` = now) and encoded just before they are sent; trigger latency = wall time a
    read_committed reader first sees a trigger - its ``emitted_at`` (the ``received_at`` of the
    event whose units crossed the threshold)."""
    budget = int(rate * bench.args.paced_seconds)
    requests: list[Request] = []
    items = 0
    while items < 2 * budget:  # enough: a request has more items than events
        requests.append(bench.workload.next())
        items += requests[-1].items
    tenants = [bench.registry.tenant(f"bench{i}") for i in range(N_TENANTS)]
    before_triggers = len(observer.triggers)
    before_results = len(observer.result_events)
    # built before the clock, as the ingest built them: at its time each is only stamped and
    # encoded (building them on the sender's clock took a third of a core at 80 % of max, on the
    # cores the stages run on)
    built = []
    for req in requests:
        tenant = tenants[req.tenant]
        assert tenant is not None
        built.append(envelopes(req, tenant, datetime.now(UTC)))

    def stamped_now(events: list[RawEvent]) -> list[RawRecord]:
        now = datetime.now(UTC)
        return raw_records([msgspec.structs.replace(e, received_at=now) for e in events])

    sent, produced_s, wall_start = await pace(bench, names.raw, rate, budget, map(stamped_now, built))
    caught_up = await observer.wait_for(
        lambda: len(observer.result_events) >= before_results + sent, bench.args.phase_timeout
    )
    await asyncio.sleep(1.0)
    latencies = [
        (seen - datetime.fromisoformat(trig["emitted_at"]).timestamp()) * 1000
        for seen, trig in observer.triggers[before_triggers:]
        if datetime.fromisoformat(trig["emitted_at"]).timestamp() >= wall_start - 1
    ]
    print(
        f"[bench] paced {sent} events at {rate:.0f} ev/s (achieved {sent / produced_s:.0f}): "
        f"{len(latencies)} triggers, caught up: {caught_up}"
    )
    return latency_phase(rate, sent, produced_s, latencies, caught_up)


def latency_phase(
    rate: float, sent: int, produced_s: float, latencies: list[float], caught_up: bool
) -> dict[str, Any]:
    """One paced phase's figures (ms)."""
    return {
        "rate_events_per_s": rate,
        "achieved_events_per_s": sent / produced_s,
        "events": sent,
        "samples": len(latencies),
        "p50": percentile(latencies, 0.50),
        "p90": percentile(latencies, 0.90),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies) if latencies else None,
        "caught_up": caught_up,
    }


async def pace(
    bench: Bench, topic: str, rate: float, budget: int, batches: Iterator[list[RawRecord]]
) -> tuple[int, float, float]:
    """Send ``budget`` records to ``topic`` at ``rate`` records/s (bounded by ``--paced-seconds`` + 5),
    each batch made (``next``) only when its time has come, so a stamp in it is its sending time;
    (records sent, seconds taken, wall time at the start)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bench.bootstrap, enable_idempotence=True, acks="all", linger_ms=1
    )
    await producer.start()
    sent = 0
    pending: list[asyncio.Future[Any]] = []
    wall_start = time.time()
    started = time.perf_counter()
    try:
        while sent < budget and time.perf_counter() - started <= bench.args.paced_seconds + 5:
            delay = started + sent / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            batch = next(batches, None)
            if batch is None:
                break
            for value, key, headers in batch:
                pending.append(await producer.send(topic, value, key=key, headers=headers))
                sent += 1
            if len(pending) > 1000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return sent, time.perf_counter() - started, wall_start
    finally:
        await producer.stop()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# --- memory: worker RSS at N distinct seekers ------------------------------------------------------


def seeker_events(
    registry: TenantRegistry, n_seekers: int, per_request: int = 100
) -> Iterator[list[RawEvent]]:
    """Ranking outcomes of 1 item each for ``n_seekers`` distinct seekers (one history each), in
    requests of ``per_request`` items built as the ingest builds them; yielded request by request."""
    tenant = registry.tenant("bench0")
    assert tenant is not None
    domain = ranking_domains(0)[0]
    now = datetime.now(UTC)
    for start in range(0, n_seekers, per_request):
        items = [
            {"seeker_id": f"mem_s{i}", "candidate_id": f"c{i % CANDIDATES_PER_DOMAIN}", "outcome": "accepted"}
            for i in range(start, min(n_seekers, start + per_request))
        ]
        model = RankingOutcomeRequest.model_validate({"domain": domain, "items": items})
        yield envelopes(Request(0, "ranking_100", model, len(items)), tenant, now)


async def memory_run(bench: Bench, n_seekers: int) -> dict[str, Any]:
    """An expand-only worker takes ``n_seekers`` distinct seekers' first outcomes; its VmRSS once it
    committed them all, beside its VmRSS when settled on empty topics."""
    settings = bench.settings("mem")
    names = topic_names(settings)
    await ensure_topics(bench.bootstrap, settings)
    log_dir = REPO_ROOT / ".local" / "bench-logs" / bench.tag / "mem"
    svc = worker_service(bench.env(settings), free_port(), log_dir, name="expand", stages=("expand",)).start()
    timeout_s = max(bench.args.phase_timeout, n_seekers / 500)  # bounded: at least 500 seekers/s
    try:
        assert svc.proc is not None
        pid = svc.proc.pid
        await wait_settled([svc], [("expand",)], settings.topic_partitions, bench.args.phase_timeout)
        idle_rss = status_mib(pid, "VmRSS")
        started = time.perf_counter()
        producer = AIOKafkaProducer(
            bootstrap_servers=bench.bootstrap,
            enable_idempotence=True,
            acks="all",
            linger_ms=20,
            max_batch_size=512 * 1024,
        )
        await producer.start()
        sent = 0
        try:
            pending: list[asyncio.Future[Any]] = []
            for events in seeker_events(bench.registry, n_seekers):
                for e in events:
                    pending.append(
                        await producer.send(
                            names.raw, envelope.encode(e), key=kafka_key(e), headers=envelope.kafka_headers(e)
                        )
                    )
                sent += len(events)
                if len(pending) >= 10_000:
                    await asyncio.gather(*pending)
                    pending.clear()
                    if sent % 100_000 < len(events):
                        print(
                            f"[bench] memory: {sent} seekers written ({time.perf_counter() - started:.0f} s)"
                        )
                    if time.perf_counter() - started > timeout_s:
                        raise TimeoutError(f"producing {n_seekers} seekers took over {timeout_s:.0f} s")
            await asyncio.gather(*pending)
        finally:
            await producer.stop()
        produced_s = time.perf_counter() - started
        ends = await end_offsets(bench.bootstrap, names.raw)
        left = timeout_s - (time.perf_counter() - started)
        reached = await committed_reach(
            bench.bootstrap, settings.stage_group("expand"), ends, max(10.0, left)
        )
        if reached is None:
            raise TimeoutError(f"the expand process did not commit {sent} events within {timeout_s:.0f} s")
        await asyncio.sleep(2.0)  # the gauges and the allocator settle
        rss = status_mib(pid, "VmRSS")
        peak = status_mib(pid, "VmHWM")
        metrics_text = await asyncio.to_thread(
            lambda: (
                urllib.request.urlopen(svc.health_url.replace("/ready", "/metrics"), timeout=5)
                .read()
                .decode()
            )
        )
    finally:
        svc.stop()
    gauges = {
        line.split()[0]: float(line.split()[1])
        for line in metrics_text.splitlines()
        if line.startswith(("feedstream_state_keys{", "feedstream_state_bytes{")) and 'stage="expand"' in line
    }
    total_s = reached - started
    grown = None if rss is None or idle_rss is None else rss - idle_rss
    print(
        f"[bench] memory: {n_seekers} seekers: expand VmRSS {idle_rss} -> {rss} MiB "
        f"(peak {peak}) in {total_s:.0f} s (producing {produced_s:.0f} s)"
    )
    return {
        "seekers": n_seekers,
        "events": sent,
        "idle_rss_mib": idle_rss,
        "rss_mib": rss,
        "peak_rss_mib": peak,
        "bytes_per_seeker": None if grown is None else grown * 2**20 / n_seekers,
        "state_gauges": gauges,
        "seconds": total_s,
        "produce_s": produced_s,
        "method": "expand-only worker; VmRSS after its group committed every event, minus VmRSS when "
        "settled on empty topics; one ranking outcome per seeker",
    }


# --- the run ---------------------------------------------------------------------------------------


async def measure(args: argparse.Namespace, bootstrap: str, broker_kind: str, tag: str) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="feedstream-bench-"))
    tenants_file = tmp / "tenants.yaml"
    print(f"[bench] broker {bootstrap} ({broker_kind}), topics {tag}.<run>., logs .local/bench-logs/{tag}")

    # the workload and the thresholds (so that about --triggers triggers fire on the data set)
    t = time.perf_counter()
    placeholder = parse_tenants(tenants_data({}))
    workload = Workload(seed=args.seed)
    data = build_dataset(workload, placeholder, args.events)
    base = Settings(kafka_bootstrap_servers=bootstrap, tenants_file=tenants_file)
    counted, fanout = predict_counts(data.events, base)
    thresholds = choose_thresholds(counted, args.triggers)
    shared_threshold = thresholds.pop(SHARED_POOL, 1000)
    tenants_file.write_text(yaml.safe_dump(tenants_data(thresholds)))
    registry = parse_tenants(yaml.safe_load(tenants_file.read_text()))
    thresholds[SHARED_POOL] = shared_threshold
    expected = sum(counted[d] // thresholds[d] for d in counted if counted[d])
    n = len(data.events)
    bench = Bench(
        args,
        bootstrap,
        tag,
        tenants_file,
        shared_threshold,
        raw_records(data.events),
        expected,
        workload,
        registry,
        Profiler(args.profile),
        fanout,
    )
    print(
        f"[bench] {n} events from {sum(data.requests.values())} requests ({data.items} items), "
        f"{sum(counted.values())} counting units over {len(counted)} domains, "
        f"records per event beyond one: expand {fanout[0]:.2f}, count {fanout[1]:.2f}, "
        f"{expected} triggers expected ({time.perf_counter() - t:.1f} s)"
    )

    rounds: dict[str, list[dict[str, Any]]] = {key: [] for key in args.runs}
    for i in range(args.rounds):  # interleaved: the loop and the pipeline share each round's machine
        bench.round = i + 1
        if args.rounds > 1:
            print(f"[bench] round {i + 1} of {args.rounds}")
        for key in args.runs:
            run = RUNS[key]
            if run.chain:
                rounds[key].append(await chain_run(bench, run))
            elif not run.layout:
                rounds[key].append(await loop_run(bench, run))
            else:
                paced_at = [args.paced_rate, 0.0] if key == "stage1" else None
                rounds[key].append(await pipeline_run(bench, run, paced_at))
    memory = await memory_run(bench, args.seekers) if args.seekers else None
    return {
        **run_header("scripts.bench", bootstrap, broker_kind),
        "clock": CLOCK,
        "config": config(args, data, n, thresholds, counted, base),
        "runs": median_rounds(rounds),
        "memory": memory,
    }


def median_rounds(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each run's row: the round with its median ratio to the transactional loop *of the same
    round* (events/s where there is no loop), every round kept under ``rounds`` when there are
    several. This machine's speed drifts by tens of percent over minutes (the loop alone measured
    10,000-26,000 events/s in one session), so a ratio is only honest within a round."""
    tx = rounds.get("tx")
    for results in rounds.values():
        for i, r in enumerate(results):
            if tx is not None:
                r["vs_tx_events_per_s"] = r["events_per_s"] / tx[i]["events_per_s"]
                r["vs_tx_cpu_per_event"] = r["cpu_s_per_1k_events"] / tx[i]["cpu_s_per_1k_events"]
    runs: dict[str, dict[str, Any]] = {}
    for key, results in rounds.items():
        by = "vs_tx_events_per_s" if tx is not None and key != "tx" else "events_per_s"
        ordered = sorted(results, key=lambda r: float(r[by]))
        runs[key] = dict(ordered[(len(ordered) - 1) // 2])
        if len(results) > 1:
            runs[key]["rounds"] = results
    return runs


def config(
    args: argparse.Namespace,
    data: Dataset,
    n: int,
    thresholds: dict[str, int],
    counted: Counter[str],
    base: Settings,
) -> dict[str, Any]:
    """What the run measured on (the JSON's ``config``)."""
    return {
        "events": n,
        "requests": dict(data.requests),
        "contracts": dict(data.contracts),
        "items": data.items,
        "tenants": N_TENANTS,
        "domains": 5 * N_TENANTS,
        "tasks": N_TENANTS,
        "thresholds": thresholds,
        "counting_units": sum(counted.values()),
        "topic_partitions": base.topic_partitions,
        "stage_batch": base.stage_batch,
        "seed": args.seed,
        "runs": args.runs,
        "rounds": args.rounds,
    }


CLOCK = (
    "every run on fresh topics and groups with the same data set: start the processor processes, wait "
    "until they are ready and own every partition (idle on empty input), write the data set in one "
    "open Kafka transaction (invisible to their read_committed consumers), t0, commit it, t1 when a "
    "read_committed reader has seen the last output (pipeline: a result on feedback.results for every "
    "raw event; loops: every record on their output topic). CPU: utime+stime of the processor "
    "processes over t0..t1 (/proc/<pid>/stat); the loops run in a child process of their own."
)
STORE_NOTE = (
    "the store stage (raw events into SQL) is not part of the stream measured here: "
    "python -m scripts.store_bench measures it"
)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return lines


def transactions_cell(run: dict[str, Any]) -> str:
    """A loop's transactions (batches), a pipeline's expand+count (commit markers on the changelogs)."""
    if "transactions" in run:
        return f"{run['transactions']['expand_at_least']}+{run['transactions']['count']}"
    return str(run.get("batches", "-"))


def rss_cell(peaks: dict[str, float | None]) -> str:
    return ", ".join(f"{name} {fmt(mib, '.0f')}" for name, mib in peaks.items())


#: A run's paced phases: the pipeline's trigger latency (crossing event produced -> trigger seen), a
#: chain's record latency (record produced -> seen on its output topic), both by read_committed readers.
LATENCIES = {
    "trigger_latency_ms": ("trigger", ("paced", "paced at 80 % of max")),
    "latency_ms": ("record through 2 hops", ("paced",)),
}


def table(r: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = [
        (
            "run",
            "procs",
            "events/s",
            "vs tx loop",
            "CPU s/1k ev",
            "CPU vs tx loop",
            "ev/CPU-s",
            "transactions",
            "peak RSS MiB",
        )
    ]
    for run in r["runs"].values():
        rows.append(
            (
                run["label"] + (" (under py-spy)" if run.get("profiled") else ""),
                str(run["processes"]),
                fmt(run["events_per_s"], ".0f"),
                fmt(run.get("vs_tx_events_per_s"), ".2f"),
                fmt(run["cpu_s_per_1k_events"], ".3f"),
                fmt(run.get("vs_tx_cpu_per_event"), ".2f"),
                fmt(run["events_per_cpu_s"], ".0f"),
                transactions_cell(run),
                rss_cell(run["peak_rss_mib"]),
            )
        )
    out = render(rows)
    entries = []  # (round, row order, what, phase): a round's phases side by side
    for order, run in enumerate(r["runs"].values()):
        rounds = run.get("rounds", [run])
        for i, each in enumerate(rounds):
            for key, (what, phases) in LATENCIES.items():
                for lat, phase in zip(each.get(key, []), phases, strict=False):
                    tag = f" (round {i + 1})" if len(rounds) > 1 else ""
                    entries.append((i, order, f"{run['label']}: {what}, {phase}{tag}", lat))
    if entries:
        lat_rows: list[tuple[str, ...]] = [
            ("latency", "ev/s", "achieved", "samples", "p50 ms", "p90 ms", "p99 ms", "caught up")
        ]
        for _, _, what, lat in sorted(entries, key=lambda e: (e[0], e[1])):
            lat_rows.append(
                (
                    what,
                    fmt(lat["rate_events_per_s"], ".0f"),
                    fmt(lat["achieved_events_per_s"], ".0f"),
                    str(lat["samples"]),
                    fmt(lat["p50"], ".0f"),
                    fmt(lat["p90"], ".0f"),
                    fmt(lat["p99"], ".0f"),
                    str(lat["caught_up"]),
                )
            )
        out += ["", *render(lat_rows)]
        for _, _, what, lat in sorted(entries, key=lambda e: (e[0], e[1])):
            if lat.get("cadence"):
                each = "; ".join(
                    f"{stage} {c['transactions_per_s']:.0f} tx/s, {fmt(c['mean_ms'], '.0f')} ms, "
                    f"{fmt(c['mean_records'], '.1f')} records"
                    for stage, c in lat["cadence"].items()
                )
                out.append(f"committed transactions in {what}: {each}")
    if r.get("memory"):
        m = r["memory"]
        out += [
            "",
            f"memory: expand process at {m['seekers']:,} distinct seekers: "
            f"VmRSS {fmt(m['rss_mib'], '.0f')} MiB "
            f"(settled idle {fmt(m['idle_rss_mib'], '.0f')} MiB, peak {fmt(m['peak_rss_mib'], '.0f')} MiB), "
            f"{fmt(m['bytes_per_seeker'], '.0f')} bytes per seeker; took {m['seconds']:.0f} s",
        ]
    for key, run in r["runs"].items():
        if len(run.get("rounds", [])) > 1:
            if key == "tx" or "vs_tx_events_per_s" not in run:
                each = ", ".join(fmt(x["events_per_s"], ".0f") for x in run["rounds"])
                out.append(f"rounds of {run['label']} (events/s): {each}")
                continue
            ratios = ", ".join(
                f"{fmt(x.get('vs_tx_events_per_s'), '.2f')}/{fmt(x.get('vs_tx_cpu_per_event'), '.2f')}"
                for x in run["rounds"]
            )
            out.append(f"rounds of {run['label']} (events/s / CPU per event vs the round's loop): {ratios}")
    busy = [
        f"{run['label']}: {run['machine_busy_cores']:.2f} cores busy, "
        f"{run['other_busy_cores']:.2f} of them not the processors"
        for run in r["runs"].values()
    ]
    checks = [
        f"{run['label']}: triggers {run['triggers_seen']}/{run['triggers_expected']}, "
        f"duplicates {run['duplicate_triggers']}, results {run['results_seen']}"
        for run in r["runs"].values()
        if "triggers_seen" in run
    ]
    c = r["config"]
    notes = [
        f"clock: {r['clock']}",
        f"data: {c['events']} raw events ({c['items']} items, {c['counting_units']} counting units), "
        f"{c['topic_partitions']} partitions, STAGE_BATCH {c['stage_batch']}, nproc {r['nproc']}",
        "vs tx loop: events/s / the transactional loop's; CPU vs tx loop: CPU per event / the loop's; "
        "transactions: the loops' batches, the pipeline's expand+count commit markers on the changelogs",
        STORE_NOTE,
        "machine during each timed phase (/proc/stat; the broker and this process included):",
        *[f"  {line}" for line in busy],
        *checks,
    ]
    return "\n".join([*out, "", *notes])


def verdict(r: dict[str, Any]) -> list[str]:
    """The checks that make a run worth reading; empty when all hold."""
    failed = []
    every = [x for run in r["runs"].values() for x in run.get("rounds", [run])]
    for run in every:
        for lat in run.get("latency_ms", []):
            if not lat["caught_up"]:
                failed.append(
                    f"{run['label']}: paced phase at {lat['rate_events_per_s']:.0f}/s not caught up"
                )
        if "triggers_seen" in run:
            if run["triggers_seen"] != run["triggers_expected"]:
                failed.append(
                    f"{run['label']}: triggers {run['triggers_seen']} != {run['triggers_expected']}"
                )
            if run["duplicate_triggers"]:
                failed.append(f"{run['label']}: {run['duplicate_triggers']} duplicate triggers")
            for lat in run.get("trigger_latency_ms", []):
                if not lat["caught_up"]:
                    failed.append(
                        f"{run['label']}: paced phase at {lat['rate_events_per_s']:.0f} ev/s not caught up"
                    )
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="raw events of the throughput phase")
    parser.add_argument(
        "--triggers", type=int, default=300, help="about how many triggers the data set fires"
    )
    parser.add_argument(
        "--runs",
        type=lambda s: [k for k in s.split(",") if k],
        default=list(RUNS),
        help=f"which rows, comma-separated, of {','.join(RUNS)} (default all)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the rows N times, interleaved; each row is its median round by its ratio to the "
        "loop of the same round (every round is printed)",
    )
    parser.add_argument("--paced-rate", type=float, default=400.0, help="events/s of the first paced phase")
    parser.add_argument("--paced-seconds", type=float, default=20.0)
    parser.add_argument(
        "--seekers", type=int, default=0, help="also measure expand's RSS at N distinct seekers"
    )
    parser.add_argument("--profile", type=Path, default=None, help="py-spy each worker into DIR (throughput)")
    parser.add_argument("--profile-top", type=int, default=25, help="lines of each profile summary")
    parser.add_argument("--phase-timeout", type=float, default=180.0, help="bound on each phase, seconds")
    add_run_arguments(parser, "bench", seed=7)
    args = parser.parse_args(argv)
    unknown = [k for k in args.runs if k not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {','.join(RUNS)}")
    result = run_and_report("bench", measure, args, table)
    failed = verdict(result)
    for line in failed:
        print(f"WARNING: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
