"""The five built-in contracts (seeds 000-004), each one spec wiring its pieces together."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from pipeline.api import answers, intake
from pipeline.api.contracts import (
    CorrectionRequest,
    CorrectionResponse,
    InferenceFeedbackEvent,
    InferenceFeedbackResult,
    RankingOutcomeRequest,
    RankingOutcomeResponse,
    ScoredOutputRequest,
    ScoredOutputResponse,
    SearchEventRequest,
    SearchEventResponse,
)
from pipeline.api.intake import Context, Hints, Intake, Refused
from pipeline.api.wording import (
    correction_error_code,
    describe_validation_error,
    is_score_range_error,
    validation_details,
)
from pipeline.contracts.spec import ContractSpec
from pipeline.rules import expansion, signals
from pipeline.wire import envelope
from pipeline.wire.envelope import Contract

__all__ = ["BUILTIN", "FEEDBACK_ROUTE", "SCORED_ROUTE", "SEED_001_CODES"]

FEEDBACK_ROUTE = "/v1/feedback"
SCORED_ROUTE = "/api/v1/feedback"

#: Seed 001 names its own error codes: ours by HTTP status become these for corrections.
SEED_001_CODES = {
    401: "UNAUTHENTICATED",
    403: "SCOPE_INSUFFICIENT",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
    503: "UNAVAILABLE",
    500: "INTERNAL_ERROR",
}


def _seed_001_code(status: int, code: str) -> str:
    """A too-deep body is an invalid field; other statuses map by :data:`SEED_001_CODES`."""
    if code == "TOO_DEEP":
        return "INVALID_FIELD"
    if status in SEED_001_CODES and code != "IDEMPOTENCY_CONFLICT":
        return SEED_001_CODES[status]
    return code


def _correction_invalid(err: ValidationError) -> Refused:
    return Refused(400, correction_error_code(err).value, describe_validation_error(err))


def _scored_invalid(err: ValidationError) -> Refused:
    code = "INVALID_SCORE" if is_score_range_error(err) else "INVALID_REQUEST"
    return Refused(422, code, describe_validation_error(err), validation_details(err))


def _ranking(ctx: Context, req: Any, hints: Hints) -> Intake:
    return intake.ranking_outcomes(ctx, req, max_items=hints.max_items)


def _correction(ctx: Context, req: Any, hints: Hints) -> Intake:
    return intake.correction(ctx, req)


def _inference(ctx: Context, body: Any, hints: Hints) -> Intake:
    return intake.inference_feedback(ctx, body, max_items=hints.max_items)


def _scored(ctx: Context, req: Any, hints: Hints) -> Intake:
    return intake.scored_output(ctx, req)


def _search(ctx: Context, req: Any, hints: Hints) -> Intake:
    session = hints.headers.get("X-Session-ID", "").strip() or None
    return intake.search_event(ctx, req, session)


BUILTIN: tuple[ContractSpec, ...] = (
    ContractSpec(
        name=Contract.RANKING_OUTCOME,
        route=FEEDBACK_ROUTE,
        request=RankingOutcomeRequest,
        response=RankingOutcomeResponse,
        wire=envelope.RankingOutcomeEnvelope,
        key=envelope.ranking_outcome_key,
        intake=_ranking,
        signals=signals.ranking_outcome_signals,
        expansion=expansion.ranking_outcome_plan,
        answer=answers.ranking_outcome,
        signature=frozenset({"domain", "items"}),
        waits_for_results=True,
    ),
    ContractSpec(
        name=Contract.CORRECTION,
        route=FEEDBACK_ROUTE,
        request=CorrectionRequest,
        response=CorrectionResponse,
        wire=envelope.CorrectionEnvelope,
        key=envelope.correction_key,
        intake=_correction,
        signals=signals.correction_signals,
        expansion=expansion.correction_plan,
        answer=answers.correction,
        signature=frozenset({"case_id", "module", "original_output", "corrected_output", "actor"}),
        invalid=_correction_invalid,
        error_shape="seed001",
        error_code=_seed_001_code,
    ),
    ContractSpec(
        name=Contract.INFERENCE_FEEDBACK,
        route=FEEDBACK_ROUTE,
        request=InferenceFeedbackEvent,
        response=InferenceFeedbackResult,
        wire=envelope.InferenceFeedbackEnvelope,
        key=envelope.inference_feedback_key,
        intake=_inference,
        signals=signals.inference_feedback_signals,
        expansion=expansion.inference_feedback_plan,
        answer=answers.inference_feedback,
        array=True,
        one_record=True,
    ),
    ContractSpec(
        name=Contract.SCORED_OUTPUT,
        route=SCORED_ROUTE,
        request=ScoredOutputRequest,
        response=ScoredOutputResponse,
        wire=envelope.ScoredOutputEnvelope,
        key=envelope.scored_output_key,
        intake=_scored,
        signals=signals.scored_output_signals,
        expansion=expansion.scored_output_plan,
        answer=answers.scored_output,
        invalid=_scored_invalid,
    ),
    ContractSpec(
        name=Contract.SEARCH_EVENT,
        route=FEEDBACK_ROUTE,
        request=SearchEventRequest,
        response=SearchEventResponse,
        wire=envelope.SearchEventEnvelope,
        key=envelope.search_event_key,
        intake=_search,
        signals=signals.search_event_signals,
        expansion=expansion.search_event_plan,
        answer=answers.search_event,
        signature=frozenset({"event_type"}),
    ),
)
