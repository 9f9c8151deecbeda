"""Traces across the pipeline: W3C trace context on Kafka headers, and the OpenTelemetry SDK when asked.

Two independent halves:

* **Propagation** (always on, no SDK needed): a caller's ``traceparent`` (and ``tracestate``) rides
  on the Kafka headers of its ``feedback.raw`` records, and the stages copy it onto every record
  derived from them (signals, units, triplets, the trigger of a crossing). The functions here are
  pure and cheap: a record without trace headers costs one scan of its few headers.
* **Export** (off by default): :func:`setup` builds an SDK ``TracerProvider`` only when the standard
  ``OTEL_*`` variables ask for an exporter (``OTEL_TRACES_EXPORTER=otlp|console``, or an
  ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``), and never when ``OTEL_SDK_DISABLED=true``. The SDK is
  imported only then, so a process that does not export pays nothing for it.

docs/design.md, "Trainers: traces across the pipeline", says why the defaults are what they are.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Link, SpanContext, Tracer

log = logging.getLogger(__name__)

__all__ = [
    "MAX_LINKS",
    "TRACEPARENT",
    "TRACESTATE",
    "TRACESTATE_MAX_CHARS",
    "TraceHeaders",
    "batch_span",
    "carried",
    "exporters_wanted",
    "from_context",
    "from_http",
    "input_links",
    "setup",
    "trace_id_of",
    "valid_traceparent",
]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: W3C Trace Context: a vendor may drop tracestate beyond 512 characters; we drop a longer one whole,
#: so the trace headers of a record stay under 600 bytes (far inside every topic's size margin).
TRACESTATE_MAX_CHARS = 512
#: Kafka record headers as aiokafka takes and gives them.
TraceHeaders = list[tuple[str, bytes]]

# version 00 is exactly this; a later version may append "-..." fields (W3C: parse the first four)
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_TRACESTATE = re.compile(r"[\x20-\x7e]*")
_TRACE_KEYS = frozenset((TRACEPARENT, TRACESTATE))
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def valid_traceparent(value: str) -> bool:
    """Whether ``value`` is a W3C ``traceparent`` a downstream reader can trust (version not ``ff``,
    no all-zero ids; version 00 has no trailing fields)."""
    m = _TRACEPARENT.fullmatch(value)
    if m is None:
        return False
    version, trace_id, span_id, _flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return False
    return trace_id != _ZERO_TRACE and span_id != _ZERO_SPAN


def from_http(headers: Mapping[str, str]) -> TraceHeaders:
    """The caller's trace context from HTTP request headers, as Kafka headers ([] if none or invalid).

    Used when this process does not trace itself: the caller's trace is kept as it came, so the
    records join the caller's trace (their parent is the caller's span).
    """
    parent = headers.get(TRACEPARENT)
    if not parent:
        return []
    parent = parent.strip()
    if not valid_traceparent(parent):
        return []
    out: TraceHeaders = [(TRACEPARENT, parent.encode("ascii"))]
    state = headers.get(TRACESTATE, "").strip()
    if state and len(state) <= TRACESTATE_MAX_CHARS and _TRACESTATE.fullmatch(state):
        out.append((TRACESTATE, state.encode("ascii")))
    return out


def from_context() -> TraceHeaders:
    """The current OpenTelemetry span's context as Kafka headers ([] when no span is recording or
    sampled-out-but-valid: an invalid (no-op) span gives nothing).

    W3C trace context only (no baggage: it may carry what the caller never meant to store on Kafka).
    """
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not trace.get_current_span().get_span_context().is_valid:
        return []
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return from_http(carrier)


def carried(headers: Sequence[tuple[str, bytes]] | None) -> TraceHeaders | None:
    """The trace headers among a Kafka record's headers, to copy onto what is derived from it
    (None when there are none, so the stage sends no headers at all)."""
    if not headers:
        return None
    out: TraceHeaders | None = None
    for header in headers:  # per input record of every stage: a plain loop, no list built for nothing
        if header[0] in _TRACE_KEYS:
            if out is None:
                out = [header]
            else:
                out.append(header)
    return out


def trace_id_of(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    """The trace id of a record's ``traceparent`` header, if it has a valid one."""
    for k, v in headers or ():
        if k == TRACEPARENT:
            text = v.decode("ascii", "replace")
            return text[3:35] if valid_traceparent(text) else None
    return None


# --- export (the SDK) -----------------------------------------------------------------------------

#: Exporters :func:`setup` knows (``OTEL_TRACES_EXPORTER`` is a comma list).
KNOWN_EXPORTERS = ("otlp", "console")


def exporters_wanted(environ: Mapping[str, str]) -> list[str]:
    """Which span exporters the ``OTEL_*`` variables ask for; [] means tracing stays off.

    Off unless asked: the SDK's own default (``otlp`` to localhost:4318) would have every process
    retry a collector that is not there. An OTLP endpoint set without ``OTEL_TRACES_EXPORTER`` asks
    for ``otlp``; ``none`` or ``OTEL_SDK_DISABLED=true`` turns it off.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and (
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        names = ["otlp"]
    unknown = [n for n in names if n not in (*KNOWN_EXPORTERS, "none")]
    if unknown:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER: unknown exporter(s) {', '.join(unknown)} (known: otlp, console, none)"
        )
    return [n for n in names if n != "none"]


def setup(service_name: str, environ: Mapping[str, str] | None = None) -> TracerProvider | None:
    """An SDK ``TracerProvider`` exporting as the ``OTEL_*`` variables say, or None (tracing off).

    ``OTEL_SERVICE_NAME`` (or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``) overrides
    ``service_name``; the OTLP exporter reads its own variables (endpoint, headers, timeout). Spans
    are batched (``BatchSpanProcessor``): exporting never blocks a request. The provider is also
    made the global one, so libraries that trace through the API use it.
    """
    env = os.environ if environ is None else environ
    wanted = exporters_wanted(env)
    if not wanted:
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    # the SDK reads the resource variables from os.environ; attributes given here would override them
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": service_name}))
    for name in wanted:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing on: %s exporting spans of %s", ", ".join(wanted), service_name)
    return provider


# --- a span per stage batch (only when the worker exports) -----------------------------------------

#: Links a batch span keeps at most (one per distinct input trace context, in input order).
MAX_LINKS = 128


def _span_context(value: bytes) -> SpanContext | None:
    from opentelemetry.trace import SpanContext, TraceFlags

    text = value.decode("ascii", "replace")
    if not valid_traceparent(text):
        return None
    return SpanContext(
        trace_id=int(text[3:35], 16),
        span_id=int(text[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(text[53:55], 16)),
    )


def input_links(records: Sequence[Any]) -> list[Link]:
    """The trace contexts of a batch's input records (their ``traceparent`` headers) as span links,
    distinct, at most :data:`MAX_LINKS`."""
    from opentelemetry.trace import Link

    seen: set[bytes] = set()
    links: list[Link] = []
    for rec in records:
        for k, v in rec.headers or ():
            if k == TRACEPARENT and v not in seen and len(links) < MAX_LINKS:
                seen.add(v)
                ctx = _span_context(v)
                if ctx is not None:
                    links.append(Link(ctx))
    return links


def batch_span(tracer: Tracer, stage: str, topic: str, partition: int, records: Sequence[Any]) -> Any:
    """A CONSUMER span over one stage transaction, linked to its inputs' traces (a batch mixes many
    traces, so it has no parent: OpenTelemetry's messaging conventions for batch processing). The
    records the batch writes keep their own input's context (:func:`carried`), not this span's."""
    from opentelemetry.trace import SpanKind

    return tracer.start_as_current_span(
        f"{stage} {topic}",
        kind=SpanKind.CONSUMER,
        links=input_links(records),
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": topic,
            "messaging.destination.partition.id": str(partition),
            "messaging.batch.message_count": len(records),
            "feedstream.stage": stage,
        },
    )
