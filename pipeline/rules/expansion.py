"""Pure: what one raw event becomes (signals, unit batches, the anchor's new history).

Each contract has an expansion rule here (event -> :class:`Plan`: its own training units, the
observations it adds to an anchor's history, extra batches); :func:`expand_with` is what every
contract shares (signals, the history and its triplets, the event's batch). The contract registry
(:func:`pipeline.contracts.expand_event`) picks the rule of an event; the expand stage
(:mod:`pipeline.stream.expand`) runs it for every record of ``feedback.raw`` and holds no state of
its own: the histories it reads come from the stage's table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias

import msgspec
import orjson

from pipeline.rules.signals import trace_of
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
    CorrectionEnvelope,
    Envelope,
    InferenceFeedbackEnvelope,
    RankingOutcomeEnvelope,
    ScoredOutputEnvelope,
    SearchEventEnvelope,
    search_anchor,
)
from pipeline.wire.records import TrainingUnit, UnitsBatch, decoder

__all__ = [
    "ExpandState",
    "Expansion",
    "Plan",
    "correction_plan",
    "decode_state",
    "expand_with",
    "inference_feedback_plan",
    "ranking_outcome_plan",
    "scored_output_plan",
    "search_event_plan",
    "units_batch",
]

#: The expand table: a history per ``domain/anchor`` key, and the partition's clock.
ExpandState: TypeAlias = SeekerHistory | StreamClock
_HISTORY = decoder(SeekerHistory)
_CLOCK = decoder(StreamClock)


def decode_state(value: bytes) -> ExpandState:
    """A changelog value of the expand table: a history, else the clock (neither carries a tag,
    as the values written before msgspec did not; each refuses the other's fields)."""
    try:
        return _HISTORY.decode(value)
    except msgspec.ValidationError as not_history:
        try:
            return _CLOCK.decode(value)
        except msgspec.ValidationError as not_clock:
            raise msgspec.ValidationError(
                f"neither a seeker history ({not_history}) nor the stream clock ({not_clock})"
            ) from None


@dataclass
class Expansion:
    """What one raw event becomes."""

    signals: list[bytes] = field(default_factory=list)
    batches: list[UnitsBatch] = field(default_factory=list)
    state_key: bytes | None = None
    history: SeekerHistory | None = None
    discarded: bool = False


@dataclass
class Plan:
    """A contract's part of an expansion: units of its own, observations for an anchor's history
    (which become triplets), batches beside the event's own, or the event discarded."""

    units: list[TrainingUnit] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    anchor: str = ""
    origin: Literal["ranking_outcome", "search_event"] = "ranking_outcome"
    extra_batches: list[UnitsBatch] = field(default_factory=list)
    discarded: bool = False


def units_batch(event: Envelope, units: Sequence[TrainingUnit], **over: Any) -> UnitsBatch:
    """The ``feedback.units`` batch of an event (``over`` replaces fields, e.g. a pooled copy's)."""
    return UnitsBatch(  # built from a decoded envelope and our own units
        **{
            "request_id": event.request_id,
            "event_id": event.event_id,
            "tenant": event.tenant,
            "domain": event.domain,
            "contract": event.contract,
            "received_at": event.received_at,
            "units": list(units),
            "request_events": event.request_events,
            **over,
        }
    )


def expand_with(
    event: Envelope,
    plan: Plan,
    signals: Sequence[Mapping[str, Any]],
    history_of: Mapping[bytes, ExpandState],
    *,
    limits: Limits,
    stream_time: datetime | None = None,
) -> Expansion:
    """Pure: the signals, unit batches and new anchor history of one event, given its contract's plan.

    Histories are cut at ``max(received_at, stream_time) - max_age`` (the stage passes its stream time;
    a history cut to nothing is deleted: ``history`` None with a ``state_key``).
    """
    out = Expansion(signals=[orjson.dumps(record) for record in signals])
    if plan.discarded:
        out.discarded = True
        return out
    units = list(plan.units)
    if plan.anchor:
        key = f"{event.domain}/{plan.anchor}".encode()
        stored = history_of.get(key)
        history = stored if isinstance(stored, SeekerHistory) else SeekerHistory()
        if plan.observations:
            now = event.received_at if stream_time is None else max(event.received_at, stream_time)
            history, triplets = expand_outcomes(
                history,
                plan.observations,
                domain=event.domain,
                anchor=plan.anchor,
                tenant=event.tenant,
                now=now,
                limits=limits,
                origin=plan.origin,
            )
            units.extend(triplets)
            out.state_key, out.history = key, history if history.observations else None
    out.batches = [units_batch(event, units), *plan.extra_batches]
    return out


# --- one rule per contract: event (and the shared pool's name) -> plan -------------------------------

PlanRule: TypeAlias = Callable[[Any, str], Plan]


def ranking_outcome_plan(event: RankingOutcomeEnvelope, shared_pool: str) -> Plan:
    """Seed 000: the outcomes join the seeker's history (triplets against earlier ones)."""
    p = event.payload
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
    return Plan(observations=observations, anchor=p.seeker_id)


def search_event_plan(event: SearchEventEnvelope, shared_pool: str) -> Plan:
    """Seed 004: what happened to a result joins the search anchor's history."""
    p = event.payload
    obs = search_observation(str(p.event_type), p.doc_id, p.passage_id, event.event_id, event.received_at)
    return Plan(observations=[] if obs is None else [obs], anchor=search_anchor(p), origin="search_event")


def correction_plan(event: CorrectionEnvelope, shared_pool: str) -> Plan:
    """Seed 001: a preference unit unless the mode says otherwise (off: discarded; audit only: none;
    shared improvement: an anonymized copy for the shared pool too)."""
    p = event.payload
    if p.feedback_mode is FeedbackMode.OFF:
        return Plan(discarded=True)
    plan = Plan()
    if p.feedback_mode is FeedbackMode.AUDIT_ONLY:
        return plan
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
    plan.units.append(unit)
    if p.feedback_mode is FeedbackMode.SHARED_IMPROVEMENT:
        pooled = pooled_copy(unit, module=p.module, pool=shared_pool)
        plan.extra_batches.append(
            units_batch(
                event, [pooled], domain=shared_pool, tenant=None, reply=False, event_id=pooled.event_id
            )
        )
    return plan


def scored_output_plan(event: ScoredOutputEnvelope, shared_pool: str) -> Plan:
    """Seed 003: one scored unit."""
    p = event.payload
    unit = scored_unit(
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
        trace=trace_of(p),
    )
    return Plan(units=[unit])


def inference_feedback_plan(event: InferenceFeedbackEnvelope, shared_pool: str) -> Plan:
    """Seed 002: signals only (an empty batch still answers the request)."""
    return Plan()
