"""Memory bounds under key churn (docs/design.md, "Hardening: fuzz and soak"): what the soak found growing.

Each test churns keys through one structure and checks, with tracemalloc, that the memory it really
holds stays within its stated bound (not only its entry count).
"""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from collections.abc import Callable, Iterator

import orjson
import pytest

from pipeline.api.guards import IdempotencyStore, StoredAnswer
from pipeline.api.stream_view import StreamView
from pipeline.kafka.topics import topic_names
from pipeline.settings import Settings
from pipeline.stream import runtime as eos
from pipeline.stream.runtime import key_partition
from pipeline.wire.records import StageResult, from_json, to_json


@pytest.fixture
def traced() -> Iterator[Callable[[], int]]:
    """Bytes traced since the fixture started (after a collection)."""
    tracemalloc.start()
    gc.collect()
    start = tracemalloc.get_traced_memory()[0]

    def grown() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - start

    yield grown
    tracemalloc.stop()


def test_key_partition_cache_stays_small_under_key_churn(traced: Callable[[], int]) -> None:
    """Output keys churn (request ids, new seekers, sessions): caching them all only holds memory.

    The cache keeps the hot keys (domains key the units and triplets) and stays at its bound."""
    key_partition.cache_clear()
    for i in range(3 * eos.KEY_PARTITION_CACHE):  # three times the bound: every old key evicted
        key_partition(f"req_{uuid.UUID(int=i).hex}".encode(), 4)
        key_partition(b"domain-%d" % (i % 20), 4)
    info = key_partition.cache_info()
    assert info.maxsize == eos.KEY_PARTITION_CACHE <= 4096
    assert info.currsize <= eos.KEY_PARTITION_CACHE
    assert traced() < 2 * 2**20  # 4,096 entries of ~250 bytes: about 1 MiB
    assert key_partition(b"domain-3", 4) == key_partition.__wrapped__(b"domain-3", 4)
    key_partition.cache_clear()


def ingest_answer(i: int) -> StoredAnswer:
    """An answer as the ingest stores it: orjson's bytes from ``json_response``."""
    body = orjson.dumps(
        {"accepted": 3, "triplets_generated": 3, "triplets_pending_train": i, "request_id": f"req_{i:026d}"}
    )
    return StoredAnswer(200, body, {"Content-Type": "application/json", "Idempotent-Replayed": "true"})


async def test_idempotency_memory_stays_within_its_accounted_bytes(traced: Callable[[], int]) -> None:
    """The per-tenant bound is in bytes of memory: what the store holds must not exceed what it counts
    (orjson's bytes keep a 4 KiB buffer for a 100-byte body, which a stored answer must not keep)."""
    store = IdempotencyStore(86_400, max_bytes_per_tenant=256 * 1024)
    for i in range(5_000):  # far past the budget: entries churn
        scope = (f"t{i % 4}", "/v1/feedback", f"soak-{uuid.UUID(int=i)}")
        assert store.claim(scope, b"body %d" % i) is None
        store.finish(scope, ingest_answer(i))
    accounted = sum(store.bytes_of(f"t{t}") for t in range(4))
    assert accounted <= 4 * 256 * 1024
    held = traced()
    assert held <= accounted * 1.1 + 64 * 1024, (held, accounted)


@pytest.mark.slow
def test_the_ingest_view_holds_no_more_than_it_counts_under_request_churn(
    traced: Callable[[], int],
) -> None:
    """VIEW_MAX_BYTES_PER_TENANT bounds memory: kept results, their requests and the view's indexes."""
    names = topic_names(Settings(topic_prefix=""))
    owners = {f"d{t}": f"t{t}" for t in range(4)}
    # JSON decoders may cache short strings process-wide in a fixed bound (pydantic-core did, up to
    # 16,384; msgspec caches short keys): fill such caches first, so only the view is measured
    for i in range(100_000):
        from_json(StageResult, result_json(names, -1 - i))
    before = traced()
    view = StreamView("unused:9092", names, owner_of=owners.get, max_bytes_per_tenant=256 * 1024)
    for i in range(20_000):
        request_id = f"req_{uuid.UUID(int=i).hex}"
        value = StageResult(
            request_id=request_id,
            event_id=f"evt_{uuid.UUID(int=i).hex}",
            domain=f"d{i % 4}",
            kind="units",
            units_generated=3,
            units_counted=3,
            pending=i,
            threshold=500,
        )
        # as aiokafka hands them over: bytes of their own size
        view._apply(names.results, request_id.encode(), bytes(memoryview(to_json(value))))
    accounted = sum(view.kept_bytes(f"t{t}") for t in range(4))
    assert accounted <= 4 * 256 * 1024
    held = traced() - before
    assert held <= accounted * 1.1 + 64 * 1024, (held, accounted)


def result_json(names: object, i: int) -> bytes:
    return to_json(
        StageResult(
            request_id=f"req_{uuid.UUID(int=abs(i)).hex}{'w' if i < 0 else ''}",
            event_id=f"evt_{uuid.UUID(int=abs(i)).hex}",
            domain=f"d{abs(i) % 4}",
            kind="units",
            units_generated=3,
            units_counted=3,
            pending=abs(i),
            threshold=500,
        )
    )
