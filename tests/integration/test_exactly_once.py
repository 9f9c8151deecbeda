"""Exactly-once, proven on the real broker: SIGKILL the worker at arbitrary points and restart it;
hand partitions between two workers; then compare what is on the topics with an offline replay
of the same raw events through the pure rules.

Nothing may be lost (every raw event has its result, every expected unit is on
``feedback.triplets``), nothing duplicated (no unit id twice, no result twice) and every
threshold crossing gives exactly one trigger whose range holds exactly ``threshold`` counted units.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from pipeline.api.publisher import FeedbackPublisher
from pipeline.contracts import expand_event
from pipeline.kafka.topics import delete_prefixed_topics, ensure_topics, topic_names
from pipeline.procs import Service, free_port, worker_service
from pipeline.rules.triplets import Limits, SeekerHistory
from pipeline.settings import Settings
from pipeline.tenants import load_tenants
from pipeline.wire import envelope
from pipeline.wire.records import to_builtins
from scripts.common import write_raw
from tests.conftest import LOG_DIR, TEST_TENANTS
from tests.kafka_helpers import read_until

DOMAINS = {"s_crash": 50, "s_crash2": 7}
pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

LABELS = ["accepted", "rejected", "converted", "expired", "interview_passed", "ghosted"]


@dataclass
class Workload:
    settings: Settings
    env: dict[str, str]
    events: list[envelope.RawEvent]
    expected_units: dict[str, dict[str, Any]]  # unit_id -> unit
    counted: collections.Counter[str]  # domain -> counted units


def build_events(pub: FeedbackPublisher, n_requests: int, seed: int) -> list[envelope.RawEvent]:
    rng = random.Random(seed)
    events: list[envelope.RawEvent] = []
    for i in range(n_requests):
        domain = rng.choice(list(DOMAINS))
        if i % 10 == 4:  # seed 002: one record of several envelopes (signals and a result each)
            ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(rng.choice([1, 2, 3]))]
            intake_, _ = pub.plan([{"id": item, "feedback": {"ok": True, "n": i}} for item in ids])
            events.extend(intake_.events)
            continue
        if i % 10 == 9:
            body: dict[str, Any] = {
                "case_id": f"case-{i}",
                "module": "m",
                "original_output": {"a": i},
                "corrected_output": {"a": i + 1},
                "actor": {"id": "x"},
            }
        else:
            seekers = [f"seeker-{rng.randrange(40)}" for _ in range(rng.choice([1, 1, 2, 3]))]
            body = {
                "domain": domain,
                "items": [
                    {
                        "seeker_id": s,
                        "candidate_id": f"cand-{rng.randrange(25)}",
                        "outcome": rng.choice(LABELS),
                        "weight": rng.choice([0.5, 1.0, 2.0]),
                    }
                    for s in seekers
                    for _ in range(rng.randrange(1, 4))
                ],
            }
        intake_, _ = pub.plan(body)
        events.extend(intake_.events)
    return events


def replay(
    events: list[envelope.RawEvent], settings: Settings
) -> tuple[dict[str, dict[str, Any]], collections.Counter[str]]:
    """The offline truth: the pure rules applied to the events in their per-key order."""
    limits = Limits(max_items=settings.seeker_max_items, max_age_seconds=settings.seeker_max_age_s)
    state: dict[bytes, SeekerHistory] = {}
    units: dict[str, dict[str, Any]] = {}
    counted: collections.Counter[str] = collections.Counter()
    for event in events:
        out = expand_event(event, state, limits=limits, shared_pool=settings.shared_pool_domain)
        if out.state_key is not None and out.history is not None:
            state[out.state_key] = out.history
        for batch in out.batches:
            for unit in batch.units:
                assert unit.unit_id not in units
                units[unit.unit_id] = to_builtins(unit)
                counted[unit.domain] += unit.counts
    return units, counted


@pytest.fixture
def workload(broker: Any, service_env: dict[str, str]) -> Iterator[Workload]:
    prefix = f"eos{uuid.uuid4().hex[:8]}."
    settings = Settings(
        kafka_bootstrap_servers=broker.bootstrap,
        topic_prefix=prefix,
        worker_id=f"w-{prefix[:-1]}",
        tenants_file=TEST_TENANTS,
        stage_batch=25,
    )
    env = dict(service_env, TOPIC_PREFIX=prefix, WORKER_ID=settings.worker_id, STAGE_BATCH="25")

    async def setup() -> list[envelope.RawEvent]:
        await ensure_topics(broker.bootstrap, settings)
        pub = FeedbackPublisher(broker.bootstrap, load_tenants(TEST_TENANTS), "stream", settings=settings)
        events = build_events(pub, 600, seed=int(prefix[3:11], 16))
        await write_raw(broker.bootstrap, settings, events, transactional_id=f"load-{prefix}", chunk=100)
        return events

    events = asyncio.new_event_loop().run_until_complete(setup())
    units, counted = replay(events, settings)
    yield Workload(settings, env, events, units, counted)
    for doomed in (prefix, settings.worker_id + "-"):
        asyncio.new_event_loop().run_until_complete(delete_prefixed_topics(broker.bootstrap, doomed))


def start_worker(w: Workload, name: str) -> Service:
    return worker_service(w.env, free_port(), LOG_DIR / w.settings.topic_prefix, name=name).start()


class Progress:
    """Counts results on feedback.results, read_committed, as they become visible."""

    def __init__(self, w: Workload) -> None:
        self.w = w
        self.results: list[dict[str, Any]] = []

    async def poll(self, consumer: Any) -> None:
        for records in (await consumer.getmany(timeout_ms=200)).values():
            self.results += [orjson.loads(r.value) for r in records]


async def wait_results(
    w: Workload, at_least: int, timeout_s: float, progress: Progress, consumer: Any
) -> None:
    deadline = time.monotonic() + timeout_s
    while len(progress.results) < at_least:
        assert time.monotonic() < deadline, f"only {len(progress.results)} of {at_least} results"
        await progress.poll(consumer)


async def check_exactly_once(w: Workload, progress: Progress, consumer: Any) -> None:
    names = topic_names(w.settings)
    bootstrap = w.settings.kafka_bootstrap_servers or ""
    await wait_results(w, len(w.events), 240, progress, consumer)
    # let anything that should not be there (duplicates) show up
    settle = time.monotonic() + 3
    while time.monotonic() < settle:
        await progress.poll(consumer)
    by_event = collections.Counter(r["event_id"] for r in progress.results)
    assert len(by_event) == len(w.events), "a raw event has no result"
    assert max(by_event.values()) == 1, f"duplicated results: {by_event.most_common(3)}"

    # the three topics are read at once: each read's settle window (duplicates showing late) overlaps
    units, trigger_records, dlq = await asyncio.gather(
        read_until(
            bootstrap, names.triplets, lambda r: True, count=len(w.expected_units), timeout_s=60, settle_s=2
        ),
        read_until(bootstrap, names.triggers, lambda r: True, count=1, timeout_s=10, settle_s=2),
        read_until(bootstrap, names.dlq, lambda r: True, count=1, timeout_s=1),
    )
    ids = collections.Counter(orjson.loads(r.value)["unit_id"] for r in units)
    assert max(ids.values()) == 1, f"duplicated units: {ids.most_common(3)}"
    assert set(ids) == set(w.expected_units), "units differ from the offline replay"

    triggers = [orjson.loads(r.value) for r in trigger_records]
    thresholds = {**DOMAINS, "s_corrections": 2}
    for domain, counted in w.counted.items():
        mine = sorted(t["sequence"] for t in triggers if t["domain"] == domain)
        assert mine == list(range(1, counted // thresholds[domain] + 1)), (
            f"{domain}: {mine} for {counted} units"
        )
    by_offset = {(r.partition, r.offset): orjson.loads(r.value) for r in units}
    for t in triggers:
        rng = t["range"]
        inside = [
            u
            for (p, o), u in by_offset.items()
            if p == rng["partition"]
            and rng["start_offset"] <= o <= rng["end_offset"]
            and u["domain"] == t["domain"]
            and u["counts"]
        ]
        assert len(inside) == t["threshold"] == t["count"], t
    assert dlq == []


async def progress_consumer(w: Workload) -> Any:
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(
        topic_names(w.settings).results,
        bootstrap_servers=w.settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        group_id=None,
    )
    await c.start()
    return c


def ready_partitions(svc: Service) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(svc.health_url, timeout=2) as resp:
            return orjson.loads(resp.read())  # type: ignore[no-any-return]
    except OSError as err:
        body = getattr(err, "read", lambda: b"{}")()
        return orjson.loads(body or b"{}")  # type: ignore[no-any-return]


async def test_sigkill_at_any_point_loses_nothing_and_duplicates_nothing(workload: Workload) -> None:
    w = workload
    rng = random.Random(os.getpid())
    progress = Progress(w)
    consumer = await progress_consumer(w)
    try:
        total = len(w.events)
        # kill during start-up/restore, then at growing fractions of the work
        for i, fraction in enumerate([0.0, 0.15, 0.4, 0.7]):
            svc = start_worker(w, f"worker-kill{i}")
            if fraction == 0.0:
                await asyncio.sleep(rng.uniform(1.0, 3.0))
            else:
                await wait_results(w, int(total * fraction), 120, progress, consumer)
                await asyncio.sleep(rng.uniform(0, 0.3))
            svc.kill()
        final = start_worker(w, "worker-final")
        try:
            await check_exactly_once(w, progress, consumer)
        finally:
            final.stop()
    finally:
        await consumer.stop()


async def test_two_workers_split_partitions_and_hand_them_over(workload: Workload) -> None:
    w = workload
    progress = Progress(w)
    consumer = await progress_consumer(w)
    a = start_worker(w, "worker-a")
    b: Service | None = None
    try:
        await wait_results(w, len(w.events) // 5, 120, progress, consumer)
        b = start_worker(w, "worker-b")
        deadline = time.monotonic() + 60
        while True:  # the group rebalances: both own part of each stage
            ra, rb = ready_partitions(a), ready_partitions(b)
            if ra.get("ready") and rb.get("ready") and ra.get("expand") and rb.get("expand"):
                break
            assert time.monotonic() < deadline, (ra, rb)
            await progress.poll(consumer)
        assert sorted(ra["expand"] + rb["expand"]) == [0, 1, 2, 3]
        assert not set(ra["count"]) & set(rb["count"])
        await wait_results(w, len(w.events) * 3 // 5, 120, progress, consumer)
        a.kill()  # b takes everything over
        deadline = time.monotonic() + 60
        while ready_partitions(b).get("expand") != [0, 1, 2, 3]:
            assert time.monotonic() < deadline
            await progress.poll(consumer)
        await check_exactly_once(w, progress, consumer)
    finally:
        a.stop()
        if b is not None:
            b.stop()
        await consumer.stop()
