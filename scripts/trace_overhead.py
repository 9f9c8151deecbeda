"""What traces cost the ingest per request, and the stages per record: a micro-benchmark in process.

Run with ``python -m scripts.trace_overhead [--requests 2000] [--rounds 5]``.

The real ingest app (``pipeline.api.ingest.Ingest``, an in-memory writer, no broker: the part traces
touch) served over loopback by aiohttp, driven by one sequential client, in three modes:

* ``off``: tracing off (the default), no ``traceparent`` sent;
* ``off+traceparent``: tracing off, the caller's ``traceparent`` forwarded to Kafka as it came;
* ``on``: an SDK ``TracerProvider`` (``BatchSpanProcessor`` to an exporter that drops the spans):
  the OpenTelemetry aiohttp middleware's server span per request, its context to Kafka.

Modes alternate round by round (the machine's noise spreads over all of them); reported: the median
over rounds of the mean microseconds per request, and the difference to ``off``. Then the stages'
per-record header step (:func:`pipeline.stream.runtime.output_headers`) on a raw record with and
without a trace context, and the ingest's own step when not tracing (:func:`pipeline.tracing.from_http`),
in nanoseconds: the end-to-end differences of a few microseconds are below the loop's noise.
Writes ``bench-results/trace_overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import tempfile
import time
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiohttp import web
from aiokafka.structs import ConsumerRecord
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from pipeline import tracing
from pipeline.api.ingest import Ingest
from pipeline.settings import REPO_ROOT, Settings
from pipeline.stream.runtime import output_headers
from pipeline.tenants import load_tenants
from scripts.bench import ranking_domains, tenant_key, tenants_data
from tests.inprocess import FakeView, FakeWriter  # the in-memory writer and view of the HTTP tests

BODY = orjson.dumps(
    {
        "domain": ranking_domains(0)[0],
        "items": [{"seeker_id": "u_a", "candidate_id": "u_b", "outcome": "accepted"}],
    }
)
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class DropExporter(SpanExporter):
    """Exports nowhere: the cost measured is the SDK's, not a collector's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def serve(provider: TracerProvider | None, tenants: Path) -> tuple[web.AppRunner, FakeWriter, str]:
    writer = FakeWriter()
    settings = Settings(tenants_file=tenants, result_wait_s=0)
    ingest = Ingest(settings, load_tenants(tenants), writer, FakeView(), tracer_provider=provider)  # type: ignore[arg-type]
    runner = web.AppRunner(ingest.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, writer, f"http://127.0.0.1:{port}/v1/feedback"


async def drive(session: aiohttp.ClientSession, url: str, n: int, headers: dict[str, str]) -> float:
    """Mean seconds per request over ``n`` sequential requests."""
    started = time.perf_counter()
    for _ in range(n):
        async with session.post(url, data=BODY, headers=headers) as resp:
            await resp.read()
            assert resp.status in (200, 202), resp.status
    return (time.perf_counter() - started) / n


async def measure(requests: int, rounds: int) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {tenant_key(0)}", "Content-Type": "application/json"}
    tenants = Path(tempfile.mkdtemp(prefix="feedstream-trace-")) / "tenants.yaml"
    tenants.write_text(yaml.safe_dump(tenants_data({}, rate_limit_rps=1_000_000)))  # never throttled
    off, off_writer, off_url = await serve(None, tenants)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DropExporter()))
    on, on_writer, on_url = await serve(provider, tenants)  # instruments aiohttp: after the plain app exists
    modes = {
        "off": (off_url, auth),
        "off+traceparent": (off_url, {**auth, "traceparent": PARENT}),
        "on": (on_url, {**auth, "traceparent": PARENT}),
    }
    results: dict[str, list[float]] = {m: [] for m in modes}
    try:
        async with aiohttp.ClientSession() as session:
            for url, headers in modes.values():  # warm-up
                await drive(session, url, 200, headers)
            for _ in range(rounds):
                for mode, (url, headers) in modes.items():
                    results[mode].append(await drive(session, url, requests, headers))
    finally:
        await off.cleanup()
        await on.cleanup()
        provider.shutdown()
    assert any(dict(r.headers).get("traceparent") for r in off_writer.records)
    assert all(dict(r.headers).get("traceparent") for r in on_writer.records)
    median = {m: statistics.median(v) * 1e6 for m, v in results.items()}
    return {
        "requests_per_round": requests,
        "rounds": rounds,
        "us_per_request": {m: round(v, 1) for m, v in median.items()},
        "us_over_off": {m: round(v - median["off"], 1) for m, v in median.items()},
    }


def stage_step() -> dict[str, float]:
    """Nanoseconds of the stages' per-record header step (expand's; count's is the same function)."""
    base = [("correlation_id", b"c" * 12), ("request_id", b"r" * 30), ("event_id", b"e" * 36)]
    base += [("contract", b"ranking_outcome"), ("tenant", b"dev")]
    plain = ConsumerRecord("raw", 0, 0, 0, 0, b"k", b"v", None, 0, 0, tuple(base))
    traced = ConsumerRecord(
        "raw", 0, 0, 0, 0, b"k", b"v", None, 0, 0, (*base, ("traceparent", PARENT.encode()))
    )
    unit = ConsumerRecord("units", 0, 0, 0, 0, b"k", b"v", None, 0, 0, ())
    out = {}
    for name, rec in (
        ("raw_without_trace", plain),
        ("raw_with_trace", traced),
        ("units_without_headers", unit),
    ):
        n = 200_000
        best = min(timeit.repeat(functools.partial(output_headers, rec), number=n, repeat=5))
        out[name] = round(best / n * 1e9, 1)
    return out


def edge_step() -> dict[str, float]:
    """Nanoseconds of the ingest's step when it does not trace: the caller's context from the headers."""
    out = {}
    for name, headers in (
        ("from_http_without", {"content-type": "x"}),
        ("from_http_with", {"traceparent": PARENT}),
    ):
        n = 200_000
        best = min(timeit.repeat(functools.partial(tracing.from_http, headers), number=n, repeat=5))
        out[name] = round(best / n * 1e9, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.trace_overhead", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per mode and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / "trace_overhead.json")
    args = parser.parse_args()
    result = {
        "ingest": asyncio.run(measure(args.requests, args.rounds)),
        "edge_ns_per_request": edge_step(),
        "stage_ns_per_record": stage_step(),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
