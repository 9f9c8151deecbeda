"""Pure: every raw event becomes typed signals, one per flattened key or mapped field.

Dashboards read one stream whatever the contract: seed 002 keys as flattened, seed 000 outcomes,
seed 001 corrections, seed 003 scores and seed 004 event types. One function per contract; the
contract registry (:mod:`pipeline.contracts`) picks the one of an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pipeline.rules.flatten import feedback_namer, flatten_feedback
from pipeline.tenants import FeedbackMode
from pipeline.wire.envelope import (
    CorrectionEnvelope,
    Envelope,
    InferenceFeedbackEnvelope,
    InferenceFeedbackPayload,
    RankingOutcomeEnvelope,
    ScoredOutputEnvelope,
    ScoredOutputPayload,
    SearchEventEnvelope,
    search_anchor,
)
from pipeline.wire.records import SignalValue, signal_id

__all__ = [
    "correction_signals",
    "inference_feedback_signals",
    "json_time",
    "ranking_outcome_signals",
    "scored_output_signals",
    "search_event_signals",
    "signal",
    "trace_of",
]


def json_time(at: datetime) -> str:
    """A time as pydantic writes it (``Z`` for UTC), so both paths give the same bytes."""
    return at.isoformat().replace("+00:00", "Z")


def signal(
    event: Envelope,
    key: str,
    value: SignalValue,
    subject: str,
    *,
    reason: str | None = None,
    tags: dict[str, str] | None = None,
    optimize: str | None = None,
    sid: str | None = None,
    at: str | None = None,
    contract: str | None = None,
    trace: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One signal as a JSON-ready dict in ``Signal``'s field order (the registry's signal rules return
    these; ``at`` and ``contract``: the event's time as JSON and its contract, when the caller made
    them once for all of an event's signals; ``trace``: the ``trace_id``/``span_id`` of the call the
    feedback is about, last, and only those given)."""
    out = {
        "signal_id": sid or signal_id(event_id=event.event_id, subject=subject, key=key),
        "event_id": event.event_id,
        "tenant": event.tenant,
        "domain": event.domain,
        "contract": contract or event.contract,
        "key": key,
        "value": value,
        "reason": reason,
        "tags": tags or {},
        "optimize": optimize,
        "subject": subject,
        "received_at": at or json_time(event.received_at),
    }
    if trace:
        out.update(trace)
    return out


def trace_of(payload: InferenceFeedbackPayload | ScoredOutputPayload) -> dict[str, str]:
    """The ``trace_id``/``span_id`` an LLM-call payload carries (absent ones left out)."""
    return {
        k: v for k, v in (("trace_id", payload.trace_id), ("span_id", payload.span_id)) if isinstance(v, str)
    }


def inference_feedback_signals(event: InferenceFeedbackEnvelope) -> list[dict[str, Any]]:
    p = event.payload
    at, contract, tags = json_time(event.received_at), event.contract, p.tags or {}
    trace = trace_of(p)
    sid = feedback_namer(event.event_id)
    return [
        signal(
            event,
            e.key,
            e.value,
            p.id,
            reason=e.reason,
            tags=tags,
            optimize=p.optimize,
            sid=sid(e.key),
            at=at,
            contract=contract,
            trace=trace,
        )
        for e in flatten_feedback(p.feedback)
    ]


def ranking_outcome_signals(event: RankingOutcomeEnvelope) -> list[dict[str, Any]]:
    p = event.payload
    at, contract = json_time(event.received_at), event.contract
    return [
        signal(
            event,
            "outcome",
            item.outcome,
            f"{p.seeker_id}->{item.candidate_id}",
            tags={"grade": f"{item.grade:g}", "weight": f"{item.weight:g}"},
            at=at,
            contract=contract,
        )
        for item in p.items
    ]


def correction_signals(event: CorrectionEnvelope) -> list[dict[str, Any]]:
    p = event.payload
    if p.feedback_mode is FeedbackMode.OFF:
        return []
    return [signal(event, "correction", p.module, p.case_id, tags={"feedback_mode": str(p.feedback_mode)})]


def scored_output_signals(event: ScoredOutputEnvelope) -> list[dict[str, Any]]:
    p = event.payload
    if p.score is None:
        return []
    return [
        signal(
            event,
            "score",
            p.score,
            p.entry_id,
            tags={"source": p.source, "task_id": p.task_id},
            optimize="max",
            trace=trace_of(p),
        )
    ]


def search_event_signals(event: SearchEventEnvelope) -> list[dict[str, Any]]:
    p = event.payload
    tags = {k: str(v) for k, v in (("rank", p.rank), ("doc_id", p.doc_id), ("passage_id", p.passage_id)) if v}
    return [signal(event, "event_type", str(p.event_type), search_anchor(p), tags=tags)]
