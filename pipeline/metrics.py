"""Prometheus metrics, declared once; the ingest and the worker expose them at ``/metrics``."""

from __future__ import annotations

import bisect
import collections
from collections.abc import Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

__all__ = ["CONTENT_TYPE_LATEST", "CONTENT_TYPE_NO_CHARSET", "child", "observe_many", "render"]

# aiohttp wants the charset apart from the content type
CONTENT_TYPE_NO_CHARSET = "text/plain; version=0.0.4"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Ingest
HTTP_REQUESTS = Counter(
    "feedstream_http_requests_total", "HTTP requests answered by the ingest.", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "feedstream_http_request_duration_seconds", "Ingest request latency.", ["route"], buckets=LATENCY_BUCKETS
)
ITEMS_ACCEPTED = Counter("feedstream_items_accepted_total", "Feedback items accepted.", ["contract"])
ITEMS_REJECTED = Counter(
    "feedstream_items_rejected_total", "Feedback items rejected.", ["contract", "reason"]
)
RAW_PUBLISHED = Counter(
    "feedstream_raw_events_published_total", "Envelopes written to feedback.raw.", ["origin"]
)
IDEMPOTENCY_BYTES = Gauge(
    "feedstream_idempotency_bytes",
    "Idempotency answers the ingest keeps, in bytes per tenant (IDEMPOTENCY_MAX_BYTES_PER_TENANT).",
    ["tenant"],
)

# Stream
EVENTS = Counter("feedstream_events_total", "Raw events processed by the stream.", ["contract", "domain"])
SIGNALS = Counter("feedstream_signals_total", "Signals emitted.", ["domain"])
TRIPLETS = Counter("feedstream_training_units_total", "Training units emitted.", ["domain", "kind"])
TRIGGERS = Counter("feedstream_triggers_total", "Train triggers emitted.", ["domain", "reason"])
PENDING = Gauge("feedstream_pending_units", "Training units pending per domain.", ["domain"])
THRESHOLD = Gauge(
    "feedstream_threshold",
    "The train threshold of a domain the count stage counts (alerts compare).",
    ["domain"],
)
CONSUMER_LAG = Gauge(
    "feedstream_consumer_lag",
    "Offsets between a stage's input partition end (read_committed) and where the stage stands "
    "(transaction markers included, as Kafka counts lag); set by the process that owns the partition.",
    ["stage", "topic", "partition"],
)
DLQ = Counter("feedstream_dlq_total", "Messages sent to the dead-letter topic.", ["stage", "reason"])
DISCARDED = Counter("feedstream_discarded_total", "Feedback discarded by tenant mode.", ["tenant", "mode"])
STAGE_BATCHES = Counter("feedstream_stage_batches_total", "Committed stage transactions.", ["stage"])
STAGE_BATCH_SIZE = Histogram(
    "feedstream_stage_batch_records",
    "Input records per committed stage transaction.",
    ["stage"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
)
STAGE_TRANSACTION_SECONDS = Histogram(
    "feedstream_stage_transaction_seconds",
    "Wall time of a committed stage transaction, begin to commit (the stages' cadence: a record waits "
    "for the one in flight, then its own).",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
STATE_KEYS = Gauge(
    "feedstream_state_keys", "Keys in a stage's table (partitions this worker owns).", ["stage"]
)
STATE_BYTES = Gauge(
    "feedstream_state_bytes",
    "Changelog bytes (key + value) of a stage's table on this worker; see docs/design.md for memory.",
    ["stage"],
)
EXPIRED = Counter("feedstream_state_expired_total", "Table keys deleted for their age.", ["stage"])
VIEW_BYTES = Gauge(
    "feedstream_view_bytes", "Stream results the ingest keeps for GET /v1/requests, per tenant.", ["tenant"]
)
PROCESSING_LATENCY = Histogram(
    "feedstream_processing_latency_seconds",
    "From ingest receipt to the stream's output, per stage.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)


#: label sets remembered by :func:`child` (beyond this many, ``labels`` is called as before)
MAX_CHILDREN = 10_000
_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: MetricWrapperBase, *values: str) -> Any:
    """``metric.labels(*values)``, remembered: ``labels`` checks its values and takes a lock on every
    call, a few µs on paths taken per request. Only for metrics whose children are never removed."""
    key = (id(metric), values)
    found = _CHILDREN.get(key)
    if found is None:
        found = metric.labels(*values)
        if len(_CHILDREN) < MAX_CHILDREN:
            _CHILDREN[key] = found
    return found


def observe_many(histogram: Any, amounts: Sequence[float]) -> None:
    """``histogram.observe(a)`` for each of ``amounts`` (a labelled child): the same buckets and sum,
    with one locked increment per bucket touched and one for the sum, instead of two per amount:
    the stages observe their per-event latency once per batch."""
    if not amounts:
        return
    bounds, buckets = histogram._upper_bounds, histogram._buckets  # what ``observe`` itself uses
    for index, n in collections.Counter(bisect.bisect_left(bounds, a) for a in amounts).items():
        buckets[index].inc(n)  # the first bound >= a: observe's ``amount <= bound``
    histogram._sum.inc(sum(amounts))


def render() -> bytes:
    """The process's metrics in the Prometheus text format."""
    return generate_latest()
