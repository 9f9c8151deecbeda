"""Pure answers: what each contract tells its caller once its events are written (seed shapes).

An answer function of the contract registry takes :class:`Answering` (the request's context, what
the intake made of it, the stream's results when the contract waits for them, the caller's rate
state) and returns the HTTP status and JSON body. No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from pipeline.api.contracts import (
    CorrectionResponse,
    InferenceFeedbackResult,
    ScoredOutputResponse,
)
from pipeline.api.guards import RateState
from pipeline.api.intake import Context, Intake
from pipeline.rules.flatten import feedback_ids, flatten_feedback
from pipeline.wire.envelope import (
    InferenceFeedbackEnvelope,
    ScoredOutputEnvelope,
    SearchEventEnvelope,
)
from pipeline.wire.records import StageResult

__all__ = [
    "Answer",
    "Answering",
    "correction",
    "inference_feedback",
    "item_answers",
    "item_results",
    "ranking_outcome",
    "scored_entry",
    "scored_output",
    "search_event",
]


@dataclass(frozen=True)
class Answering:
    """What an answer is made from."""

    ctx: Context
    intake: Intake
    results: Sequence[StageResult] | None = None  # the stream's, if waited for and in time
    rate: RateState | None = None  # the caller's rate limit state (HTTP only)


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any


def ranking_outcome(a: Answering) -> Answer:
    """Seed 000: the stream's true counts, or 202 with where to look (never an estimate)."""
    request_id = a.ctx.request_id
    data: dict[str, Any] = {"accepted": a.intake.accepted_count()}
    status = 200
    if a.results is None:
        status = 202
        data["status"] = "processing"
        data["results_url"] = f"/v1/requests/{request_id}"
    else:
        data["triplets_generated"] = sum(r.units_generated for r in a.results)
        data["triplets_pending_train"] = a.results[-1].pending
    data["request_id"] = request_id
    if a.intake.rejected:
        data["rejected"] = [{"index": r.index, "message": r.message} for r in a.intake.rejected]
    return Answer(status, data)


def correction(a: Answering) -> Answer:
    event = a.intake.events[0]
    answer = CorrectionResponse(feedback_id=event.event_id, received_at=event.received_at)
    return Answer(200, answer.model_dump(mode="json"))


def item_answers(intake: Intake) -> list[dict[str, Any]]:
    """Seed 002's per-item answers as JSON-ready dicts, exactly ``InferenceFeedbackResult``'s
    ``model_dump(mode="json")`` (a unit test holds them equal) without a model per item: the
    feedback ids of each written event, or why an item failed."""
    failed = {r.index: r for r in intake.rejected}
    flat_keys = intake.flat_keys if len(intake.flat_keys) == len(intake.events) else None
    results: list[dict[str, Any]] = []
    written = 0
    for index in range(intake.items if intake.items is not None else len(intake.events) + len(failed)):
        rejection = failed.get(index)
        if rejection is not None:
            error = {"status_code": 400, "message": rejection.message}
            results.append({"feedback_ids": None, "error": error})
            continue
        event = cast(InferenceFeedbackEnvelope, intake.events[written])
        keys = (
            flat_keys[written]
            if flat_keys is not None
            else [entry.key for entry in flatten_feedback(event.payload.feedback)]
        )
        written += 1
        results.append({"feedback_ids": feedback_ids(event.event_id, keys), "error": None})
    return results


def item_results(intake: Intake) -> list[InferenceFeedbackResult]:
    """Seed 002's per-item answers as models (the publisher's ``PublishResult``)."""
    return [InferenceFeedbackResult.model_validate(answer) for answer in item_answers(intake)]


def inference_feedback(a: Answering) -> Answer:
    return Answer(200, item_answers(a.intake))


def scored_entry(event: ScoredOutputEnvelope) -> ScoredOutputResponse:
    """The stored entry as seed 003 shows it (its POST answer and its list item)."""
    p = event.payload
    return ScoredOutputResponse(
        id=p.entry_id,
        task_id=p.task_id,
        inputs=p.inputs,
        output=p.output,
        score=p.score,
        source=p.source,
        metadata=p.metadata,
        created_at=event.received_at,
    )


def scored_output(a: Answering) -> Answer:
    event = cast(ScoredOutputEnvelope, a.intake.events[0])
    return Answer(201, scored_entry(event).model_dump(mode="json"))


def search_event(a: Answering) -> Answer:
    event = cast(SearchEventEnvelope, a.intake.events[0])
    rate = a.rate
    data = {
        "accepted": True,
        "access": {
            "rate_limit": {
                "limit_rps": rate.limit_rps if rate else a.ctx.tenant.rate_limit_rps,
                "remaining": rate.remaining if rate else 0,
                "reset_at": rate.reset_at if rate else "",
            },
            "tier": a.ctx.tenant.tier,
        },
        "feedback_id": event.event_id,
        "request_id": a.ctx.request_id,
        "session_id": event.payload.session_id,
        "usage": {"approx_tokens": 0, "bytes_returned": 0, "requests": 1},
    }
    return Answer(200, data)
