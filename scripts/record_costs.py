"""CPU per record of the two stages' own work (rules, codecs, state), without Kafka.

``make bench`` measures the whole stream on a broker, where the Kafka clients and a shared machine
blur what the stages themselves cost. This runs the bench's data through ``ExpandStage.process``
and ``CountStage.process`` with a transaction that only collects what is sent (the runtime's
``Tx`` surface: send, flush, decode, attempt), encodes each changed state once per batch as the
runtime writes its changelog, and reports CPU microseconds per raw event for each stage, plus a few
single-record codec costs::

    python -m scripts.record_costs [--events 20000] [--repeat 3]

Figures are process CPU time (best of ``--repeat``), so other load on the machine matters less.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import timeit
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar, cast

from aiokafka.structs import ConsumerRecord

from pipeline.contracts import kafka_key
from pipeline.kafka.topics import topic_names
from pipeline.rules.counters import count_units
from pipeline.rules.triplets import Limits
from pipeline.settings import Settings
from pipeline.stream.count import CountStage
from pipeline.stream.expand import ExpandStage
from pipeline.stream.runtime import Record, Table, Tx, key_partition
from pipeline.tenants import parse_tenants
from pipeline.wire import envelope
from pipeline.wire.records import deterministic_id
from scripts.bench import Workload, build_dataset, tenants_data

P = ParamSpec("P")
T = TypeVar("T")
PARTITIONS = 4
BATCH = 500


@dataclass(frozen=True)
class Meta:
    """What count reads of a sent record's metadata."""

    partition: int
    offset: int


class CollectingTx:
    """The part of ``runtime.Tx`` a stage uses; keeps what is sent, resolves offsets at once."""

    def __init__(self) -> None:
        self.sent: dict[str, list[tuple[bytes | None, bytes | None]]] = defaultdict(list)
        self.next_offset: dict[tuple[str, int], int] = defaultdict(int)
        self.dead = 0
        self.loop = asyncio.get_running_loop()

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        **_: Any,
    ) -> asyncio.Future[Meta]:
        self.sent[topic].append((key, value))
        if partition is None:
            partition = key_partition(key, PARTITIONS) or 0 if key is not None else 0
        offset = self.next_offset[topic, partition]
        self.next_offset[topic, partition] = offset + 1
        fut: asyncio.Future[Meta] = self.loop.create_future()
        fut.set_result(Meta(partition, offset))
        return fut

    async def co_partition(self, topic: str, rec: Record) -> int | None:
        return int(rec.partition)  # every topic has PARTITIONS partitions here

    async def flush(self) -> None:
        return None

    async def offsets(self) -> None:
        return None

    async def decode(self, rec: Record, decode: Callable[[bytes], T]) -> T | None:
        try:
            return decode(rec.value or b"")
        except Exception:
            self.dead += 1
            return None

    async def attempt(
        self, rec: Record, rule: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T | None:
        try:
            return rule(*args, **kwargs)
        except Exception:
            self.dead += 1
            return None


def _record(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> Record:
    return ConsumerRecord(topic, partition, offset, 0, 0, key, value, None, 0, len(value or b""), [])


def _by_partition(
    topic: str, messages: Sequence[tuple[bytes | None, bytes | None]]
) -> dict[int, list[Record]]:
    parts: dict[int, list[Record]] = defaultdict(list)
    for key, value in messages:
        p = (key_partition(key, PARTITIONS) or 0) if key is not None else 0
        parts[p].append(_record(topic, p, len(parts[p]), key, value))
    return parts


async def _run_stage(stage: Any, parts: dict[int, list[Record]]) -> tuple[float, CollectingTx]:
    """CPU seconds of ``stage.process`` over batches of each partition, with changelog encoding."""
    tx = CollectingTx()
    states: dict[int, dict[bytes, Any]] = defaultdict(dict)
    t0 = time.process_time()
    for p, records in parts.items():
        for i in range(0, len(records), BATCH):
            table: Table[Any] = Table(states[p])
            await stage.process(records[i : i + BATCH], table, cast(Tx, tx))
            for key, value in table.changes.items():  # the runtime writes each changed key once
                if value is None:
                    states[p].pop(key, None)
                else:
                    stage.encode_state(value)
                    states[p][key] = value
    return time.process_time() - t0, tx


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.record_costs", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    registry = parse_tenants(tenants_data({}))
    data = build_dataset(Workload(seed=7), registry, args.events)
    raw = [(kafka_key(e), envelope.encode(e)) for e in data.events]
    names = topic_names(Settings(topic_prefix=""))
    limits = Limits(max_items=200, max_age_seconds=30 * 86_400.0)

    def threshold_for(domain: str) -> int | None:
        return 1000 if domain == "__shared__" else registry.threshold_for(domain)

    best_expand = best_count = float("inf")
    n = len(raw)
    for _ in range(args.repeat):
        expand = ExpandStage(names, limits, "__shared__")
        expand_cpu, out = asyncio.run(_run_stage(expand, _by_partition(names.raw, raw)))
        count = CountStage(names, threshold_for)
        count_cpu, counted = asyncio.run(_run_stage(count, _by_partition(names.units, out.sent[names.units])))
        assert out.dead == 0 and counted.dead == 0, (out.dead, counted.dead)
        best_expand, best_count = min(best_expand, expand_cpu), min(best_count, count_cpu)
    units = len(counted.sent[names.triplets])
    print(
        f"{n} raw events -> {len(out.sent[names.signals])} signals, {len(out.sent[names.units])} units "
        f"messages, {units} triplet records, {len(counted.sent[names.triggers])} triggers, "
        f"{len(counted.sent[names.results])} results"
    )
    print(f"expand.process: {best_expand / n * 1e6:7.1f} us/event   (best of {args.repeat})")
    print(f"count.process:  {best_count / n * 1e6:7.1f} us/event")
    print(f"both stages:    {(best_expand + best_count) / n * 1e6:7.1f} us/event")

    at = datetime(2024, 1, 15, 10, 35, tzinfo=UTC)
    parts = (
        "dating",
        "u_alice",
        "u_bob",
        "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b",
        "u_carl",
        "0190a1b2-c3d4-7e5f",
    )
    counter = _counter(count, at)
    counter_bytes = count.encode_state(counter)
    micro: dict[str, Callable[[], object]] = {
        "deterministic_id (6 parts)": lambda: deterministic_id("triplet", *parts),
        "count state encode": lambda: count.encode_state(counter),
    }
    micro["count state decode"] = lambda: count.decode_state(counter_bytes)
    for label, fn in micro.items():
        loops = 20_000
        per = min(timeit.repeat(fn, number=loops, repeat=3)) / loops
        print(f"{label + ':':28s} {per * 1e6:6.2f} us")
    return 0


def _counter(count: CountStage, at: datetime) -> Any:
    """A realistic counter: an open range and a last trigger (as after a threshold crossing)."""
    state = count.decode_state(b"{}")
    state, _ = count_units(
        state,
        domain="dating",
        threshold=3,
        partition=1,
        offsets_and_counts=[(i, True) for i in range(5)],
        at=at,
    )
    return state


if __name__ == "__main__":
    raise SystemExit(main())
