"""Pure intake rules: a validated request of a tenant becomes raw envelopes and an answer.

Shared by the HTTP ingest and the publisher library, so both paths validate alike. No I/O here:
the caller writes the envelopes and answers only after the broker acknowledged them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pipeline.api.contracts import (
    Contract,
    CorrectionRequest,
    InferenceFeedbackEvent,
    InferenceFeedbackResult,
    RankingOutcomeRequest,
    ScoredOutputRequest,
    SearchEventRequest,
    validate_inference_item,
)
from pipeline.ids import canonical_uuid, new_event_id
from pipeline.limits import MAX_DEPTH, MAX_KEYS_PER_REQUEST, DepthExceeded, deepest_path
from pipeline.rules.flatten import feedback_id
from pipeline.tenants import BUILTIN_LABELS, Tenant
from pipeline.wire.envelope import (
    CorrectionEnvelope,
    CorrectionPayload,
    InferenceFeedbackEnvelope,
    RankingOutcomeEnvelope,
    RankingOutcomePayload,
    RawEvent,
    ResolvedOutcome,
    ScoredOutputEnvelope,
    ScoredOutputPayload,
    SearchEventEnvelope,
    SearchEventPayload,
)

Origin = Literal["http", "publisher"]


@dataclass(frozen=True)
class Context:
    """Who sent a request and how it is traced."""

    tenant: Tenant
    request_id: str
    correlation_id: str
    received_at: datetime
    origin: Origin = "http"
    new_id: Callable[[], str] = new_event_id


class Refused(Exception):
    """The request as a whole is refused: ``status`` 400/403/404/413/422 with a human ``message``."""

    def __init__(self, status: int, code: str, message: str, details: object = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def check_edge(body: object) -> None:
    """The shape checks every parsed body passes before anything else looks at it, on both paths
    (the HTTP ingest and the publisher library): at most ``MAX_DEPTH`` nested containers, below
    what every later codec takes (orjson encodes 254 levels, pydantic's JSON decoder 200).

    Raises :class:`Refused` (400 ``TOO_DEEP``, message and details name the path and the limit).
    """
    try:
        deepest_path(body, MAX_DEPTH)
    except DepthExceeded as err:
        raise Refused(400, "TOO_DEEP", str(err), {"path": err.path, "limit": err.limit}) from None


def canonical_domain(ctx: Context, domain: str) -> str:
    """A domain as the stream keys it: a task id of the tenant (any UUID spelling) becomes its
    canonical form; domain names stay as written (they are exact). 403 if not owned."""
    canon = canonical_uuid(domain)
    if canon is not None and ctx.tenant.task(canon) is not None:
        return canon
    require_domain(ctx, domain)
    return domain


@dataclass(frozen=True)
class ItemRejection:
    index: int
    message: str
    reason: str  # metric label: unknown_label, invalid, ...


@dataclass
class Intake:
    """What to write, and what to tell the caller about each item."""

    events: list[RawEvent] = field(default_factory=list)
    rejected: list[ItemRejection] = field(default_factory=list)


def _base(ctx: Context, domain: str) -> dict[str, object]:
    return {
        "event_id": ctx.new_id(),
        "tenant": ctx.tenant.id,
        "domain": domain,
        "received_at": ctx.received_at,
        "correlation_id": ctx.correlation_id,
        "request_id": ctx.request_id,
        "origin": ctx.origin,
    }


def require_domain(ctx: Context, domain: str) -> None:
    if not ctx.tenant.owns_domain(domain):
        raise Refused(
            403, "SCOPE_INSUFFICIENT", f"Tenant '{ctx.tenant.id}' may not write to domain '{domain}'."
        )


def default_domain(ctx: Context, contract: Contract) -> str:
    domain = ctx.tenant.default_domain(contract)
    if domain is None:
        raise Refused(
            403,
            "SCOPE_INSUFFICIENT",
            f"Tenant '{ctx.tenant.id}' has no default domain for {contract} feedback (tenants file).",
        )
    return domain


def ranking_outcomes(ctx: Context, req: RankingOutcomeRequest) -> Intake:
    """Seed 000: one envelope per seeker; an unregistered label rejects that item only."""
    domain = canonical_domain(ctx, req.domain)
    out = Intake()
    by_seeker: dict[str, list[ResolvedOutcome]] = {}
    for index, item in enumerate(req.items):
        label = ctx.tenant.resolve_label(item.outcome)
        if label is None:
            known = sorted({*BUILTIN_LABELS, *ctx.tenant.labels})
            out.rejected.append(
                ItemRejection(
                    index,
                    f"items.{index}.outcome: unknown label '{item.outcome}'; "
                    f"known labels: {', '.join(known)}.",
                    "unknown_label",
                )
            )
            continue
        by_seeker.setdefault(item.seeker_id, []).append(
            ResolvedOutcome(
                index=index,
                candidate_id=item.candidate_id,
                outcome=item.outcome,
                grade=label.grade,
                positive=label.positive,
                weight=item.weight,
            )
        )
    for seeker_id, items in by_seeker.items():
        out.events.append(
            RankingOutcomeEnvelope.model_validate(
                {**_base(ctx, domain), "payload": RankingOutcomePayload(seeker_id=seeker_id, items=items)}
            )
        )
    return out


def correction(ctx: Context, req: CorrectionRequest) -> Intake:
    """Seed 001: one envelope; the tenant's feedback mode is frozen into it."""
    domain = default_domain(ctx, Contract.CORRECTION)
    payload = CorrectionPayload(**req.model_dump(), feedback_mode=ctx.tenant.feedback_mode)
    return Intake([CorrectionEnvelope.model_validate({**_base(ctx, domain), "payload": payload})])


def inference_feedback(
    ctx: Context, items: Sequence[object]
) -> tuple[Intake, list[InferenceFeedbackResult | None]]:
    """Seed 002: validate item by item; results for valid items are filled once written."""
    domain = default_domain(ctx, Contract.INFERENCE_FEEDBACK)
    out = Intake()
    results: list[InferenceFeedbackResult | None] = []
    keys = 0
    for index, raw in enumerate(items):
        checked = validate_inference_item(raw)
        if isinstance(checked, InferenceFeedbackEvent):
            keys += len(checked.entries())
            if keys > MAX_KEYS_PER_REQUEST:  # stop here: the rest is not worth validating
                raise Refused(
                    413,
                    "TOO_MANY_KEYS",
                    f"The request's feedback flattens to more than {MAX_KEYS_PER_REQUEST} keys "
                    f"(item {index} crosses the limit).",
                )
            out.events.append(
                InferenceFeedbackEnvelope.model_validate({**_base(ctx, domain), "payload": checked})
            )
            results.append(None)
        else:
            out.rejected.append(ItemRejection(index, checked.message, "invalid"))
            results.append(InferenceFeedbackResult.failed(checked.status_code, checked.message))
    return out, results


def inference_results(
    intake: Intake, pending: list[InferenceFeedbackResult | None]
) -> list[InferenceFeedbackResult]:
    """Fill the per-item answers of seed 002 with the feedback ids of the written events."""
    written = iter(intake.events)
    results: list[InferenceFeedbackResult] = []
    for result in pending:
        if result is None:
            event = next(written)
            assert isinstance(event, InferenceFeedbackEnvelope)
            keys = [entry.key for entry in event.payload.entries()]
            results.append(InferenceFeedbackResult.ok({k: feedback_id(event.event_id, k) for k in keys}))
        else:
            results.append(result)
    return results


def scored_output(ctx: Context, req: ScoredOutputRequest) -> Intake:
    """Seed 003: the task is the domain; unknown task 404, inputs off the task's schema 422."""
    if ctx.tenant.task(req.task_id) is None:
        raise Refused(404, "TASK_NOT_FOUND", f"Task '{req.task_id}' does not exist.")
    problem = ctx.tenant.inputs_problem(req.task_id, req.inputs)
    if problem:
        raise Refused(422, "INPUTS_MISMATCH", problem)
    base = _base(ctx, req.task_id)
    payload = ScoredOutputPayload(**req.model_dump(), entry_id=str(base["event_id"]))
    return Intake([ScoredOutputEnvelope.model_validate({**base, "payload": payload})])


def search_event(ctx: Context, req: SearchEventRequest, header_session: str | None) -> Intake:
    """Seed 004: the session comes from the body, else X-Session-ID, else a new one."""
    domain = default_domain(ctx, Contract.SEARCH_EVENT)
    session = req.session_id or header_session or str(uuid.uuid4())
    payload = SearchEventPayload(**{**req.model_dump(), "session_id": session})
    return Intake([SearchEventEnvelope.model_validate({**_base(ctx, domain), "payload": payload})])
