"""Traces across the pipeline on the real broker: a request's W3C trace context, sent to the ingest as
``traceparent`` (or current in a publisher's caller), is on the headers of its ``feedback.raw``
records, of every triplet derived from them and of the trigger its units cross (the ingest and the
worker as users run them, exporting nothing: the default)."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord
from opentelemetry.sdk.trace import TracerProvider

from pipeline import tracing
from pipeline.api.publisher import FeedbackPublisher
from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import TopicNames
from pipeline.procs import Service
from pipeline.settings import Settings
from pipeline.tenants import load_tenants
from tests.conftest import TEST_TENANTS
from tests.http_helpers import post
from tests.kafka_helpers import read_until

STREAM_KEY = "fs_stream_key"
DOMAIN = "s_three"  # threshold 3, used by no other broker test: six triplets cross it at least once


def new_traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def outcomes_of(seeker: str) -> list[dict[str, Any]]:
    """Two accepted and two rejected candidates of a seeker: each accepted over each rejected (4)."""
    return [
        {"seeker_id": seeker, "candidate_id": f"{seeker}-c{i}", "outcome": label}
        for i, label in enumerate(("accepted", "rejected", "accepted", "rejected"))
    ]


def traced(trace_id: str) -> Any:
    return lambda r: tracing.trace_id_of(r.headers) == trace_id


async def test_a_requests_trace_id_reaches_its_raw_record_triplets_and_trigger(
    ingest: Service, worker: Service, names: TopicNames, broker: Broker
) -> None:
    trace_id, parent = new_traceparent()
    seeker = f"trace-{uuid.uuid4().hex[:8]}"
    body = {"domain": DOMAIN, "items": outcomes_of(seeker) + outcomes_of(seeker + "b")}
    status, answer, _ = await post(
        ingest, "/v1/feedback", body, key=STREAM_KEY, headers={"traceparent": parent, "tracestate": "fs=1"}
    )
    assert status in (200, 202), answer

    raw = await read_until(broker.bootstrap, names.raw, traced(trace_id), count=2)
    assert len(raw) == 2  # one event per seeker, each with the caller's context as it came
    for rec in raw:
        headers = dict(rec.headers)
        assert headers["traceparent"] == parent.encode() and headers["tracestate"] == b"fs=1"
        assert headers["correlation_id"]  # the envelope's own headers stay

    triplets = await read_until(broker.bootstrap, names.triplets, traced(trace_id), count=8)
    units = [orjson.loads(r.value) for r in triplets]
    assert len(triplets) == 8 and {u["anchor"] for u in units} == {seeker, seeker + "b"}
    assert all(dict(r.headers) == {"traceparent": parent.encode(), "tracestate": b"fs=1"} for r in triplets)

    triggers = await read_until(broker.bootstrap, names.triggers, traced(trace_id))
    trigger = orjson.loads(triggers[0].value)
    assert trigger["domain"] == DOMAIN and trigger["reason"] == "threshold"
    # the crossing unit is one of this request's triplets: the trigger's range ends on it
    ends = {(r.partition, r.offset) for r in triplets}
    assert (trigger["range"]["partition"], trigger["range"]["end_offset"]) in ends, trigger
    print("triplet headers:", triplets[0].headers)  # for the closing note (pytest -s)


async def test_without_traceparent_the_records_carry_no_trace_headers(
    ingest: Service, worker: Service, names: TopicNames, broker: Broker
) -> None:
    seeker = f"bare-{uuid.uuid4().hex[:8]}"
    status, answer, _ = await post(
        ingest, "/v1/feedback", {"domain": DOMAIN, "items": outcomes_of(seeker)}, key=STREAM_KEY
    )
    assert status in (200, 202), answer

    def mine(r: ConsumerRecord[bytes, bytes]) -> bool:
        return bool(orjson.loads(r.value).get("anchor") == seeker)

    triplets = await read_until(broker.bootstrap, names.triplets, mine, count=4)
    assert len(triplets) == 4 and all(tracing.carried(r.headers) is None for r in triplets)


async def test_the_publisher_puts_its_callers_span_on_the_records(
    worker: Service, settings: Settings, names: TopicNames, broker: Broker
) -> None:
    seeker = f"pub-{uuid.uuid4().hex[:8]}"
    tracer = TracerProvider().get_tracer("a-service-of-ours")
    assert broker.bootstrap
    async with FeedbackPublisher(
        broker.bootstrap, load_tenants(TEST_TENANTS), "stream", settings=settings
    ) as pub:
        with tracer.start_as_current_span("score-batch") as span:
            result = await pub.publish({"domain": DOMAIN, "items": outcomes_of(seeker)})
    ctx = span.get_span_context()
    trace_id, span_id = format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")

    (raw,) = await read_until(broker.bootstrap, names.raw, traced(trace_id))
    assert dict(raw.headers)["traceparent"] == f"00-{trace_id}-{span_id}-{ctx.trace_flags:02x}".encode()
    assert dict(raw.headers)["event_id"] == result.event_ids[0].encode()
    triplets = await read_until(broker.bootstrap, names.triplets, traced(trace_id), count=4)
    assert len(triplets) == 4 and {orjson.loads(r.value)["anchor"] for r in triplets} == {seeker}


async def test_an_exporting_ingest_writes_its_server_span_in_the_callers_trace(
    ingest_factory: Callable[..., Service], names: TopicNames, broker: Broker
) -> None:
    svc = ingest_factory("otel", otel_traces_exporter="console", otel_bsp_schedule_delay="100")
    trace_id, parent = new_traceparent()
    seeker = f"otel-{uuid.uuid4().hex[:8]}"
    status, answer, _ = await post(
        svc,
        "/v1/feedback",
        {"domain": DOMAIN, "items": outcomes_of(seeker)},
        key=STREAM_KEY,
        headers={"traceparent": parent},
    )
    assert status in (200, 202), answer
    (raw,) = await read_until(broker.bootstrap, names.raw, traced(trace_id))
    # the record's parent is now the ingest's server span (same trace, the ingest's span id)
    span_id = dict(raw.headers)["traceparent"].decode()[36:52]
    assert span_id != parent[36:52]
    deadline = time.monotonic() + 30
    while f'"span_id": "0x{span_id}"' not in svc.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the ingest did not export its server span"
        await asyncio.sleep(0.2)
    log = svc.log_path.read_text(errors="replace")
    assert f'"trace_id": "0x{trace_id}"' in log and '"kind": "SpanKind.SERVER"' in log
    assert f'"parent_id": "0x{parent[36:52]}"' in log
