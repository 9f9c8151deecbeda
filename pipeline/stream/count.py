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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from pipeline import metrics
from pipeline.kafka.topics import TopicNames
from pipeline.rules.counters import DomainCounter, count_units, force_trigger
from pipeline.stream.runtime import Record, Sent, Table, Tx
from pipeline.wire.records import MAX_RESULT_TRIGGERS, StageResult, TrainRequest, TrainTrigger, to_json


class UnknownDomain(LookupError):
    """No tenant owns the domain (any more): nothing to count against."""


class CountStage:
    name = "count"

    def __init__(self, names: TopicNames, threshold_for: Callable[[str], int | None]) -> None:
        self.names = names
        self.threshold_for = threshold_for
        self._thresholds: dict[str, int] = {}

    def decode_state(self, value: bytes) -> DomainCounter:
        return DomainCounter.model_validate_json(value)

    def encode_state(self, state: DomainCounter) -> bytes:
        return state.model_dump_json().encode()

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
        # 1. decode and write every unit: their offsets bound the triggers' ranges
        decoded: list[tuple[Incoming, int, list[Sent]]] = []
        for rec in records:
            msg = await tx.decode(rec, Incoming.parse)
            if msg is None:
                continue
            threshold = await tx.attempt(rec, self.threshold, msg.domain)
            if threshold is None:
                continue
            key = msg.domain.encode()
            futures = [await tx.send(self.names.triplets, orjson.dumps(u), key=key) for u in msg.units]
            decoded.append((msg, threshold, futures))
        await tx.flush()

        # 2. count in order, emit triggers and results; the runtime writes each changed domain once
        produced: collections.Counter[tuple[str, str]] = collections.Counter()
        now = time.time()
        for msg, threshold, futures in decoded:
            key = msg.domain.encode()
            counter = table.get(key) or DomainCounter()
            triggers: list[TrainTrigger] = []
            if msg.train is None:
                metas = [f.result() for f in futures]
                if metas:
                    counter, triggers = count_units(
                        counter,
                        domain=msg.domain,
                        threshold=threshold,
                        partition=metas[0].partition,
                        offsets_and_counts=[(m.offset, c) for m, c in zip(metas, msg.counts, strict=True)],
                        at=msg.received_at,
                        topic=self.names.triplets,
                    )
                for unit in msg.units:
                    produced[msg.domain, unit["kind"]] += 1
                metrics.PROCESSING_LATENCY.labels(self.name).observe(
                    max(0.0, now - msg.received_at.timestamp())
                )
            else:
                counter, trigger = force_trigger(
                    counter,
                    domain=msg.domain,
                    threshold=threshold,
                    at=msg.received_at,
                    last_offset=None,
                    topic=self.names.triplets,
                )
                triggers = [trigger] if trigger else []
            for trigger in triggers:
                await tx.send(self.names.triggers, to_json(trigger), key=key)
                metrics.TRIGGERS.labels(msg.domain, trigger.reason).inc()
            if msg.reply:
                result = StageResult.model_construct(
                    request_id=msg.request_id,
                    event_id=msg.event_id,
                    domain=msg.domain,
                    kind="units" if msg.train is None else "train",
                    units_generated=len(msg.units),
                    units_counted=sum(msg.counts),
                    pending=counter.pending,
                    threshold=threshold,
                    triggers=triggers[-MAX_RESULT_TRIGGERS:],  # results stay small; all are on the topic
                    triggers_total=len(triggers),
                    chunk=msg.chunk,
                    chunks=msg.chunks,
                    request_events=msg.request_events,
                )
                await tx.send(self.names.results, to_json(result), key=msg.request_id.encode())
            table[key] = counter
        for (domain, kind), n in produced.items():
            metrics.TRIPLETS.labels(domain, kind).inc(n)
        for domain_key, changed in table.changes.items():
            if changed is not None:
                metrics.PENDING.labels(domain_key.decode()).set(changed.pending)


@dataclass(frozen=True)
class Incoming:
    """A ``feedback.units`` message, decoded lightly: units stay JSON objects, written as they came.

    The topic is internal (only the expand stage and the ingest write it); anything that does not
    parse goes to the DLQ.
    """

    domain: str
    request_id: str
    event_id: str | None
    received_at: datetime
    units: list[dict[str, Any]]
    counts: list[bool]
    reply: bool
    train: TrainRequest | None
    chunk: int = 0
    chunks: int = 1
    request_events: int | None = None

    @classmethod
    def parse(cls, value: bytes) -> Incoming:
        raw = orjson.loads(value)
        if raw.get("kind") == "train":
            train = TrainRequest.model_validate(raw)
            return cls(train.domain, train.request_id, None, train.requested_at, [], [], True, train)
        if raw.get("kind") != "units":
            raise ValueError(f"unknown message kind {raw.get('kind')!r}")
        units = raw["units"]
        if not isinstance(units, list) or not all(isinstance(u, dict) and "kind" in u for u in units):
            raise ValueError("units must be a list of training units")
        chunk, chunks = raw.get("chunk", 0), raw.get("chunks", 1)
        if not (isinstance(chunk, int) and isinstance(chunks, int) and 0 <= chunk < chunks):
            raise ValueError(f"bad chunk {chunk!r} of {chunks!r}")
        request_events = raw.get("request_events")
        if request_events is not None and not (isinstance(request_events, int) and request_events >= 1):
            raise ValueError(f"bad request_events {request_events!r}")
        received_at = datetime.fromisoformat(raw["received_at"])
        if received_at.tzinfo is None:
            raise ValueError("received_at needs a time zone")
        return cls(
            domain=str(raw["domain"]),
            request_id=str(raw["request_id"]),
            event_id=str(raw["event_id"]),
            received_at=received_at,
            units=units,
            counts=[bool(u["counts"]) for u in units],
            reply=bool(raw.get("reply", True)),
            train=None,
            chunk=chunk,
            chunks=chunks,
            request_events=request_events,
        )
