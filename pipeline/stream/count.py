"""Stage 2, count: training units become ``feedback.triplets`` records, pending counts and triggers.

Input is keyed by domain, so one partition owns a domain's counter; its units all land in one
partition of ``feedback.triplets`` (same key), which makes a trigger's range one offset span.
Within one transaction per batch: units are written first (their offsets are then known),
then counters move, triggers and per-request results are written, and the counter table's
changes go to its changelog once per domain.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TypeAlias

import msgspec

from pipeline import metrics, tracing
from pipeline.kafka.topics import TopicNames
from pipeline.rules.counters import DomainCounter, count_units, due_trigger, force_trigger
from pipeline.stream.runtime import Record, Sent, Table, Tx, output_headers
from pipeline.tenants import TimeTrigger
from pipeline.wire.cloudevents import trigger_headers
from pipeline.wire.records import (
    MAX_RESULT_TRIGGERS,
    RawUnitsBatch,
    StageResult,
    TrainRequest,
    TrainTrigger,
    decoder,
    to_json,
)

_COUNTER = decoder(DomainCounter)


class UnknownDomain(LookupError):
    """No tenant owns the domain (any more): nothing to count against."""


class UnitHead(msgspec.Struct, frozen=True, gc=False):
    """What counting reads of a unit (the rest is skipped by the decoder, never built)."""

    kind: str
    counts: bool


_MESSAGE = msgspec.json.Decoder(RawUnitsBatch | TrainRequest)
_HEAD = msgspec.json.Decoder(UnitHead)
#: A decoded ``feedback.units`` message: the batch (units kept as their JSON) and what each unit
#: says of itself, or a train request.
Incoming: TypeAlias = tuple[RawUnitsBatch, list[UnitHead]] | tuple[TrainRequest, None]


def parse(value: bytes) -> Incoming:
    """Decode a ``feedback.units`` message; the units stay bytes, written to ``feedback.triplets`` as
    they came. The topic is internal (only the expand stage and the ingest write it); anything that
    does not decode (or a unit without ``kind`` and ``counts``) goes to the DLQ."""
    msg = _MESSAGE.decode(value)
    if isinstance(msg, TrainRequest):
        return msg, None
    if msg.chunk >= msg.chunks:
        raise ValueError(f"bad chunk {msg.chunk!r} of {msg.chunks!r}")
    return msg, [_HEAD.decode(u) for u in msg.units]


class CountStage:
    name = "count"
    #: ``feedback.triplets`` is keyed by domain like this stage's input, so a partition's domains
    #: (and their triplets) are this partition's producer's alone: the runtime predicts their offsets
    #: and a batch's triggers need no round trip before them (checked before each commit).
    predict_offsets: frozenset[str]

    def __init__(
        self,
        names: TopicNames,
        threshold_for: Callable[[str], int | None],
        *,
        source: str = "/feedstream",
        time_trigger_for: Callable[[str], TimeTrigger | None] = lambda domain: None,
    ) -> None:
        self.names = names
        self.predict_offsets = frozenset({names.triplets})
        self.threshold_for = threshold_for
        self.time_trigger_for = time_trigger_for  # a domain's max_wait/min_units (tenants file)
        self.source = source  # the triggers' CloudEvents source (pipeline.wire.cloudevents)
        self._thresholds: dict[str, int] = {}

    # -- time-based triggers (the runtime's Ticking protocol) ---------------------------------------

    def _due(
        self, key: bytes, counter: DomainCounter, now: datetime
    ) -> tuple[DomainCounter, TrainTrigger | None]:
        if counter.pending_since is None:  # nothing pending: the common case, no lookups
            return counter, None
        domain = key.decode()
        rule = self.time_trigger_for(domain)
        threshold = self._thresholds.get(domain) or self.threshold_for(domain)
        if rule is None or threshold is None:
            return counter, None
        return due_trigger(
            counter,
            domain=domain,
            threshold=threshold,
            now=now,
            max_wait_s=rule.max_wait_s,
            min_units=rule.min_units,
            topic=self.names.triplets,
        )

    def due(self, state: Mapping[bytes, DomainCounter], now: datetime) -> bool:
        """Has a domain of this partition waited its ``max_wait`` (wall clock ``now`` against the
        oldest pending unit's received_at)?"""
        return any(self._due(key, counter, now)[1] is not None for key, counter in state.items())

    async def tick(self, table: Table[DomainCounter], tx: Tx, now: datetime) -> None:
        """Emit the due ``max_wait`` triggers; the runtime commits them with the counters' changes."""
        for key in list(table):
            counter, trigger = self._due(key, table[key], now)
            if trigger is not None:
                await self._send_trigger(tx, key, trigger, None)
                table[key] = counter
                metrics.PENDING.labels(trigger.domain).set(0)

    async def _send_trigger(
        self, tx: Tx, key: bytes, trigger: TrainTrigger, trace: tracing.TraceHeaders | None
    ) -> None:
        """A trigger as a CloudEvent (binary mode), with the trace of what crossed it if any."""
        headers = [*trigger_headers(trigger, source=self.source), *(trace or ())]
        await tx.send(self.names.triggers, to_json(trigger), key=key, headers=headers)
        metrics.TRIGGERS.labels(trigger.domain, trigger.reason).inc()

    def decode_state(self, value: bytes) -> DomainCounter:
        return _COUNTER.decode(value)

    def encode_state(self, state: DomainCounter) -> bytes:
        return to_json(state)

    def threshold(self, domain: str) -> int:
        """The domain's threshold (cached: the tenants file is read once per process)."""
        t = self._thresholds.get(domain)
        if t is None:
            t = self.threshold_for(domain)
            if t is None:
                raise UnknownDomain(f"no tenant owns domain '{domain}'")
            self._thresholds[domain] = t
        return t

    async def process(self, records: Sequence[Record], table: Table[DomainCounter], tx: Tx) -> None:
        # 1. decode and write every unit (its bytes as they came): their offsets bound the triggers' ranges
        decoded: list[tuple[Incoming, int, list[Sent], tracing.TraceHeaders | None]] = []
        triplets = self.names.triplets
        # Results keep the request id as key, in this input partition when the topics have as many
        # (the ingest reads them all): one results partition per transaction (fewer commit markers).
        results_partition = await tx.co_partition(self.names.results, records[0]) if records else None
        for rec in records:
            incoming = await tx.decode(rec, parse)
            if incoming is None:
                continue
            msg = incoming[0]
            threshold = await tx.attempt(rec, self.threshold, msg.domain)
            if threshold is None:
                continue
            futures = []
            headers = output_headers(rec)
            if isinstance(msg, RawUnitsBatch):
                key = msg.domain.encode()
                futures = [await tx.send(triplets, bytes(u), key=key, headers=headers) for u in msg.units]
            decoded.append((incoming, threshold, futures, headers))
        await tx.offsets()

        # 2. count in order, emit triggers and results; the runtime writes each changed domain once
        produced: collections.Counter[tuple[str, str]] = collections.Counter()
        now = time.time()
        latencies: list[float] = []  # observed once per batch
        for (msg, heads), threshold, futures, headers in decoded:
            domain = msg.domain
            key = domain.encode()
            counter = table.get(key) or DomainCounter()
            triggers: list[TrainTrigger] = []
            if heads is not None:
                assert isinstance(msg, RawUnitsBatch)
                at = msg.received_at
                if futures:
                    metas = [f.result() for f in futures]
                    counter, triggers = count_units(
                        counter,
                        domain=domain,
                        threshold=threshold,
                        partition=metas[0].partition,
                        offsets_and_counts=[(m.offset, h.counts) for m, h in zip(metas, heads, strict=True)],
                        at=at,
                        topic=triplets,
                    )
                for head in heads:
                    produced[domain, head.kind] += 1
                latencies.append(max(0.0, now - at.timestamp()))
                units_generated, units_counted = len(heads), sum(h.counts for h in heads)
                event_id, reply, chunk, chunks, request_events = (
                    msg.event_id,
                    msg.reply,
                    msg.chunk,
                    msg.chunks,
                    msg.request_events,
                )
            else:
                assert isinstance(msg, TrainRequest)
                counter, trigger = force_trigger(
                    counter,
                    domain=domain,
                    threshold=threshold,
                    at=msg.requested_at,
                    last_offset=None,
                    topic=triplets,
                )
                triggers = [trigger] if trigger else []
                units_generated = units_counted = 0
                event_id, reply, chunk, chunks, request_events = None, True, 0, 1, None
            for trigger in triggers:  # crossed by this message's units (or forced by its request)
                await self._send_trigger(tx, key, trigger, headers)
            if reply:
                result = StageResult(
                    request_id=msg.request_id,
                    event_id=event_id,
                    domain=domain,
                    kind="units" if heads is not None else "train",
                    units_generated=units_generated,
                    units_counted=units_counted,
                    pending=counter.pending,
                    threshold=threshold,
                    triggers=triggers[-MAX_RESULT_TRIGGERS:],  # results stay small; all are on the topic
                    triggers_total=len(triggers),
                    chunk=chunk,
                    chunks=chunks,
                    request_events=request_events,
                )
                await tx.send(
                    self.names.results,
                    to_json(result),
                    key=msg.request_id.encode(),
                    partition=results_partition,
                )
            table[key] = counter
        metrics.observe_many(metrics.child(metrics.PROCESSING_LATENCY, self.name), latencies)
        for (domain, kind), n in produced.items():
            metrics.TRIPLETS.labels(domain, kind).inc(n)
        for domain_key, changed in table.changes.items():
            if changed is not None:
                domain = domain_key.decode()
                metrics.PENDING.labels(domain).set(changed.pending)
                metrics.THRESHOLD.labels(domain).set(self._thresholds.get(domain, 0))
