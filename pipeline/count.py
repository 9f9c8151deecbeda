"""Stage 2, count: training units become ``feedback.triplets`` records, pending counts and triggers.

Input is keyed by domain, so one partition owns a domain's counter; its units all land in one
partition of ``feedback.triplets`` (same key), which makes a trigger's range one offset span.
Within one transaction per batch: units are written first (their offsets are then known),
then counters move, triggers and per-request results are written, and the counter table's
changes go to its changelog once per domain.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import orjson
from aiokafka.structs import RecordMetadata

from pipeline import metrics
from pipeline.counters import DomainCounter, count_units, force_trigger
from pipeline.eos import Record, Tx
from pipeline.expand import send_dead_letter
from pipeline.records import UNITS_MESSAGE, StageResult, TrainRequest, TrainTrigger, UnitsBatch
from pipeline.topics import TopicNames


class UnknownDomain(LookupError):
    """No tenant owns the domain (any more): nothing to count against."""


class CountStage:
    name = "count"

    def __init__(self, names: TopicNames, threshold_for: Callable[[str], int | None]) -> None:
        self.names = names
        self.threshold_for = threshold_for

    def decode_state(self, value: bytes) -> DomainCounter:
        return DomainCounter.model_validate_json(value)

    def encode_state(self, state: DomainCounter) -> bytes:
        return state.model_dump_json().encode()

    def threshold(self, domain: str) -> int:
        t = self.threshold_for(domain)
        if t is None:
            raise UnknownDomain(f"no tenant owns domain '{domain}'")
        return t

    async def process(
        self, partition: int, records: Sequence[Record], state: Mapping[bytes, DomainCounter], tx: Tx
    ) -> dict[bytes, DomainCounter | None]:
        # 1. decode and write every unit: their offsets bound the triggers' ranges
        decoded: list[tuple[Record, UnitsBatch | TrainRequest, int, list[object]]] = []
        for rec in records:
            try:
                msg = UNITS_MESSAGE.validate_json(rec.value or b"")
                threshold = self.threshold(msg.domain)
            except Exception as exc:
                await send_dead_letter(tx, self.names.dlq, self.name, exc, rec)
                continue
            futures: list[object] = []
            if isinstance(msg, UnitsBatch):
                for unit in msg.units:
                    futures.append(
                        await tx.send(
                            self.names.triplets,
                            orjson.dumps(unit.model_dump(mode="json")),
                            key=msg.domain.encode(),
                        )
                    )
            decoded.append((rec, msg, threshold, futures))
        await tx.flush()

        # 2. count in order, emit triggers and results; the table changes once per domain
        changes: dict[bytes, DomainCounter | None] = {}
        now = time.time()
        for _rec, msg, threshold, futures in decoded:
            key = msg.domain.encode()
            counter = changes.get(key) or state.get(key) or DomainCounter()
            if isinstance(msg, UnitsBatch):
                metas: list[RecordMetadata] = [f.result() for f in futures]  # type: ignore[attr-defined]
                counted = sum(1 for u in msg.units if u.counts)
                triggers: list[TrainTrigger] = []
                if metas:
                    counter, triggers = count_units(
                        counter,
                        domain=msg.domain,
                        threshold=threshold,
                        partition=metas[0].partition,
                        offsets_and_counts=[
                            (m.offset, u.counts) for m, u in zip(metas, msg.units, strict=True)
                        ],
                        at=msg.received_at,
                        topic=self.names.triplets,
                    )
                for unit in msg.units:
                    metrics.TRIPLETS.labels(msg.domain, unit.kind).inc()
                result = StageResult(
                    request_id=msg.request_id,
                    event_id=msg.event_id,
                    domain=msg.domain,
                    kind="units",
                    units_generated=len(msg.units),
                    units_counted=counted,
                    pending=counter.pending,
                    threshold=threshold,
                    triggers=triggers,
                )
                metrics.PROCESSING_LATENCY.labels(self.name).observe(
                    max(0.0, now - msg.received_at.timestamp())
                )
            else:
                counter, trigger = force_trigger(
                    counter,
                    domain=msg.domain,
                    threshold=threshold,
                    at=msg.requested_at,
                    last_offset=None,
                    topic=self.names.triplets,
                )
                triggers = [trigger] if trigger else []
                result = StageResult(
                    request_id=msg.request_id,
                    domain=msg.domain,
                    kind="train",
                    units_generated=0,
                    units_counted=0,
                    pending=counter.pending,
                    threshold=threshold,
                    triggers=triggers,
                )
            for trigger in triggers:
                await tx.send(self.names.triggers, orjson.dumps(trigger.model_dump(mode="json")), key=key)
                metrics.TRIGGERS.labels(msg.domain, trigger.reason).inc()
            if isinstance(msg, TrainRequest) or msg.reply:
                await tx.send(
                    self.names.results,
                    orjson.dumps(result.model_dump(mode="json")),
                    key=msg.request_id.encode(),
                )
            metrics.PENDING.labels(msg.domain).set(counter.pending)
            changes[key] = counter
        return changes
