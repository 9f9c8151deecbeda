"""Feedback store benchmark: rows/s written by the store stage, and list latency at 1 M entries.

    python -m scripts.store_bench [--events 20000] [--entries 1000000] [--postgres]

1. *Store stage*: ``--events`` raw events (4 scored entries in 5, the rest seed 000 outcomes) are
   written to ``feedback.raw`` of a private topic prefix on the real broker (pipeline.kafka.broker), then
   the store stage (``pipeline.stream.store.StoreRunner``, STAGE_BATCH 500) consumes them into a fresh store;
   rows/s = raw events (each a generic row, plus an entry row when scored) / seconds to the last.
2. *List*: ``--entries`` entries of one tenant over 4 tasks are bulk-loaded into a fresh store, then
   the list query (``store_sql.list_entries``, limit 100) is timed: first pages (offset 0) and deep
   pages (offset up to 10,000), with and without ``task_id``; p50/p99 over 400 queries each.

SQLite always; PostgreSQL too with ``--postgres`` (pipeline.store.postgres finds or starts a server).
Prints one line per measurement and writes JSON to ``bench-results/``. Speed is never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from pipeline.api.contracts import Contract
from pipeline.api.publisher import FeedbackPublisher
from pipeline.kafka.broker import find_broker
from pipeline.kafka.topics import delete_prefixed_topics, ensure_topics, topic_names
from pipeline.settings import REPO_ROOT, Settings
from pipeline.store.postgres import find_postgres
from pipeline.store.sql import Database, count_entries, explain_list, list_entries, open_database
from pipeline.stream.store import StoreRunner, micros
from pipeline.tenants import load_tenants
from pipeline.wire import envelope
from scripts.common import write_raw

TENANTS = REPO_ROOT / "tests" / "data" / "tenants.test.yaml"
TASK = "550e8400-e29b-41d4-a716-446655440000"
TASKS = [TASK, *(str(uuid.UUID(int=i)) for i in (1, 2, 3))]


COLUMNS = ["id", "tenant", "task_id", "created_us", "doc", "source_partition", "source_offset"]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def fresh_store(kind: str, pg_url: str | None, tmp: Path) -> tuple[Database, Settings]:
    if kind == "sqlite":
        settings = Settings(store_path=tmp / f"bench-{uuid.uuid4().hex[:6]}.sqlite3")
    else:
        import asyncpg

        assert pg_url is not None
        name = f"bench_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(pg_url)
        await conn.execute(f"CREATE DATABASE {name}")
        await conn.close()
        settings = Settings(database_url=pg_url.rsplit("/", 1)[0] + "/" + name)
    return await open_database(settings), settings


async def stage_rate(bootstrap: str, kind: str, pg_url: str | None, tmp: Path, n: int) -> dict[str, Any]:
    prefix = f"sb{uuid.uuid4().hex[:8]}."
    settings = Settings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, tenants_file=TENANTS)
    names = topic_names(settings)
    await ensure_topics(bootstrap, settings)
    pub = FeedbackPublisher(bootstrap, load_tenants(TENANTS), "dev", settings=settings)
    events: list[envelope.RawEvent] = []
    for i in range(n):
        if i % 5 == 4:
            body: dict[str, Any] = {
                "domain": "dating",
                "items": [{"seeker_id": f"s{i % 97}", "candidate_id": f"c{i}", "outcome": "accepted"}],
            }
            events.extend(pub.plan(body)[0].events)
        else:
            body = {
                "task_id": TASKS[0],
                "inputs": {"ticket_text": f"ticket {i}", "priority": "high"},
                "output": f"answer {i} " + "x" * 120,
                "score": (i % 11) / 10,
                "metadata": {"model": "gpt-4o", "latency_ms": i % 900},
            }
            events.extend(pub.plan(body, contract=Contract.SCORED_OUTPUT)[0].events)
    await write_raw(bootstrap, settings, events, transactional_id=f"bench-{prefix}", chunk=500)
    scored = sum(isinstance(e, envelope.ScoredOutputEnvelope) for e in events)
    db, _ = await fresh_store(kind, pg_url, tmp)
    runner = StoreRunner(
        db,
        bootstrap=bootstrap,
        group_id=f"bench-{prefix}",
        raw_topic=names.raw,
        erasures_topic=names.erasures,
    )
    started = time.perf_counter()
    await runner.start()
    try:
        while (stored := await count_entries(db)) < scored:
            if time.perf_counter() - started > 600:
                raise TimeoutError(f"the store stage wrote {stored} of {scored} entries in 600 s")
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - started
    finally:
        await runner.stop()
        await db.close()
        await delete_prefixed_topics(bootstrap, prefix)
    return {
        "engine": kind,
        "raw_events": len(events),
        "entries": scored,
        "seconds": round(seconds, 2),
        "events_per_s": round(len(events) / seconds),
        "batches": runner.batches,
    }


async def load_entries(db: Database, n: int) -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    rng = random.Random(7)
    chunk = 20_000
    for start in range(0, n, chunk):
        rows = []
        for i in range(start, min(n, start + chunk)):
            eid = str(uuid.UUID(int=(i + 1) << 64 | rng.getrandbits(64)))
            task = TASKS[i % len(TASKS)]
            created = t0 + timedelta(seconds=i)
            doc = orjson.dumps(
                {
                    "id": eid,
                    "task_id": task,
                    "inputs": {"ticket_text": f"ticket {i}", "priority": "high"},
                    "output": f"answer {i} " + "x" * 120,
                    "score": (i % 11) / 10,
                    "source": "sdk",
                    "metadata": None,
                    "created_at": created.isoformat().replace("+00:00", "Z"),
                }
            ).decode()
            rows.append((eid, "dev", task, micros(created), doc, i % 4, i))
        if db.engine == "postgres":
            pool: Any = db._pool  # type: ignore[attr-defined]
            async with pool.acquire() as conn:
                await conn.copy_records_to_table(
                    "feedback_entries",
                    records=rows,
                    columns=[
                        "id",
                        "tenant",
                        "task_id",
                        "created_us",
                        "doc",
                        "source_partition",
                        "source_offset",
                    ],
                )
        else:
            async with db.transaction() as conn:
                await conn.executemany(
                    "INSERT INTO feedback_entries (id, tenant, task_id, created_us, doc, source_partition, "
                    "source_offset) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
    if db.engine == "postgres":
        async with db.transaction() as conn:
            await conn.execute("ANALYZE feedback_entries")
    else:
        async with db.transaction() as conn:
            await conn.execute("ANALYZE")


async def list_latency(kind: str, pg_url: str | None, tmp: Path, n: int) -> dict[str, Any]:
    db, _ = await fresh_store(kind, pg_url, tmp)
    try:
        started = time.perf_counter()
        await load_entries(db, n)
        load_s = time.perf_counter() - started
        out: dict[str, Any] = {"engine": kind, "entries": n, "load_s": round(load_s, 1)}
        rng = random.Random(11)
        for name, task, deep in [
            ("task_first_page", True, False),
            ("task_deep_page", True, True),
            ("all_first_page", False, False),
        ]:
            timings = []
            for _ in range(400):
                offset = rng.randrange(0, min(10_000, n // len(TASKS) - 100)) if deep else 0
                t = time.perf_counter()
                docs = await list_entries(db, "dev", rng.choice(TASKS) if task else None, 100, offset)
                timings.append((time.perf_counter() - t) * 1000)
                assert len(docs) == 100
            out[name] = {
                "p50_ms": round(statistics.median(timings), 2),
                "p99_ms": round(percentile(timings, 99), 2),
            }
        out["explain_task"] = await explain_list(db)
        out["explain_all"] = await explain_list(db, with_task=False)
        return out
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL too")
    args = parser.parse_args()
    results: dict[str, Any] = {"stage": [], "list": []}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="store-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        broker = stack.enter_context(find_broker(stop_on_exit=False))
        pg_url = stack.enter_context(find_postgres()).url if args.postgres else None
        engines = ["sqlite", "postgres"] if args.postgres else ["sqlite"]
        for kind in engines:
            r = asyncio.run(stage_rate(broker.bootstrap, kind, pg_url, tmp, args.events))
            results["stage"].append(r)
            print(
                f"store stage [{kind}]: {r['raw_events']} raw events ({r['entries']} entries) in "
                f"{r['seconds']} s = {r['events_per_s']} events/s ({r['batches']} transactions)",
                flush=True,
            )
        for kind in engines:
            r = asyncio.run(list_latency(kind, pg_url, tmp, args.entries))
            results["list"].append(r)
            print(
                f"list [{kind}] at {r['entries']} entries (loaded in {r['load_s']} s), limit 100: "
                + ", ".join(
                    f"{k} p50 {r[k]['p50_ms']} ms p99 {r[k]['p99_ms']} ms"
                    for k in ("task_first_page", "task_deep_page", "all_first_page")
                ),
                flush=True,
            )
            print("  EXPLAIN (task):", " | ".join(r["explain_task"]))
            print("  EXPLAIN (all): ", " | ".join(r["explain_all"]))
    out_dir = REPO_ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"store-bench-{int(time.time())}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
