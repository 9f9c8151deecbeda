"""Pure: what one raw event becomes (signals, unit batches, the anchor's new history).

The expand stage (:mod:`pipeline.stream.expand`) runs this for every record of ``feedback.raw``; it
holds no state of its own: the histories it reads come from the stage's table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

import orjson

from pipeline.api.contracts import InferenceFeedbackEvent
from pipeline.rules.signals import signal_records
from pipeline.rules.triplets import (
    Limits,
    Observation,
    SeekerHistory,
    StreamClock,
    correction_unit,
    expand_outcomes,
    pooled_copy,
    scored_unit,
    search_observation,
)
from pipeline.tenants import FeedbackMode
from pipeline.wire.envelope import (
    CorrectionPayload,
    RankingOutcomePayload,
    RawEvent,
    ScoredOutputPayload,
    SearchEventPayload,
    search_anchor,
)
from pipeline.wire.records import TrainingUnit, UnitsBatch

#: The expand table: a history per ``domain/anchor`` key, and the partition's clock.
ExpandState: TypeAlias = SeekerHistory | StreamClock


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
            "request_events": event.request_events,
            **over,
        }
    )


def expand_event(
    event: RawEvent,
    history_of: Mapping[bytes, ExpandState],
    *,
    limits: Limits,
    shared_pool: str,
    stream_time: datetime | None = None,
) -> Expansion:
    """Pure: the signals, unit batches and new anchor history of one event.

    Histories are cut at ``max(received_at, stream_time) - max_age`` (the stage passes its stream time;
    a history cut to nothing is deleted: ``history`` None with a ``state_key``).
    """
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
                pooled = pooled_copy(unit, module=p.module, pool=shared_pool)
                out.batches.append(
                    _batch(
                        event,
                        [pooled],
                        domain=shared_pool,
                        tenant=None,
                        reply=False,
                        event_id=pooled.event_id,
                    )
                )
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
        stored = history_of.get(key)
        history = stored if isinstance(stored, SeekerHistory) else SeekerHistory()
        if observations:
            now = event.received_at if stream_time is None else max(event.received_at, stream_time)
            history, triplets = expand_outcomes(
                history,
                observations,
                domain=event.domain,
                anchor=anchor,
                tenant=event.tenant,
                now=now,
                limits=limits,
                origin=origin,  # type: ignore[arg-type]
            )
            units.extend(triplets)
            out.state_key, out.history = key, history if history.observations else None
    out.batches.insert(0, _batch(event, units))
    return out
