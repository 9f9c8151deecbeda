"""Pure: every raw event becomes typed signals, one per flattened key or mapped field.

Dashboards read one stream whatever the contract: seed 002 keys as flattened, seed 000 outcomes,
seed 001 corrections, seed 003 scores and seed 004 event types.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pipeline.api.contracts import InferenceFeedbackEvent
from pipeline.rules.flatten import feedback_id
from pipeline.wire.envelope import (
    CorrectionPayload,
    RankingOutcomePayload,
    RawEvent,
    ScoredOutputPayload,
    SearchEventPayload,
    search_anchor,
)
from pipeline.wire.records import SignalValue, signal_id


def json_time(at: datetime) -> str:
    """A time as pydantic writes it (``Z`` for UTC), so both paths give the same bytes."""
    return at.isoformat().replace("+00:00", "Z")


def signal_records(event: RawEvent) -> list[dict[str, Any]]:
    """The signals of one event as JSON-ready dicts in ``Signal``'s field order (the stream's hot path:
    building models for every signal costs more than the rest of the rule)."""
    p = event.payload
    received_at = json_time(event.received_at)
    contract = str(event.contract)

    def make(
        key: str,
        value: SignalValue,
        subject: str,
        *,
        reason: str | None = None,
        tags: dict[str, str] | None = None,
        optimize: str | None = None,
        sid: str | None = None,
    ) -> dict[str, Any]:
        return {
            "signal_id": sid or signal_id(event_id=event.event_id, subject=subject, key=key),
            "event_id": event.event_id,
            "tenant": event.tenant,
            "domain": event.domain,
            "contract": contract,
            "key": key,
            "value": value,
            "reason": reason,
            "tags": tags or {},
            "optimize": optimize,
            "subject": subject,
            "received_at": received_at,
        }

    if isinstance(p, InferenceFeedbackEvent):
        return [
            make(
                e.key,
                e.value,
                p.id,
                reason=e.reason,
                tags=p.tags or {},
                optimize=p.optimize,
                sid=feedback_id(event.event_id, e.key),
            )
            for e in p.entries()
        ]
    if isinstance(p, RankingOutcomePayload):
        return [
            make(
                "outcome",
                item.outcome,
                f"{p.seeker_id}->{item.candidate_id}",
                tags={"grade": f"{item.grade:g}", "weight": f"{item.weight:g}"},
            )
            for item in p.items
        ]
    if isinstance(p, CorrectionPayload):
        if p.feedback_mode == "off":
            return []
        return [make("correction", p.module, p.case_id, tags={"feedback_mode": str(p.feedback_mode)})]
    if isinstance(p, ScoredOutputPayload):
        tags = {"source": p.source, "task_id": p.task_id}
        return [] if p.score is None else [make("score", p.score, p.entry_id, tags=tags, optimize="max")]
    assert isinstance(p, SearchEventPayload)
    tags = {k: str(v) for k, v in (("rank", p.rank), ("doc_id", p.doc_id), ("passage_id", p.passage_id)) if v}
    return [make("event_type", str(p.event_type), search_anchor(p, p.session_id), tags=tags)]
