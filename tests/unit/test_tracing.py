"""Traces across the pipeline, in process: W3C trace headers from the edge (HTTP ingest, publisher)
onto ``feedback.raw``, through both stages (tests/fakekafka.py) onto signals, units, triplets and
triggers; the ingest's server span (SDK, in-memory exporter); when the ``OTEL_*`` variables turn
export on."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from aiokafka import TopicPartition
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from pipeline import contracts, tracing
from pipeline.api.contracts import Contract
from pipeline.api.publisher import FeedbackPublisher
from pipeline.kafka.io import OutRecord, Written
from tests.http_helpers import KAIZEN_KEY, SCORED
from tests.inprocess import Edge, FakeView, FakeWriter, make_settings
from tests.unit.test_stream_stages import NAMES, SETTINGS, TENANTS, Stream, outcome

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
STATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


# --- the pure header rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (PARENT, True),
        ("01-" + PARENT[3:] + "-what-comes-later", True),  # a later version may add fields
        (PARENT + "-x", False),  # version 00 has exactly four
        ("ff-" + PARENT[3:], False),
        (PARENT.upper(), False),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", False),
        (f"00-{TRACE_ID}-{'0' * 16}-01", False),
        (PARENT[:-1], False),
        ("", False),
    ],
)
def test_traceparent_validation_follows_w3c(value: str, ok: bool) -> None:
    assert tracing.valid_traceparent(value) is ok


def test_the_callers_context_is_taken_from_http_headers_only_when_valid() -> None:
    assert tracing.from_http({"traceparent": PARENT, "tracestate": STATE}) == [
        ("traceparent", PARENT.encode()),
        ("tracestate", STATE.encode()),
    ]
    assert tracing.from_http({"traceparent": f" {PARENT} "}) == [("traceparent", PARENT.encode())]
    assert tracing.from_http({"traceparent": "garbage", "tracestate": STATE}) == []
    assert tracing.from_http({"tracestate": STATE}) == []  # no parent, no state
    too_long = "a=" + "b" * tracing.TRACESTATE_MAX_CHARS
    assert tracing.from_http({"traceparent": PARENT, "tracestate": too_long}) == [
        ("traceparent", PARENT.encode())
    ]
    assert tracing.from_http({"traceparent": PARENT, "tracestate": "a=\u00e9"}) == [
        ("traceparent", PARENT.encode())
    ]


def test_carried_keeps_only_the_trace_headers_of_a_record() -> None:
    raw = [("correlation_id", b"c"), ("traceparent", PARENT.encode()), ("tenant", b"t")]
    assert tracing.carried(raw) == [("traceparent", PARENT.encode())]
    assert tracing.carried([("correlation_id", b"c")]) is None
    assert tracing.carried(()) is None and tracing.carried(None) is None
    assert tracing.trace_id_of(raw) == TRACE_ID
    assert tracing.trace_id_of([("traceparent", b"nonsense")]) is None


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []),
    ],
)
def test_export_is_off_unless_the_otel_variables_ask_for_it(env: dict[str, str], wanted: list[str]) -> None:
    assert tracing.exporters_wanted(env) == wanted


def test_an_unknown_exporter_is_an_error_that_names_it() -> None:
    with pytest.raises(ValueError, match="zipkin"):
        tracing.exporters_wanted({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_setup_without_an_exporter_builds_nothing() -> None:
    assert tracing.setup("feedstream-test", {}) is None


# --- through both stages ------------------------------------------------------------------------


def headers_of(s: Stream, topic: str) -> list[tuple[tuple[str, bytes], ...]]:
    return [tuple(r.headers) for r in s.cluster.records(topic)]


async def publish_traced(s: Stream, body: Any, trace: Sequence[tuple[str, bytes]]) -> None:
    intake, _ = s.publishers["stream"].plan(body)
    for record in contracts.raw_records(NAMES.raw, intake.events, trace):
        s.cluster.produce(NAMES.raw, [record.value], key=record.key or b"", headers=record.headers)
    await s.run()


async def test_the_trace_rides_from_the_raw_record_onto_signals_units_triplets_and_the_trigger() -> None:
    traced = [("traceparent", PARENT.encode()), ("tracestate", STATE.encode())]
    async with Stream() as s:
        items = [outcome("alice", c, "accepted" if i % 2 else "rejected") for i, c in enumerate("bcdef")]
        await publish_traced(s, {"domain": "s_three", "items": items}, traced)  # 6 triplets, threshold 3
        for topic in (NAMES.signals, NAMES.units, NAMES.triplets, NAMES.triggers):
            got = [tuple(kv for kv in h if not cloudevent(kv[0])) for h in headers_of(s, topic)]
            assert got, topic  # a trigger also carries its CloudEvent headers (test_cloudevents)
            assert all(h == tuple(traced) for h in got), (topic, got)
        assert s.on(NAMES.triggers)[0]["reason"] == "threshold"
        assert all(r.headers == () for r in s.cluster.records(NAMES.results))  # results stay bare


async def test_records_without_a_trace_get_no_headers_at_all() -> None:
    async with Stream() as s:
        await s.publish({"domain": "s_three", "items": [outcome("bob", c, "accepted") for c in "xyz"]})
        await s.publish({"domain": "s_three", "items": [outcome("bob", c, "rejected") for c in "uvw"]})
        for topic in (NAMES.signals, NAMES.units, NAMES.triplets, NAMES.triggers):
            assert s.cluster.records(topic), topic
            bare = [[k for k, _ in r.headers if not cloudevent(k)] for r in s.cluster.records(topic)]
            assert all(not b for b in bare), topic  # triggers: only their CloudEvent headers


async def test_each_output_carries_the_trace_of_its_own_input() -> None:
    other = f"00-{'a' * 32}-{'b' * 16}-00"
    async with Stream() as s:
        await publish_traced(
            s,
            {"domain": "s_five", "items": [outcome("carol", "x", "accepted")]},
            [("traceparent", PARENT.encode())],
        )
        await publish_traced(
            s,
            {"domain": "s_five", "items": [outcome("carol", "y", "rejected")]},
            [("traceparent", other.encode())],
        )
        await s.publish({"domain": "s_five", "items": [outcome("carol", "z", "rejected")]})
        ids = [tracing.trace_id_of(r.headers) for r in s.cluster.records(NAMES.triplets)]
    assert ids == ["a" * 32, None]  # x>y pairs on the second (traced) event; x>z on the untraced third


# --- the edges: the publisher and the HTTP ingest -----------------------------------------------


class CapturingWriter:
    def __init__(self) -> None:
        self.records: list[OutRecord] = []

    async def write(self, records: Sequence[OutRecord]) -> list[Written]:
        self.records.extend(records)
        return [Written(r.topic, 0, i) for i, r in enumerate(records)]


async def test_the_publisher_puts_the_current_span_on_its_records() -> None:
    pub = FeedbackPublisher("unused:9092", TENANTS, "stream", settings=SETTINGS)
    writer = CapturingWriter()
    pub.writer = writer  # type: ignore[assignment]
    body = {"domain": "s_five", "items": [outcome("dora", "x", "accepted"), outcome("erin", "y", "accepted")]}
    await pub.publish(body)  # no span: nothing added
    assert all(tracing.carried(r.headers) is None for r in writer.records)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("caller") as span:
        await pub.publish(body)
    trace_id = format(span.get_span_context().trace_id, "032x")
    traced = writer.records[2:]
    assert len(traced) == 2 and all(tracing.trace_id_of(r.headers) == trace_id for r in traced)
    assert all(dict(r.headers)["correlation_id"] for r in traced)  # the envelope's headers stay


async def ingest_client(provider: TracerProvider | None) -> Any:
    from aiohttp.test_utils import TestClient, TestServer

    from pipeline.api.ingest import Ingest
    from pipeline.tenants import load_tenants
    from tests.inprocess import TENANTS as HTTP_TENANTS

    ingest = Ingest(
        make_settings(),
        load_tenants(HTTP_TENANTS),
        FakeWriter(),
        FakeView(),  # type: ignore[arg-type]
        tracer_provider=provider,
    )
    client: Any = TestClient(TestServer(ingest.app()))
    await client.start_server()
    return client, ingest.writer


SEED_000 = {"domain": "dating", "items": [{"seeker_id": "a", "candidate_id": "b", "outcome": "accepted"}]}
AUTH = {"Authorization": "Bearer fs_dev_key_123"}


async def test_without_tracing_the_ingest_forwards_the_callers_traceparent_to_kafka() -> None:
    client, writer = await ingest_client(None)
    try:
        resp = await client.post(
            "/v1/feedback", json=SEED_000, headers={**AUTH, "traceparent": PARENT, "tracestate": STATE}
        )
        assert resp.status in (200, 202)
        resp = await client.post("/v1/feedback", json=SEED_000, headers={**AUTH, "traceparent": "bad"})
        assert resp.status in (200, 202)
        resp = await client.post(
            "/v1/train", json={"domain": "dating"}, headers={**AUTH, "traceparent": PARENT}
        )
        assert resp.status in (200, 202)
    finally:
        await client.close()
    first, second, train = writer.records
    assert tracing.carried(first.headers) == [
        ("traceparent", PARENT.encode()),
        ("tracestate", STATE.encode()),
    ]
    assert tracing.carried(second.headers) is None  # an invalid one is dropped, the request still served
    assert train.topic.endswith("feedback.units") and tracing.carried(train.headers) == [
        ("traceparent", PARENT.encode())
    ]


async def test_with_tracing_the_ingest_makes_a_server_span_in_the_callers_trace() -> None:
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        client, writer = await ingest_client(provider)
        try:
            resp = await client.post("/v1/feedback", json=SEED_000, headers={**AUTH, "traceparent": PARENT})
            assert resp.status in (200, 202)
        finally:
            await client.close()
    finally:
        AioHttpServerInstrumentor().uninstrument()  # aiohttp's Application as it was, for other tests
    (span,) = exporter.get_finished_spans()
    ctx = span.get_span_context()
    assert ctx is not None
    assert span.kind is SpanKind.SERVER
    assert format(ctx.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert span.attributes is not None and span.attributes.get("http.route", "/v1/feedback") == "/v1/feedback"
    # the record's parent is the ingest's span (a child of the caller's), same trace
    (record,) = writer.records
    (name, value), *_ = tracing.carried(record.headers) or [("", b"")]
    assert name == "traceparent"
    assert value.decode() == f"00-{TRACE_ID}-{format(ctx.span_id, '016x')}-01"


# --- contracts that describe an LLM call: trace_id / span_id ------------------------------------

SPAN_ID = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"trace_id": TRACE_ID.upper()}, "Field 'trace_id': must be a W3C trace id: 32 lowercase"),
        ({"trace_id": TRACE_ID[:-1]}, "Field 'trace_id': must be a W3C trace id"),
        ({"trace_id": "0" * 32}, "Field 'trace_id': must be a W3C trace id"),
        ({"trace_id": 42}, "Field 'trace_id': must be a string."),
        ({"trace_id": TRACE_ID, "span_id": "0" * 16}, "Field 'span_id': must be a W3C span id: 16 lowercase"),
        ({"trace_id": TRACE_ID, "span_id": SPAN_ID + "0"}, "Field 'span_id': must be a W3C span id"),
        ({"span_id": SPAN_ID}, "Body: 'span_id' needs 'trace_id'"),
    ],
    ids=["upper", "short", "zeros", "number", "zero-span", "long-span", "span-alone"],
)
async def test_bad_trace_ids_are_refused_at_the_edge_in_each_seeds_shape(
    edge: Edge, extra: dict[str, Any], message: str
) -> None:
    written = len(edge.writer.records)
    status, answer, _ = await edge.send("/api/v1/feedback", {**SCORED, **extra}, key=KAIZEN_KEY)
    assert (status, answer["error"]["code"]) == (422, "INVALID_REQUEST"), answer
    assert answer["error"]["message"].startswith(message)
    item = {"id": str(uuid.uuid4()), "feedback": {"helpful": True}, **extra}
    status, answer, _ = await edge.send("/v1/feedback", [item])
    assert status == 200 and answer[0]["feedback_ids"] is None
    assert answer[0]["error"]["status_code"] == 400
    assert answer[0]["error"]["message"].startswith(message)
    assert len(edge.writer.records) == written  # nothing written


async def test_trace_ids_ride_the_envelope_and_the_answer_stays_the_seeds(edge: Edge) -> None:
    status, plain, _ = await edge.send("/api/v1/feedback", SCORED, key=KAIZEN_KEY)
    status, traced, _ = await edge.send(
        "/api/v1/feedback", {**SCORED, "trace_id": TRACE_ID, "span_id": SPAN_ID}, key=KAIZEN_KEY
    )
    assert status == 201 and set(traced) == set(plain)  # seed 003's answer: no new fields
    item = {"id": str(uuid.uuid4()), "feedback": {"helpful": True}, "trace_id": TRACE_ID}
    status, answer, _ = await edge.send("/v1/feedback", [item])
    assert status == 200 and answer[0]["error"] is None
    untraced, scored, inference = (orjson.loads(r.value)["payload"] for r in edge.writer.records[-3:])
    assert "trace_id" not in untraced and "span_id" not in untraced  # absent, not null
    assert (scored["trace_id"], scored["span_id"]) == (TRACE_ID, SPAN_ID)
    assert inference["trace_id"] == TRACE_ID and "span_id" not in inference


async def test_a_traced_scored_output_gives_a_traced_signal_and_unit_others_stay_bare() -> None:
    async with Stream() as s:
        task = "7d444840-9dc0-11d1-b245-5ffdce74fad2"
        traced_body = {"task_id": task, "score": 0.7, "trace_id": TRACE_ID, "span_id": SPAN_ID}
        await s.publish(traced_body, contract=Contract.SCORED_OUTPUT)
        await s.publish({"task_id": task, "score": 0.2}, contract=Contract.SCORED_OUTPUT)
        (traced, bare) = s.on(NAMES.triplets)
        signals = s.on(NAMES.signals)
    assert (traced["trace_id"], traced["span_id"]) == (TRACE_ID, SPAN_ID)
    assert "trace_id" not in bare and "span_id" not in bare
    assert [(x.get("trace_id"), x.get("span_id")) for x in signals] == [(TRACE_ID, SPAN_ID), (None, None)]
    for topic, value in ((NAMES.triplets, traced), (NAMES.signals, signals[0])):
        schema = orjson.loads((SCHEMAS / f"{topic}.schema.json").read_bytes())
        jsonschema.validate(value, schema)


async def test_an_exporting_worker_makes_one_span_per_batch_linked_to_its_inputs() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    other = f"00-{'a' * 32}-{'b' * 16}-01"
    async with Stream() as s:
        for runner in s.runners:
            runner.tracer = provider.get_tracer("pipeline.stream")
        intake, _ = s.publishers["stream"].plan(
            {"domain": "s_five", "items": [outcome("fay", "x", "accepted")]}
        )
        more, _ = s.publishers["stream"].plan(
            {"domain": "s_five", "items": [outcome("fay", "y", "rejected")]}
        )
        untraced, _ = s.publishers["stream"].plan(
            {"domain": "s_five", "items": [outcome("fay", "z", "rejected")]}
        )
        for events, trace in ((intake, PARENT), (more, other), (untraced, None)):
            (record,) = contracts.raw_records(
                NAMES.raw, events.events, tracing.from_http({"traceparent": trace or ""})
            )
            s.cluster.append(TopicPartition(NAMES.raw, 0), record.key, record.value, record.headers)
        s.cluster.logs[TopicPartition(NAMES.raw, 0)].append(None)  # one transaction: one expand batch
        await s.run()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    expand, count = spans[f"expand {NAMES.raw}"], spans[f"count {NAMES.units}"]
    assert expand.kind is SpanKind.CONSUMER and expand.parent is None
    assert expand.attributes is not None and expand.attributes["messaging.batch.message_count"] == 3
    linked = [format(link.context.trace_id, "032x") for link in expand.links]
    assert linked == [TRACE_ID, "a" * 32]  # the untraced input has no link
    assert [format(link.context.trace_id, "032x") for link in count.links] == [TRACE_ID, "a" * 32]
    # the outputs keep their own input's context, not the batch span's
    assert {tracing.trace_id_of(r.headers) for r in s.cluster.records(NAMES.units)} == {
        TRACE_ID,
        "a" * 32,
        None,
    }


def test_batch_links_are_distinct_and_bounded() -> None:
    class Rec:
        def __init__(self, parent: str) -> None:
            self.headers = [("traceparent", parent.encode())]

    records = [Rec(f"00-{i:032x}-{1:016x}-01") for i in range(1, tracing.MAX_LINKS + 50)]
    links = tracing.input_links([*records, *records, Rec("junk")])
    assert len(links) == tracing.MAX_LINKS
    assert [link.context.trace_id for link in links] == list(range(1, tracing.MAX_LINKS + 1))


def cloudevent(header: str) -> bool:
    """A trigger's CloudEvent headers (pipeline.wire.cloudevents), beside the trace."""
    return header.startswith("ce_") or header == "content-type"
