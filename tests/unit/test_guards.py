"""The ingest's idempotency store: bounded in bytes per tenant, waiters never left waiting."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime

import pytest
from prometheus_client import Histogram

from pipeline import metrics
from pipeline.api.guards import IdempotencyConflict, IdempotencyStore, StoredAnswer, iso_z


def answer(size: int) -> StoredAnswer:
    return StoredAnswer(200, b"x" * size, {"Content-Type": "application/json"})


async def test_an_evicted_pending_entry_still_answers_its_waiters() -> None:
    store = IdempotencyStore(60, max_entries=1)
    assert store.claim(("t", "/p", "a"), b"body") is None  # we own 'a'
    waiter = store.claim(("t", "/p", "a"), b"body")
    assert waiter is not None
    assert store.claim(("t", "/p", "b"), b"body") is None  # evicts 'a' while it is pending
    store.finish(("t", "/p", "a"), answer(10))
    stored = await asyncio.wait_for(waiter, 1)
    assert stored.body == b"x" * 10


async def test_an_evicted_pending_entry_that_fails_releases_its_waiters() -> None:
    store = IdempotencyStore(60, max_entries=1)
    assert store.claim(("t", "/p", "a"), b"body") is None
    waiter = store.claim(("t", "/p", "a"), b"body")
    assert waiter is not None
    assert store.claim(("t", "/p", "b"), b"body") is None
    store.finish(("t", "/p", "a"), None)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, 1)


async def test_bytes_are_bounded_per_tenant_and_one_tenant_never_evicts_another() -> None:
    store = IdempotencyStore(60, max_bytes_per_tenant=100_000)
    assert store.claim(("b", "/p", "keep"), b"b") is None
    store.finish(("b", "/p", "keep"), answer(50_000))
    for i in range(50):  # tenant a writes far more than its budget
        assert store.claim(("a", "/p", f"k{i}"), b"a") is None
        store.finish(("a", "/p", f"k{i}"), answer(30_000))
        assert store.bytes_of("a") <= 100_000
    kept = store.claim(("b", "/p", "keep"), b"b")
    assert kept is not None and (await kept).body == b"x" * 50_000
    assert store.claim(("a", "/p", "k0"), b"a") is None  # a's oldest went first
    recent = store.claim(("a", "/p", "k49"), b"a")
    assert recent is not None and len((await recent).body) == 30_000


async def test_an_answer_bigger_than_the_budget_is_answered_but_not_kept() -> None:
    store = IdempotencyStore(60, max_bytes_per_tenant=10_000)
    assert store.claim(("a", "/p", "big"), b"a") is None
    waiter = store.claim(("a", "/p", "big"), b"a")
    assert waiter is not None
    store.finish(("a", "/p", "big"), answer(20_000))
    assert len((await waiter).body) == 20_000
    assert store.bytes_of("a") <= 10_000
    assert store.claim(("a", "/p", "big"), b"a") is None  # forgotten: a retry is new


async def test_bytes_gauge_follows_the_store() -> None:
    from pipeline import metrics

    store = IdempotencyStore(60, max_bytes_per_tenant=1_000_000)
    assert store.claim(("gauge-t", "/p", "k"), b"a") is None
    store.finish(("gauge-t", "/p", "k"), answer(1234))
    value = metrics.IDEMPOTENCY_BYTES.labels("gauge-t")._value.get()
    assert value == store.bytes_of("gauge-t") >= 1234


async def test_conflicting_body_still_conflicts() -> None:
    store = IdempotencyStore(60)
    assert store.claim(("a", "/p", "k"), b"one") is None
    with pytest.raises(IdempotencyConflict):
        store.claim(("a", "/p", "k"), b"two")


def test_reset_times_are_written_as_datetime_writes_them() -> None:
    """The rate limit's ``reset_at`` (seed 004's body, ``X-RateLimit-Reset``): one text per instant,
    the date and time formatted once per second; microseconds rounded as ``fromtimestamp`` rounds."""
    rng = random.Random(4)
    now = time.time()
    instants = [now + rng.uniform(0, 5) for _ in range(20_000)]
    instants += [float(int(now)), int(now) + 0.5, int(now) + 0.9999995, int(now) + 0.0000005, 1e9 + 0.0000015]
    for ts in instants:
        assert iso_z(ts) == datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z"), ts


def test_remembered_metric_children_are_the_metrics_own() -> None:
    """``metrics.child`` (the ingest's per-request labels) counts into the same series as ``labels``."""
    before = metrics.ITEMS_ACCEPTED.labels("child_test")._value.get()
    metrics.child(metrics.ITEMS_ACCEPTED, "child_test").inc(2)
    metrics.child(metrics.ITEMS_ACCEPTED, "child_test").inc(3)
    assert metrics.child(metrics.ITEMS_ACCEPTED, "child_test") is metrics.ITEMS_ACCEPTED.labels("child_test")
    assert metrics.ITEMS_ACCEPTED.labels("child_test")._value.get() == before + 5


def test_observing_many_at_once_is_observing_each() -> None:
    """The stages observe their per-event latency once per batch (``metrics.observe_many``): the same
    bucket counts and sum as one ``observe`` per value, bounds included."""
    one, many = (Histogram(f"t_{name}", "t", buckets=metrics.LATENCY_BUCKETS, registry=None) for name in "ab")
    rng = random.Random(9)
    values = [rng.choice([0.0, 0.001, 0.0025, 10.0, 11.0]) for _ in range(50)]
    values += [rng.uniform(0, 12) for _ in range(1000)]
    for value in values:
        one.observe(value)
    metrics.observe_many(many, values[:500])
    metrics.observe_many(many, values[500:])
    metrics.observe_many(many, [])

    def buckets(h: Histogram) -> list[tuple[str, float]]:
        (metric,) = h.collect()
        return [(s.labels["le"], s.value) for s in metric.samples if s.name.endswith("_bucket")]

    def total(h: Histogram) -> float:
        (metric,) = h.collect()
        return float(next(s.value for s in metric.samples if s.name.endswith("_sum")))

    assert buckets(many) == buckets(one)
    assert total(many) == pytest.approx(total(one))
