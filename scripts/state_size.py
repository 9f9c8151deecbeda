"""Measure the memory of the stream's tables and of the ingest's view, per key (docs/design.md).

``python -m scripts.state_size``: builds N seeker histories the way the expand stage keeps them
(decoded from their changelog records, with the runner's per-key size), N domain-free results in a
StreamView, and prints bytes per key (tracemalloc) beside the changelog bytes the gauges show.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.api.stream_view import StreamView
from pipeline.kafka.topics import topic_names
from pipeline.rules.triplets import Limits, Observation, SeekerHistory
from pipeline.settings import Settings
from pipeline.stream.expand import ExpandStage
from pipeline.stream.runtime import _Owned
from pipeline.wire.records import StageResult, to_json

T0 = datetime(2024, 1, 15, 10, 35, tzinfo=UTC)
N = 20_000


def history(seeker: int, items: int) -> SeekerHistory:
    return SeekerHistory(
        observations=tuple(
            Observation(
                candidate_id=f"u_candidate_{seeker}_{i}",
                label="accepted",
                grade=2.0,
                positive=True,
                weight=1.0,
                event_id=f"0190a8f4-8f0e-7c4e-9a6c-{seeker * 1000 + i:012d}",
                observed_at=T0 + timedelta(seconds=i),
            )
            for i in range(items)
        )
    )


def collector_walk(kept: Any) -> tuple[float, int]:
    """With ``kept`` alive: a full collection's milliseconds and the objects it walks. The tables'
    records are msgspec Structs with ``gc=False`` (they hold no cycles), so the collector skips them."""
    gc.collect()
    started = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - started) * 1000, len(gc.get_objects())


def measure(build: Any) -> tuple[float, Any]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / N, kept


def main() -> None:
    stage = ExpandStage(topic_names(Settings()), Limits(max_items=200, max_age_seconds=1.0), "__shared__")
    for items in (1, 10, 200):
        records = [(f"dating/u_seeker_{s}".encode(), stage.encode_state(history(s, items))) for s in range(N)]

        def build(records: list[tuple[bytes, bytes]] = records) -> _Owned[Any]:
            owned: _Owned[Any] = _Owned(producer=None)
            for key, value in records:
                owned.apply(key, stage.decode_state(value), len(key) + len(value))
            return owned

        _, empty = collector_walk(None)
        per_key, owned = measure(build)
        walk_ms, walked = collector_walk(owned)
        print(
            f"expand, {items:>3} outcome(s) per seeker: {per_key:8.0f} bytes of memory per seeker, "
            f"{owned.state_bytes / N:7.0f} changelog bytes (feedstream_state_bytes / keys); "
            f"a full garbage collection {walk_ms:6.1f} ms, {(walked - empty) / N:5.1f} objects walked "
            "per seeker"
        )
        del owned
    values = [
        to_json(
            StageResult(
                request_id=f"req_{i:032x}",
                event_id=f"0190a8f4-8f0e-7c4e-9a6c-{i:012d}",
                domain="dating",
                kind="units",
                units_generated=3,
                units_counted=3,
                pending=17,
                threshold=1000,
            )
        )
        for i in range(N)
    ]

    def view() -> StreamView:
        v = StreamView(
            "unused:9092", topic_names(Settings()), owner_of=lambda d: "dev", max_bytes_per_tenant=1 << 40
        )
        for value in values:
            v._apply(v.names.results, None, value)
        return v

    per_result, v = measure(view)
    print(
        f"view: {per_result:6.0f} bytes of memory per one-event request, "
        f"{v.kept_bytes('dev') / N:6.0f} counted against the tenant's budget"
    )


if __name__ == "__main__":
    main()
