"""Stage 1, expand: raw events become signals and training units.

Pure rules (``expand_event``) plus a thin stage for :mod:`pipeline.eos`. State: the recent
outcomes of each (domain, seeker) / search anchor, so outcomes arriving one at a time pair with
earlier ones. Every raw event yields one ``UnitsBatch`` (possibly empty) keyed by domain, which the
counting stage turns into triplet records, counts and triggers, and a result for the ingest.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline import envelope, metrics
from pipeline.contracts import InferenceFeedbackEvent
from pipeline.envelope import (
    CorrectionPayload,
    RankingOutcomePayload,
    RawEvent,
    ScoredOutputPayload,
    SearchEventPayload,
    search_anchor,
)
from pipeline.eos import Record, Tx
from pipeline.records import TrainingUnit, UnitsBatch, dead_letter, to_json
from pipeline.signals import signal_records
from pipeline.tenants import FeedbackMode
from pipeline.topics import TopicNames
from pipeline.triplets import (
    Limits,
    Observation,
    SeekerHistory,
    correction_unit,
    expand_outcomes,
    scored_unit,
    search_observation,
)


@dataclass
class Expansion:
    """What one raw event becomes."""

    signals: list[bytes] = field(default_factory=list)
    batches: list[UnitsBatch] = field(default_factory=list)
    state_key: bytes | None = None
    history: SeekerHistory | None = None
    discarded: bool = False


def _batch(event: RawEvent, units: Sequence[TrainingUnit], **over: Any) -> UnitsBatch:
    return UnitsBatch.model_construct(  # built from a validated envelope and our own units
        **{
            "request_id": event.request_id,
            "event_id": event.event_id,
            "tenant": event.tenant,
            "domain": event.domain,
            "contract": str(event.contract),
            "received_at": event.received_at,
            "units": list(units),
            **over,
        }
    )


def expand_event(
    event: RawEvent, history_of: Mapping[bytes, SeekerHistory], *, limits: Limits, shared_pool: str
) -> Expansion:
    """Pure: the signals, unit batches and new anchor history of one event."""
    out = Expansion(signals=[orjson.dumps(record) for record in signal_records(event)])
    p = event.payload
    units: list[TrainingUnit] = []
    observations: list[Observation] = []
    anchor = ""
    origin: str = "ranking_outcome"
    if isinstance(p, RankingOutcomePayload):
        anchor = p.seeker_id
        observations = [
            Observation(
                candidate_id=i.candidate_id,
                label=i.outcome,
                grade=i.grade,
                positive=i.positive,
                weight=i.weight,
                event_id=event.event_id,
                observed_at=event.received_at,
            )
            for i in p.items
        ]
    elif isinstance(p, SearchEventPayload):
        anchor, origin = search_anchor(p, p.session_id), "search_event"
        obs = search_observation(str(p.event_type), p.doc_id, p.passage_id, event.event_id, event.received_at)
        observations = [] if obs is None else [obs]
    elif isinstance(p, CorrectionPayload):
        if p.feedback_mode is FeedbackMode.OFF:
            out.discarded = True
            return out
        if p.feedback_mode is not FeedbackMode.AUDIT_ONLY:
            unit = correction_unit(
                event_id=event.event_id,
                tenant=event.tenant,
                domain=event.domain,
                module=p.module,
                case_id=p.case_id,
                original_output=p.original_output,
                corrected_output=p.corrected_output,
                received_at=event.received_at,
                counts=True,
            )
            units.append(unit)
            if p.feedback_mode is FeedbackMode.SHARED_IMPROVEMENT:
                pooled = unit.model_copy(update={"domain": shared_pool, "tenant": None})
                out.batches.append(_batch(event, [pooled], domain=shared_pool, tenant=None, reply=False))
    elif isinstance(p, ScoredOutputPayload):
        units.append(
            scored_unit(
                event_id=event.event_id,
                tenant=event.tenant,
                domain=event.domain,
                task_id=p.task_id,
                inputs=p.inputs,
                output=p.output,
                score=p.score,
                source=p.source,
                metadata=p.metadata,
                received_at=event.received_at,
            )
        )
    else:
        assert isinstance(p, InferenceFeedbackEvent)  # signals only
    if anchor:
        key = f"{event.domain}/{anchor}".encode()
        history = history_of.get(key, SeekerHistory())
        if observations:
            history, triplets = expand_outcomes(
                history,
                observations,
                domain=event.domain,
                anchor=anchor,
                tenant=event.tenant,
                now=event.received_at,
                limits=limits,
                origin=origin,  # type: ignore[arg-type]
            )
            units.extend(triplets)
            out.state_key, out.history = key, history
    out.batches.insert(0, _batch(event, units))
    return out


class ExpandStage:
    """Thin shell: decode, apply ``expand_event``, send; failures go to the DLQ with the bytes."""

    name = "expand"

    def __init__(self, names: TopicNames, limits: Limits, shared_pool: str) -> None:
        self.names = names
        self.limits = limits
        self.shared_pool = shared_pool

    def decode_state(self, value: bytes) -> SeekerHistory:
        return SeekerHistory.model_validate_json(value)

    def encode_state(self, state: SeekerHistory) -> bytes:
        return state.model_dump_json().encode()

    async def process(
        self, partition: int, records: Sequence[Record], state: Mapping[bytes, SeekerHistory], tx: Tx
    ) -> dict[bytes, SeekerHistory | None]:
        changes: dict[bytes, SeekerHistory | None] = {}
        view = _Overlay(state, changes)
        now = time.time()
        events: collections.Counter[tuple[str, str]] = collections.Counter()
        signals: collections.Counter[str] = collections.Counter()
        latency = metrics.PROCESSING_LATENCY.labels(self.name)
        for rec in records:
            try:
                event = envelope.decode(rec.value or b"")
                result = expand_event(event, view, limits=self.limits, shared_pool=self.shared_pool)
            except Exception as exc:  # undecodable or rule-breaking: park it, keep going
                await send_dead_letter(tx, self.names.dlq, self.name, exc, rec)
                continue
            for signal in result.signals:
                await tx.send(self.names.signals, signal, key=rec.key)
            for batch in result.batches:
                await tx.send(self.names.units, to_json(batch), key=batch.domain.encode())
            if result.state_key is not None:
                changes[result.state_key] = result.history
            events[str(event.contract), event.domain] += 1
            signals[event.domain] += len(result.signals)
            if result.discarded:
                metrics.DISCARDED.labels(event.tenant, "off").inc()
            latency.observe(max(0.0, now - event.received_at.timestamp()))
        for (contract, domain), n in events.items():  # once per label set and batch, not per event
            metrics.EVENTS.labels(contract, domain).inc(n)
        for domain, n in signals.items():
            metrics.SIGNALS.labels(domain).inc(n)
        return changes


class _Overlay(Mapping[bytes, SeekerHistory]):
    """The committed table seen through this batch's uncommitted changes."""

    def __init__(
        self, base: Mapping[bytes, SeekerHistory], changes: dict[bytes, SeekerHistory | None]
    ) -> None:
        self.base, self.changes = base, changes

    def __getitem__(self, key: bytes) -> SeekerHistory:
        if key in self.changes:
            value = self.changes[key]
            if value is None:
                raise KeyError(key)
            return value
        return self.base[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter({*self.base, *self.changes})

    def __len__(self) -> int:
        return len({*self.base, *self.changes})


async def send_dead_letter(tx: Tx, topic: str, stage: str, exc: BaseException, rec: Record) -> None:
    letter = dead_letter(
        stage=stage,
        error=exc,
        original=rec.value or b"",
        topic=rec.topic,
        partition=rec.partition,
        offset=rec.offset,
        key=rec.key,
        failed_at=datetime.now(UTC),
    )
    await tx.send(topic, orjson.dumps(letter.model_dump(mode="json")), key=rec.key)
    metrics.DLQ.labels(stage, letter.error_type).inc()
