"""HTTP load benchmark of the real ingest, against a trivial aiohttp endpoint as same-run baseline.

Run with ``python -m scripts.load [--concurrency 32] [--duration 6] [--out bench-results/load.json]``.

Starts, on the broker of ``pipeline.kafka.broker.find_broker`` with its own ``TOPIC_PREFIX``:

* a worker (``pipeline.procs.worker_service``), so seed 000 requests get their true 200 answer
  (the ingest waits for the count stage's result, up to ``RESULT_WAIT_S``, then answers 202);
* the ingest (``pipeline.procs.ingest_service``) with a tenants file whose ``rate_limit_rps`` is
  far above what this machine can send, so nothing is throttled;
* a baseline server: a tiny aiohttp app (this module, ``--serve-baseline PORT``) that reads the
  body, parses it as JSON and answers 200 JSON, on the same stack (aiohttp, ``AppRunner``,
  ``TCPSite``, no access log) in its own process;
* a durable floor: the same app that also writes each body, as it came, as one record (a fresh
  key per request) through one idempotent ``acks=all`` aiokafka producer made as the ingest's
  ``AckedWriter`` makes its own (``pipeline.kafka.io.acked_producer``) to a scratch topic with as
  many partitions as ``feedback.raw``, and answers after the acknowledgement: the least a durable
  ingest does on this stack, with no validation, no envelope and no answer to build.

Each case (seed 000 with 1 and with 100 items; seeds 001, 002, 003 and 004 with 1 item; a seed 002
array of 100 items) is driven against the ingest and then the baseline with an aiohttp client at a
fixed concurrency, bounded in time (``--duration``) and count (``--max-requests``), after a short
warm-up. Between ingest runs the worker is given time to drain what the last case wrote (bounded).
By default (``--worker paused``) the worker is stopped (SIGSTOP) during the ingest runs of the cases
whose answer does not wait for the stream (all but seed 000), so the ingest is measured alone, as
the baseline is, instead of sharing the two cores with the stream processing what it writes;
``--worker running`` measures them with the worker at work. Reported per case: requests/s, items/s,
latency p50/p99, status counts, and requests/s relative to the baseline and to the durable
floor. One clock for every run:
the load generator's ``time.perf_counter``, from the first measured request sent to the last answer
read (latency: request sent to answer read, same clock). ``--cases`` runs a subset; ``--profile``
records a py-spy profile of the ingest during each ingest run (``<logs>/profile-<case>.txt``,
py-spy's raw format).

The load generator shares the machine's cores with the ingest, the worker and the broker, so the
absolute numbers are lower bounds; the ratio against the baseline (driven identically in the same
run) is the number to compare across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiohttp import web
from aiokafka import AIOKafkaProducer

from pipeline.kafka.io import acked_producer
from pipeline.kafka.topics import ensure_topics, topic_names
from pipeline.ops.status import lag_rows, positions, stage_inputs
from pipeline.procs import Service, child_env, free_port, ingest_service, worker_service
from pipeline.settings import REPO_ROOT, Settings
from scripts.bench import (
    N_TENANTS,
    SCORE_SOURCES,
    SEARCH_TYPES,
    Workload,
    cpu_seconds,
    create_topic,
    machine_busy_s,
    percentile,
    ranking_domains,
    task_id,
    tenant_key,
    tenants_data,
)
from scripts.common import (
    add_run_arguments,
    partitions_of,
    run_and_report,
    run_header,
    stack_env,
    tagged_settings,
)

# --- the baseline server ---------------------------------------------------------------------------


def _accepted(body: bytes) -> web.Response:
    """The trivial answer: how many items the body holds (it is parsed, as the ingest parses it)."""
    data = orjson.loads(body)
    n = len(data) if isinstance(data, list) else len(data.get("items", [1])) if isinstance(data, dict) else 1
    return web.Response(body=orjson.dumps({"accepted": n}), content_type="application/json")


async def _baseline_feedback(request: web.Request) -> web.Response:
    return _accepted(await request.read())


async def _baseline_health(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def serve_baseline(port: int, durable_topic: str | None = None, bootstrap: str = "") -> None:
    """The trivial endpoint, or (``durable_topic``) the durable floor: each body one record, answered
    after the broker's ``acks=all`` acknowledgement."""
    producer: AIOKafkaProducer | None = None
    handler = _baseline_feedback
    if durable_topic is not None:
        producer = sender = acked_producer(bootstrap, client_id="load-durable-floor", timeout_s=5.0)
        await producer.start()
        keys = itertools.count()

        async def durable_feedback(request: web.Request) -> web.Response:
            body = await request.read()
            answer = _accepted(body)
            await sender.send_and_wait(durable_topic, body, key=b"%d" % next(keys))
            return answer

        handler = durable_feedback
    app = web.Application(client_max_size=1_048_577)
    app.router.add_post("/v1/feedback", handler)
    app.router.add_post("/api/v1/feedback", handler)
    app.router.add_get("/healthz", _baseline_health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        if producer is not None:
            await producer.stop()


def baseline_service(
    env: dict[str, str], port: int, log_dir: Path, durable_topic: str | None = None
) -> Service:
    extra = ["--durable-topic", durable_topic] if durable_topic else []
    name = "durable" if durable_topic else "baseline"
    return Service(
        name,
        [sys.executable, "-m", "scripts.load", "--serve-baseline", str(port), *extra],
        child_env(env),
        f"http://127.0.0.1:{port}/healthz",
        log_dir / f"{name}.log",
    )


# --- request bodies --------------------------------------------------------------------------------


FEEDBACK_PATH = "/v1/feedback"
SCORED_PATH = "/api/v1/feedback"


@dataclass(frozen=True)
class Case:
    name: str
    items: int
    bodies: list[bytes]
    through_stream: bool  # the answer waits for the worker (seed 000)
    path: str = FEEDBACK_PATH


def ranking_body(workload: Workload, n_items: int) -> bytes:
    req = workload.ranking(0, n_items)
    return orjson.dumps(req.model.model_dump(mode="json", exclude_defaults=True))


def correction_body(rng: random.Random) -> bytes:
    """Seed 001, as the bench's workload writes it."""
    return orjson.dumps(
        {
            "case_id": f"case-{rng.randrange(1000)}",
            "module": rng.choice(["intent_classifier", "extract.quote", "router"]),
            "original_output": {"intent": "billing", "confidence": round(rng.random(), 3)},
            "corrected_output": {"intent": "refund"},
            "actor": {"type": "agent", "id": f"agent-{rng.randrange(50)}"},
        }
    )


def scored_body(rng: random.Random) -> bytes:
    """Seed 003 for the load tenant's task."""
    return orjson.dumps(
        {
            "task_id": task_id(0),
            "inputs": {"ticket_text": f"Login fails on browser {rng.randrange(100)}", "priority": "high"},
            "output": "Authentication issue. Check OAuth token handling.",
            "score": round(rng.random(), 3),
            "source": rng.choice(SCORE_SOURCES),
            "metadata": {"model": "gpt-4o", "latency_ms": rng.randrange(100, 900)},
        }
    )


def search_body(rng: random.Random) -> bytes:
    """Seed 004: one event of a search (its session from the body)."""
    search = uuid.UUID(int=rng.getrandbits(128), version=4)
    doc_n = rng.randrange(8)
    return orjson.dumps(
        {
            "event_type": rng.choice(SEARCH_TYPES),
            "search_id": str(search),
            "session_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "doc_id": str(uuid.uuid5(search, f"doc{doc_n}")),
            "passage_id": str(uuid.uuid5(search, f"passage{doc_n}")),
            "rank": doc_n + 1,
            "query": f"query {rng.randrange(50)}",
            "agent_context": {"agent": "support-bot", "step": rng.randrange(1, 6)},
        }
    )


def build_cases(workload: Workload, pool: int, seed: int) -> list[Case]:
    rng = random.Random(seed)
    return [
        Case("seed000 x1", 1, [ranking_body(workload, 1) for _ in range(pool)], True),
        Case("seed000 x100", 100, [ranking_body(workload, 100) for _ in range(pool // 4)], True),
        Case("seed001 x1", 1, [correction_body(rng) for _ in range(pool)], False),
        Case("seed002 x1", 1, [orjson.dumps(workload.inference_items(1)) for _ in range(pool)], False),
        Case("seed003 x1", 1, [scored_body(rng) for _ in range(pool)], False, SCORED_PATH),
        Case("seed004 x1", 1, [search_body(rng) for _ in range(pool)], False),
        Case(
            "seed002 x100",
            100,
            [orjson.dumps(workload.inference_items(100)) for _ in range(pool // 4)],
            False,
        ),
    ]


CASE_NAMES = (
    "seed000 x1",
    "seed000 x100",
    "seed001 x1",
    "seed002 x1",
    "seed003 x1",
    "seed004 x1",
    "seed002 x100",
)


# --- the driver ------------------------------------------------------------------------------------


def profile(pid: int, duration_s: float, out: Path) -> Callable[[], None]:
    """Start py-spy on ``pid`` for ``duration_s`` when called (once the measured part begins)."""

    def start() -> None:
        spy = REPO_ROOT.parent / "main" / ".venv" / "bin" / "py-spy"
        exe = shutil.which("py-spy") or (str(spy) if spy.exists() else None)
        if exe is None:
            print("[load] --profile: py-spy not found")
            return
        argv = [exe, "record", "-p", str(pid), "-d", f"{max(1, int(duration_s))}", "-r", "200"]
        subprocess.Popen(
            [*argv, "-f", "raw", "-o", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        print(f"[load] profiling the ingest into {out}")

    return start


async def drive(
    url: str,
    case: Case,
    *,
    key: str,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    warmup: int,
    on_measure: Callable[[], None] | None = None,
    pid: int | None = None,
) -> dict[str, Any]:
    """POST the case's bodies from ``concurrency`` workers until the time or count bound; ``pid``:
    the server's process, whose CPU (and the whole machine's) over the measured part is reported per
    request."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    rng = random.Random(1)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> tuple[str, float]:
            body = case.bodies[rng.randrange(len(case.bodies))]
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    return str(resp.status), time.perf_counter() - started
            except (aiohttp.ClientError, TimeoutError) as exc:
                return type(exc).__name__, time.perf_counter() - started

        # warm-up: connections opened, code paths hot; not counted
        for _ in range(math.ceil(warmup / concurrency)):
            await asyncio.gather(*(one() for _ in range(concurrency)))

        if on_measure is not None:
            on_measure()
        issued = 0
        deadline = time.perf_counter() + duration_s

        async def worker() -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                status, latency = await one()
                statuses[status] += 1
                latencies.append(latency)

        cpu0 = cpu_seconds(pid) if pid is not None else 0.0
        busy0 = machine_busy_s()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu0 if pid is not None else None
        busy = machine_busy_s() - busy0
    ok = sum(n for s, n in statuses.items() if s.startswith("2"))
    n = max(1, len(latencies))
    return {
        "cpu_ms_per_request": None if cpu is None else cpu * 1000 / n,
        "machine_cpu_ms_per_request": busy * 1000 / n,
        "requests": len(latencies),
        "seconds": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "ok_per_s": ok / elapsed,
        "items_per_s": ok * case.items / elapsed,
        "p50_ms": (percentile(latencies, 0.50) or 0) * 1000,
        "p99_ms": (percentile(latencies, 0.99) or 0) * 1000,
        "statuses": dict(statuses),
    }


async def wait_drained(bootstrap: str, settings: Settings, timeout_s: float) -> float:
    """Wait (bounded) until the worker's two stages have caught up; seconds waited."""
    inputs = {
        stage: group_topics
        for stage, group_topics in stage_inputs(settings, topic_names(settings)).items()
        if stage in ("expand", "count")
    }
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        # ``feedstream status``'s lag: transaction markers and aborted records are not lag (a
        # caught-up stage's offset can sit several offsets before the end: the formula "end - 1"
        # waited out its bound after every case)
        committed, ends, behind = await positions(bootstrap, inputs)
        if all(row.lag == 0 for row in lag_rows(inputs, committed, ends, behind)):
            break
        await asyncio.sleep(0.5)
    return time.perf_counter() - started


# --- the run ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def pausing(service: Service | None) -> Iterator[None]:
    """``service``'s processes stopped (SIGSTOP) inside the block, continued after (None: nothing)."""
    proc = service.proc if service is not None else None
    if proc is None or proc.poll() is not None:
        yield
        return
    os.killpg(proc.pid, signal.SIGSTOP)  # its own session (pipeline.procs): the group is its processes
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGCONT)


async def measure(args: argparse.Namespace, bootstrap: str, broker_kind: str, tag: str) -> dict[str, Any]:
    prefix = f"{tag}."
    log_dir = REPO_ROOT / ".local" / "bench-logs" / tag
    tenants_file = Path(tempfile.mkdtemp(prefix="feedstream-load-")) / "tenants.yaml"
    # thresholds high enough that triggers are rare: this measures the HTTP path
    thresholds = {d: 100_000 for i in range(N_TENANTS) for d in ranking_domains(i)}
    tenants_file.write_text(yaml.safe_dump(tenants_data(thresholds, rate_limit_rps=1_000_000)))
    settings = tagged_settings(bootstrap, tag, tenants_file)
    await ensure_topics(bootstrap, settings)
    print(f"[load] broker {bootstrap} ({broker_kind}), prefix {prefix}, logs {log_dir}")

    env = stack_env(settings, f"ingest-{tag}")
    cases = [c for c in build_cases(Workload(seed=args.seed), 400, args.seed) if c.name in args.cases]
    durable_topic = f"{prefix}load.durable"
    await create_topic(
        bootstrap, durable_topic, len(await partitions_of(bootstrap, topic_names(settings).raw))
    )
    ports = {target: free_port() for target in TARGETS}
    worker = worker_service(env, free_port(), log_dir)
    ingest = ingest_service(env, ports["ingest"], log_dir)
    durable = baseline_service(env, ports["durable"], log_dir, durable_topic)
    base = baseline_service(env, ports["baseline"], log_dir)
    services = {"ingest": ingest, "durable": durable, "baseline": base}
    results: list[dict[str, Any]] = []
    try:
        for svc in (worker, ingest, durable, base):
            svc.start()
        for svc in (worker, ingest, durable, base):
            await asyncio.to_thread(svc.wait_ready, 90.0)
        print("[load] worker, ingest, durable floor and baseline ready")
        rounds: dict[str, list[dict[str, Any]]] = {case.name: [] for case in cases}
        for n_round in range(args.rounds):  # interleaved: every case and target once per round
            for case in cases:
                row: dict[str, Any] = {
                    "case": case.name,
                    "items_per_request": case.items,
                    "round": n_round + 1,
                }
                for target, port in ports.items():
                    # the worker drains what earlier runs wrote first, so it does not compete with this one
                    row[f"drain_before_{target}_s"] = await wait_drained(
                        bootstrap, settings, args.drain_timeout
                    )
                    spy = None
                    if args.profile and target == "ingest" and ingest.proc is not None:
                        out = log_dir / f"profile-{case.name}-{n_round + 1}.txt"
                        spy = profile(ingest.proc.pid, args.duration, out)
                    # the ingest alone, as the baseline runs: the worker's catching up (the stream of
                    # what the ingest writes) would take its cores from the process measured
                    paused = args.worker == "paused" and target == "ingest" and not case.through_stream
                    row[f"worker_paused_{target}"] = paused
                    with pausing(worker if paused else None):
                        row[target] = await drive(
                            f"http://127.0.0.1:{port}{case.path}",
                            case,
                            key=tenant_key(0),
                            concurrency=args.concurrency,
                            duration_s=args.duration,
                            max_requests=args.max_requests,
                            warmup=args.warmup,
                            on_measure=spy,
                            pid=pid_of(services[target]),
                        )
                row["ratio_rps"] = row["ingest"]["requests_per_s"] / row["baseline"]["requests_per_s"]
                row["durable_ratio_rps"] = (
                    row["durable"]["requests_per_s"] / row["baseline"]["requests_per_s"]
                )
                row["ratio_to_durable"] = row["ingest"]["requests_per_s"] / row["durable"]["requests_per_s"]
                rounds[case.name].append(row)
                i, d, b = row["ingest"], row["durable"], row["baseline"]
                print(
                    f"[load] round {n_round + 1} {case.name}: ingest {i['requests_per_s']:.0f} req/s "
                    f"p50 {i['p50_ms']:.0f} ms p99 {i['p99_ms']:.0f} ms {i['statuses']}; durable floor "
                    f"{d['requests_per_s']:.0f} req/s; baseline {b['requests_per_s']:.0f} req/s; "
                    f"ingest/baseline {row['ratio_rps']:.3f}"
                )
        results = [median_round(rows) for rows in rounds.values()]
    finally:
        for svc in (base, durable, ingest, worker):
            with contextlib.suppress(Exception):
                svc.stop()
    return {
        **run_header("scripts.load", bootstrap, broker_kind),
        "config": {
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "max_requests": args.max_requests,
            "warmup_requests": args.warmup,
            "result_wait_s": settings.result_wait_s,
            "worker": args.worker,
            "rounds": args.rounds,
            "note": "the load generator runs on the same cores as the ingest, the worker and the broker",
        },
        "cases": results,
    }


#: what each case is driven against, in this order: ours, the durable floor, the trivial endpoint
TARGETS = ("ingest", "durable", "baseline")


def median_round(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A case's median round by its ingest/baseline ratio (each ratio is against its own round's
    baseline, as the machine drifts between rounds), with every round's ratios beside it."""
    ranked = sorted(rows, key=lambda r: r["ratio_rps"])
    keep = ("round", "ratio_rps", "durable_ratio_rps", "ratio_to_durable")
    return ranked[(len(ranked) - 1) // 2] | {"rounds": [{k: r[k] for k in keep} for r in rows]}


def pid_of(service: Service) -> int | None:
    return service.proc.pid if service.proc is not None else None


def table(r: dict[str, Any]) -> str:
    header: tuple[str, ...] = (
        "case",
        "target",
        "req/s",
        "items/s",
        "p50 ms",
        "p99 ms",
        "vs baseline",
        "vs durable",
        "CPU ms/req",
        "machine",
        "statuses",
    )
    rows = [header]
    for c in r["cases"]:
        for target in TARGETS:
            m = c[target]
            vs_baseline = {"ingest": c["ratio_rps"], "durable": c["durable_ratio_rps"], "baseline": 1.0}
            vs_durable = {"ingest": f"{c['ratio_to_durable']:.3f}", "durable": "1", "baseline": ""}
            rows.append(
                (
                    c["case"] if target == "ingest" else "",
                    target,
                    f"{m['requests_per_s']:.0f}",
                    f"{m['items_per_s']:.0f}",
                    f"{m['p50_ms']:.1f}",
                    f"{m['p99_ms']:.1f}",
                    f"{vs_baseline[target]:.3f}" if target != "baseline" else "1",
                    vs_durable[target],
                    "" if m.get("cpu_ms_per_request") is None else f"{m['cpu_ms_per_request']:.3f}",
                    f"{m['machine_cpu_ms_per_request']:.3f}",
                    " ".join(f"{s}:{n}" for s, n in sorted(m["statuses"].items())),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i in (0, 1, 10) else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    cfg = r["config"]
    if cfg.get("rounds", 1) > 1:
        lines += [
            "",
            f"{cfg['rounds']} rounds, interleaved; shown: each case's median round by ingest/baseline",
        ]
        for c in r["cases"]:
            each = ", ".join(
                f"{x['ratio_rps']:.3f} ({x['durable_ratio_rps']:.3f}, {x['ratio_to_durable']:.3f})"
                for x in c["rounds"]
            )
            lines.append(f"  {c['case']}: ingest/baseline (durable/baseline, ingest/durable) {each}")
    lines += [
        "",
        f"concurrency {cfg['concurrency']}, {cfg['duration_s']} s per case and target (max "
        f"{cfg['max_requests']} requests), nproc {r['nproc']}; the load generator shares the cores",
        "seed 000 answers wait for the worker's count result (202 after result_wait_s); "
        "vs baseline = req/s / the trivial endpoint's req/s; vs durable = ingest req/s / the durable "
        "floor's (each body one record, acks=all, answered on the acknowledgement)",
        (
            "worker paused (SIGSTOP) during the other cases' ingest runs: the ingest measured alone, as "
            "the baseline is; the worker catches up before the next run"
            if cfg.get("worker") == "paused"
            else "worker running during every run: it processes what the ingest writes on the same cores"
        ),
        "one clock for every run: the load generator's time.perf_counter, first measured request sent "
        "to last answer read (latency: request sent to answer read)",
        "CPU ms/req: the server process's user+system CPU over the measured part per request "
        "(/proc/<pid>/stat); machine: every core's busy time per request (/proc/stat: the broker, "
        "the load generator and the paused worker included)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per case and target")
    parser.add_argument("--max-requests", type=int, default=50_000, help="bound per case and target")
    parser.add_argument("--warmup", type=int, default=64, help="requests before measuring")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="bound on waiting for the worker")
    add_run_arguments(parser, "load", seed=11)
    parser.add_argument(
        "--cases", type=lambda v: v.split(","), default=list(CASE_NAMES), help="comma-separated subset"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the ingest during each ingest run")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="every case this many times, interleaved; the median round shown",
    )
    parser.add_argument(
        "--worker",
        choices=("paused", "running"),
        default="paused",
        help="during the ingest runs of cases whose answer does not wait for the stream (all but seed "
        "000): the worker paused (the ingest alone, like the baseline) or running",
    )
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--durable-topic", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_baseline:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_baseline(args.serve_baseline, args.durable_topic, bootstrap))
        return 0
    run_and_report("load", measure, args, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
