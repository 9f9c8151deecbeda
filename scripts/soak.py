"""Soak bench: minutes of mixed HTTP load with key churn; RSS of the ingest and the worker over time.

Run with ``make soak`` (``python -m scripts.soak [--minutes 10] [--rate 60]
[--out bench-results/soak.json]``); ``--minutes 1`` is a quick check.

On the broker of ``pipeline.kafka.broker.find_broker``, with a fresh ``TOPIC_PREFIX`` and ``WORKER_ID`` and
the benchmark's tenants (``scripts.bench.tenants_data``: 4 tenants, 20 domains, 4 tasks, one
tenant in ``shared_improvement``), it starts one worker and one ingest as users run them
(``pipeline.procs``), then drives, from one aiohttp client at a fixed request rate (open loop,
bounded by ``--rate``, ``--concurrency`` and ``--max-requests``), only to 127.0.0.1:

* every contract: seed 000 (1-5 items; 1 % batches of 100), 002 (nested feedback), 001
  corrections, 003 scored entries on ``/api/v1/feedback``, 004 search events, ``POST /v1/train``,
  ``GET /v1/domains/{d}``;
* key churn: a share of seed 000 requests for seekers never seen before (the worker's per-seeker
  table grows unless it is bounded), new case ids, search ids and session ids, inference ids,
  a new ``X-Correlation-Id`` on every request, a new ``Idempotency-Key`` on 15 % of requests and a
  replay of a recent one on 3 %;
* a share of bad API keys (fresh random ones: 401s; throttled per address) and of bad bodies
  (invalid JSON, unknown fields, wrong types, nesting over the edge's bound, over-long ids: 4xx).

Every ``--sample-s`` seconds it reads the RSS of both processes (psutil if installed, else
``VmRSS`` in ``/proc/<pid>/status``). After the run: RSS at start (the first sample after the
warm-up), min, max, end, and growth over the last half (least-squares slope over the second
half's samples times its duration, so one noisy sample does not decide it); requests by kind and
status; how long the worker took to catch up; records on ``feedback.dlq`` (should be 0: bad bodies
are refused at the edge); the ingest's and worker's ``*_bytes`` gauges. JSON goes to
``bench-results/``. The soak's topics are deleted at the end unless ``--keep-topics``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from pipeline.kafka.topics import ensure_topics, topic_names
from pipeline.procs import free_port, ingest_service, worker_service
from pipeline.settings import REPO_ROOT
from scripts.bench import (
    N_TENANTS,
    SEARCH_TYPES,
    Workload,
    ranking_domains,
    task_id,
    tenant_key,
    tenants_data,
)
from scripts.common import (
    add_run_arguments,
    count_records,
    run_and_report,
    run_header,
    stack_env,
    tagged_settings,
    wait_processed,
)

#: request kinds and their share (percent of requests)
MIX: dict[str, float] = {
    "000 pool seeker": 24,
    "000 new seeker": 10,
    "000 batch 100": 1,
    "002 inference": 12,
    "001 correction": 10,
    "003 scored": 10,
    "004 search": 14,
    "train": 1,
    "domain state": 3,
    "bad key": 5,
    "bad body": 10,
}
IDEMPOTENT_SHARE = 0.15
REPLAY_SHARE = 0.03


# --- RSS ---------------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB: psutil if installed, else /proc/<pid>/status VmRSS."""
    try:
        import psutil  # type: ignore[import-untyped]

        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except ImportError:
        pass
    except Exception:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_method() -> str:
    try:
        import psutil  # noqa: F401

        return "psutil rss"
    except ImportError:
        return "/proc/<pid>/status VmRSS"


def slope_per_s(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, value) points; 0 for fewer than two."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mt) * (v - mv) for t, v in points) / den


def rss_summary(samples: list[tuple[float, float]], warmup_s: float, total_s: float) -> dict[str, Any]:
    """Start (first sample after the warm-up), min, max, end, growth over the last half."""
    after = [(t, v) for t, v in samples if t >= warmup_s] or samples
    if not after:
        return {"samples": 0}
    values = [v for _, v in after]
    half = warmup_s + (total_s - warmup_s) / 2
    last_half = [(t, v) for t, v in after if t >= half]
    slope = slope_per_s(last_half)
    span = (last_half[-1][0] - last_half[0][0]) if len(last_half) > 1 else 0.0
    return {
        "samples": len(after),
        "start_mib": values[0],
        "min_mib": min(values),
        "max_mib": max(values),
        "end_mib": values[-1],
        "last_half_growth_mib": slope * span,
        "last_half_slope_mib_per_min": slope * 60,
        "last_half_end_minus_start_mib": (last_half[-1][1] - last_half[0][1]) if last_half else 0.0,
    }


# --- the traffic -------------------------------------------------------------------------------------


@dataclass
class Call:
    kind: str
    method: str
    path: str
    key: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Traffic:
    """A seeded, endless source of mixed requests with key churn."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.workload = Workload(seed=seed)
        self.kinds = list(MIX)
        self.weights = list(MIX.values())
        self.new_seekers = 0
        self.recent: collections.deque[Call] = collections.deque(maxlen=200)  # idempotent, for replays

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def ranking(self, tenant: int, n: int, seeker: str | None = None) -> bytes:
        req = self.workload.ranking(tenant, n)
        body = req.model.model_dump(mode="json", exclude_defaults=True)
        if seeker is not None:
            for item in body["items"]:
                item["seeker_id"] = seeker
        return orjson.dumps(body)

    def next(self) -> Call:
        rng = self.rng
        if self.recent and rng.random() < REPLAY_SHARE:
            old = self.recent[rng.randrange(len(self.recent))]
            return Call("idempotent replay", old.method, old.path, old.key, old.body, dict(old.headers))
        kind = rng.choices(self.kinds, self.weights)[0]
        tenant = rng.randrange(N_TENANTS)
        key = tenant_key(tenant)
        call = self.build(kind, tenant, key)
        if call.method == "POST" and kind not in ("bad key", "bad body") and rng.random() < IDEMPOTENT_SHARE:
            call.headers["Idempotency-Key"] = f"soak-{self.uuid()}"
            self.recent.append(call)
        return call

    def build(self, kind: str, tenant: int, key: str) -> Call:
        rng = self.rng
        if kind == "000 pool seeker":
            return Call(kind, "POST", "/v1/feedback", key, self.ranking(tenant, rng.randint(1, 5)))
        if kind == "000 new seeker":
            self.new_seekers += 1
            seeker = f"soak-new-{self.new_seekers}-{self.uuid()[:8]}"
            return Call(kind, "POST", "/v1/feedback", key, self.ranking(tenant, rng.randint(1, 5), seeker))
        if kind == "000 batch 100":
            return Call(kind, "POST", "/v1/feedback", key, self.ranking(tenant, 100))
        if kind == "002 inference":
            items = self.workload.inference_items(rng.randint(1, 3))
            return Call(kind, "POST", "/v1/feedback", key, orjson.dumps(items))
        if kind == "001 correction":
            body: dict[str, Any] = {
                "case_id": f"soak-case-{self.uuid()}",
                "module": rng.choice(["intent_classifier", "extract.quote", "router"]),
                "original_output": {"intent": "billing", "confidence": round(rng.random(), 3)},
                "corrected_output": {"intent": "refund"},
                "actor": {"type": "agent", "id": f"agent-{rng.randrange(50)}"},
            }
            return Call(kind, "POST", "/v1/feedback", key, orjson.dumps(body))
        if kind == "003 scored":
            body = {
                "task_id": task_id(tenant),
                "inputs": {"ticket_text": f"Login fails on browser {rng.randrange(100)}", "priority": "high"},
                "output": "Authentication issue. Check OAuth token handling.",
                "score": round(rng.random(), 3),
                "source": rng.choice(["sdk", "user_rating", "auto_eval", "seed"]),
                "metadata": {"model": "gpt-4o", "latency_ms": rng.randrange(100, 900)},
            }
            return Call(kind, "POST", "/api/v1/feedback", key, orjson.dumps(body), {"X-API-Key": key})
        if kind == "004 search":
            body = {
                "event_type": rng.choice(SEARCH_TYPES),
                "search_id": self.uuid() if rng.random() < 0.5 else self.workload.searches[tenant][0][0],
                "doc_id": self.uuid(),
                "rank": rng.randint(1, 10),
                "query": "refund policy for annual plans",
                "session_id": self.uuid(),
            }
            return Call(kind, "POST", "/v1/feedback", key, orjson.dumps(body))
        if kind == "train":
            domain = rng.choice([*ranking_domains(tenant), task_id(tenant)])
            return Call(kind, "POST", "/v1/train", key, orjson.dumps({"domain": domain}))
        if kind == "domain state":
            return Call(kind, "GET", f"/v1/domains/{rng.choice(ranking_domains(tenant))}", key)
        if kind == "bad key":
            bad = f"fs_soak_bad_{self.uuid().replace('-', '')}"
            return Call(kind, "POST", "/v1/feedback", bad, self.ranking(tenant, 1))
        return Call(
            kind, "POST", rng.choice(["/v1/feedback", "/api/v1/feedback"]), key, self.bad_body(tenant)
        )

    def bad_body(self, tenant: int) -> bytes:
        rng = self.rng
        choice = rng.randrange(6)
        if choice == 0:
            return b'{"domain": "x", "items": [' + self.uuid().encode()  # truncated, invalid JSON
        if choice == 1:
            return orjson.dumps(
                {"domain": ranking_domains(tenant)[0], "items": [{"seeker": "s", "extra": 1}]}
            )
        if choice == 2:
            return orjson.dumps([{"id": 42, "feedback": "not an object"}])
        if choice == 3:
            return b'{"event_type":"passage_used","agent_context":' + b'{"a":' * 60 + b"1" + b"}" * 61
        if choice == 4:
            item = {"seeker_id": "s" * 5000, "candidate_id": "c", "outcome": "accepted"}
            return orjson.dumps({"domain": ranking_domains(tenant)[0], "items": [item]})
        return orjson.dumps({"task_id": "not-a-uuid", "score": 2.5})


# --- driving -----------------------------------------------------------------------------------------


@dataclass
class Stats:
    by_kind: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    sent: int = 0
    late: int = 0  # requests issued later than their slot (the client or server could not keep up)


async def drive(
    url: str,
    traffic: Traffic,
    stats: Stats,
    *,
    rate: float,
    seconds: float,
    max_requests: int,
    concurrency: int,
) -> None:
    """Open loop: request i is due at start + i/rate; at most ``concurrency`` in flight."""
    timeout = aiohttp.ClientTimeout(total=30)
    slots = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout
    ) as session:

        async def one(call: Call) -> None:
            headers = {"Content-Type": "application/json", "X-Correlation-Id": f"soak-{uuid.uuid4().hex}"}
            headers["Authorization"] = f"Bearer {call.key}"
            headers.update(call.headers)
            try:
                async with session.request(
                    call.method, url + call.path, data=call.body, headers=headers
                ) as r:
                    await r.read()
                    status = str(r.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            finally:
                slots.release()
            stats.statuses[status] += 1
            stats.by_kind[call.kind][status] += 1

        loop = asyncio.get_running_loop()
        started = loop.time()
        while stats.sent < max_requests and loop.time() - started < seconds:
            due = started + stats.sent / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                stats.late += 1
            await slots.acquire()
            task = asyncio.create_task(one(traffic.next()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            stats.sent += 1
        if tasks:
            await asyncio.gather(*tasks)


async def sample_rss(
    pids: dict[str, int], every_s: float, out: dict[str, list[tuple[float, float]]], t0: float
) -> None:
    while True:
        now = time.monotonic() - t0
        for name, pid in pids.items():
            value = rss_mib(pid)
            if value is not None:
                out[name].append((now, value))
        await asyncio.sleep(every_s)


async def byte_gauges(url: str) -> dict[str, float]:
    """The ``*_bytes`` gauges a service exports on /metrics (idempotency store, stream view, tables)."""
    pattern = re.compile(r"^(feedstream_\w*bytes\w*(?:\{[^}]*\})?) ([0-9.e+-]+)$")
    try:
        async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = pattern.match(line)
        if m and not m.group(1).endswith(("_bucket", "_count", "_sum", "_created")):
            out[m.group(1)] = float(m.group(2))
    return out


# --- the run -----------------------------------------------------------------------------------------


async def measure(args: argparse.Namespace, bootstrap: str, broker_kind: str, tag: str) -> dict[str, Any]:
    prefix = f"{tag}."
    log_dir = REPO_ROOT / ".local" / "bench-logs" / tag
    tenants_file = Path(tempfile.mkdtemp(prefix="feedstream-soak-")) / "tenants.yaml"
    thresholds = {d: 500 for i in range(N_TENANTS) for d in ranking_domains(i)}
    tenants_file.write_text(yaml.safe_dump(tenants_data(thresholds, rate_limit_rps=100_000)))
    settings = tagged_settings(bootstrap, tag, tenants_file, seeker_max_age_s=args.seeker_max_age_s)
    await ensure_topics(bootstrap, settings)
    names = topic_names(settings)
    print(f"[soak] broker {bootstrap} ({broker_kind}), prefix {prefix}, logs {log_dir}")
    env = stack_env(
        settings,
        f"ingest-{tag}",
        seeker_max_age_s=args.seeker_max_age_s,
        **{
            name.upper(): str(value)
            for name, value in (
                ("view_max_bytes_per_tenant", args.view_max_bytes_per_tenant),
                ("idempotency_max_bytes_per_tenant", args.idempotency_max_bytes_per_tenant),
            )
            if value is not None
        },
        # the feedback store's SQLite file, private to this run (never another run's, never locked by it)
        STORE_PATH=str(tenants_file.parent / "store.sqlite3"),
    )
    ingest_port, worker_port = free_port(), free_port()
    worker = worker_service(env, worker_port, log_dir)
    ingest = ingest_service(env, ingest_port, log_dir)
    seconds = args.minutes * 60
    warmup_s = args.warmup_s if args.warmup_s is not None else min(60.0, max(10.0, seconds * 0.05))
    rate = args.rate
    max_requests = args.max_requests or int(rate * seconds * 1.05) + 1
    stats = Stats()
    traffic = Traffic(args.seed)
    samples: dict[str, list[tuple[float, float]]] = {"ingest": [], "worker": []}
    try:
        for svc in (worker, ingest):
            svc.start()
        for svc in (worker, ingest):
            await asyncio.to_thread(svc.wait_ready, 90.0)
        assert worker.proc is not None and ingest.proc is not None
        pids = {"ingest": ingest.proc.pid, "worker": worker.proc.pid}
        print(
            f"[soak] ingest (pid {pids['ingest']}) and worker (pid {pids['worker']}) ready; "
            f"{args.minutes:g} min at {rate:g} req/s (warm-up {warmup_s:.0f} s), "
            f"RSS every {args.sample_s:g} s"
        )
        t0 = time.monotonic()
        sampler = asyncio.create_task(sample_rss(pids, args.sample_s, samples, t0))
        progress = asyncio.create_task(report_progress(stats, samples, t0, seconds))
        try:
            await drive(
                f"http://127.0.0.1:{ingest_port}",
                traffic,
                stats,
                rate=rate,
                seconds=seconds,
                max_requests=max_requests,
                concurrency=args.concurrency,
            )
            load_s = time.monotonic() - t0
            drain_s, left = await wait_processed(bootstrap, settings, args.drain_timeout)
            await asyncio.sleep(args.sample_s)  # one more sample once the worker is idle
        finally:
            for task in (sampler, progress):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        gauges = {
            "ingest": await byte_gauges(f"http://127.0.0.1:{ingest_port}/metrics"),
            "worker": await byte_gauges(f"http://127.0.0.1:{worker_port}/metrics"),
        }
    finally:
        for svc in (ingest, worker):
            with contextlib.suppress(Exception):
                svc.stop()
    dlq = await count_records(bootstrap, names.dlq)
    return {
        **run_header("scripts.soak", bootstrap, broker_kind),
        "config": {
            "minutes": args.minutes,
            "rate_rps": rate,
            "concurrency": args.concurrency,
            "max_requests": max_requests,
            "warmup_s": warmup_s,
            "sample_s": args.sample_s,
            "mix_percent": MIX,
            "idempotent_share": IDEMPOTENT_SHARE,
            "replay_share": REPLAY_SHARE,
            "seeker_max_age_s": args.seeker_max_age_s,
            "view_max_bytes_per_tenant": args.view_max_bytes_per_tenant,  # None: the service's default
            "idempotency_max_bytes_per_tenant": args.idempotency_max_bytes_per_tenant,
            "seed": args.seed,
            "rss_method": rss_method(),
        },
        "load_s": load_s,
        "drain_s": drain_s,
        "left_unprocessed": {"raw": left[0], "units": left[1]},
        "requests": stats.sent,
        "late_requests": stats.late,
        "achieved_rps": stats.sent / load_s,
        "new_seekers": traffic.new_seekers,
        "statuses": dict(stats.statuses),
        "by_kind": {k: dict(v) for k, v in sorted(stats.by_kind.items())},
        "dlq_records": dlq,
        "byte_gauges": gauges,
        "rss": {
            name: rss_summary([p for p in s if p[0] <= load_s], warmup_s, load_s)
            | {"after_drain_mib": s[-1][1] if s else None}
            for name, s in samples.items()
        },
        "rss_samples": {name: [[round(t, 1), round(v, 1)] for t, v in s] for name, s in samples.items()},
    }


async def report_progress(
    stats: Stats, samples: dict[str, list[tuple[float, float]]], t0: float, seconds: float
) -> None:
    every = 60.0 if seconds >= 300 else 15.0
    while True:
        await asyncio.sleep(every)
        last: Callable[[str], str] = lambda n: f"{samples[n][-1][1]:.0f}" if samples[n] else "-"  # noqa: E731
        print(
            f"[soak] {time.monotonic() - t0:5.0f} s: {stats.sent} requests, RSS ingest {last('ingest')} MiB, "
            f"worker {last('worker')} MiB",
            flush=True,
        )


def table(r: dict[str, Any]) -> str:
    header = (
        "process",
        "start MiB",
        "min",
        "max",
        "end",
        "last-half growth",
        "slope MiB/min",
        "after drain",
        "samples",
    )
    rows = [header]
    for name in ("ingest", "worker"):
        s = r["rss"][name]
        if not s.get("samples"):
            rows.append((name, "-", "-", "-", "-", "-", "-", "-", "0"))
            continue
        rows.append(
            (
                name,
                f"{s['start_mib']:.1f}",
                f"{s['min_mib']:.1f}",
                f"{s['max_mib']:.1f}",
                f"{s['end_mib']:.1f}",
                f"{s['last_half_growth_mib']:+.1f}",
                f"{s['last_half_slope_mib_per_min']:+.2f}",
                f"{s['after_drain_mib']:.1f}",
                str(s["samples"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    cfg = r["config"]
    lines += [
        "",
        f"{r['requests']} requests in {r['load_s']:.0f} s ({r['achieved_rps']:.1f} req/s, "
        f"target {cfg['rate_rps']:g}; {r['late_requests']} late), {r['new_seekers']} new seekers; "
        + (
            f"worker caught up {r['drain_s']:.1f} s after; "
            if not any(r["left_unprocessed"].values())
            else f"worker NOT caught up after {r['drain_s']:.0f} s: {r['left_unprocessed']} left; "
        )
        + f"feedback.dlq records: {r['dlq_records']}",
        "statuses: " + " ".join(f"{s}:{n}" for s, n in sorted(r["statuses"].items())),
        "by kind:",
        *(f"  {k}: " + " ".join(f"{s}:{n}" for s, n in sorted(v.items())) for k, v in r["by_kind"].items()),
        f"RSS: {cfg['rss_method']}, every {cfg['sample_s']:g} s; start = first sample after the "
        f"{cfg['warmup_s']:.0f} s warm-up; last-half growth = least-squares slope over the second half "
        "x its duration",
    ]
    for proc, gauges in r["byte_gauges"].items():
        if gauges:
            shown = sorted(gauges.items(), key=lambda kv: -kv[1])[:6]
            lines.append(f"{proc} byte gauges: " + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in shown))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="duration of the load (1 for a quick check)"
    )
    parser.add_argument("--rate", type=float, default=60.0, help="requests/s (open loop, bounded)")
    parser.add_argument(
        "--max-requests", type=int, default=0, help="bound on requests (default: rate x time)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at most")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument(
        "--seeker-max-age-s",
        type=float,
        default=120.0,
        help="worker's SEEKER_MAX_AGE_S: short, so expiry of seeker histories happens within the soak",
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=None,
        help="seconds before the RSS 'start' sample (default 5 %% of the run, 10-60 s); set it past the time "
        "the byte-bounded structures take to fill, so growth up to a bound is not read as a leak",
    )
    parser.add_argument(
        "--view-max-bytes-per-tenant",
        type=int,
        default=None,
        help="the ingest's VIEW_MAX_BYTES_PER_TENANT (default: the service's, 16 MiB)",
    )
    parser.add_argument(
        "--idempotency-max-bytes-per-tenant",
        type=int,
        default=None,
        help="the ingest's IDEMPOTENCY_MAX_BYTES_PER_TENANT (default: the service's, 16 MiB)",
    )
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="bound on waiting for the worker")
    add_run_arguments(parser, "soak", seed=5)
    run_and_report("soak", measure, parser.parse_args(argv), table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
