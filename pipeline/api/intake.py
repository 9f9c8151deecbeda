"""Pure intake rules: a validated request of a tenant becomes wire events of ``feedback.raw``.

One function per contract turns the API model (:mod:`pipeline.api.contracts`) into wire events
(:mod:`pipeline.wire.envelope`) with explicit conversions, so no API type reaches the wire. The
contract registry (:func:`pipeline.contracts.accept`, the one entry point of the HTTP ingest and
the publisher library) classifies and validates a body, then calls these. No I/O here: the caller
writes the events and answers only after the broker acknowledged them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from pydantic import ValidationError

from pipeline.api.contracts import (
    CorrectionRequest,
    InferenceFeedbackEvent,
    ItemError,
    RankingOutcomeRequest,
    ScoredOutputRequest,
    SearchEventRequest,
)
from pipeline.api.wording import describe_validation_error
from pipeline.ids import canonical_uuid, is_canonical_uuid, new_event_id
from pipeline.kafka.io import OutRecord
from pipeline.limits import (
    MAX_DEPTH,
    MAX_ID_CHARS,
    MAX_KEYS_PER_ITEM,
    MAX_KEYS_PER_REQUEST,
    MAX_LABEL_CHARS,
    MAX_TAGS,
    DepthExceeded,
    deepest_path,
)
from pipeline.rules.flatten import FlatEntry, flatten_plain
from pipeline.tenants import BUILTIN_LABELS, FeedbackMode, Tenant
from pipeline.wire.envelope import (
    Contract,
    CorrectionEnvelope,
    CorrectionPayload,
    Envelope,
    InferenceFeedbackEnvelope,
    InferenceFeedbackPayload,
    Origin,
    RankingOutcomeEnvelope,
    RankingOutcomePayload,
    ResolvedOutcome,
    ScoredOutputEnvelope,
    ScoredOutputPayload,
    SearchEventEnvelope,
    SearchEventPayload,
)
from pipeline.wire.records import Erasure, TrainRequest, erasure_id, to_json

__all__ = [
    "Context",
    "Hints",
    "Intake",
    "ItemRejection",
    "Origin",
    "Refused",
    "base_fields",
    "canonical_domain",
    "check_edge",
    "correction",
    "default_domain",
    "inference_feedback",
    "plain_inference_item",
    "ranking_outcomes",
    "require_domain",
    "scored_output",
    "search_event",
    "trace_fields",
    "validate_inference_item",
]


@dataclass(frozen=True)
class Context:
    """Who sent a request and how it is traced."""

    tenant: Tenant
    request_id: str
    correlation_id: str
    received_at: datetime
    origin: Origin = "http"
    new_id: Callable[[], str] = new_event_id


@dataclass(frozen=True)
class Hints:
    """What a request brings beside its body: headers (``X-Session-ID``) and the caller's item cap."""

    headers: Mapping[str, str] = field(default_factory=dict)
    max_items: int | None = None


@dataclass(frozen=True)
class ItemRejection:
    index: int
    message: str
    reason: str  # metric label: unknown_label, invalid, ...


class Refused(Exception):
    """The request as a whole is refused: ``status`` 400/403/404/413/422 with a human ``message``.

    ``contract`` is the contract the body was for (None when none fitted), so the HTTP layer answers
    in its error shape; ``reason`` is the ``items_rejected`` metric label when the refusal counts as
    a rejected item; ``rejected`` the per-item rejections that left nothing to write.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: object = None,
        *,
        contract: str | None = None,
        reason: str | None = None,
        rejected: Sequence[ItemRejection] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.contract = contract
        self.reason = reason
        self.rejected = tuple(rejected)


@dataclass
class Intake:
    """What to write, and what to tell the caller about each item.

    ``items`` is the number of items of an array body (seed 002), so per-item answers line up;
    ``accepted_items`` what the ``items_accepted`` metric counts (default: one per event).
    """

    events: list[Envelope] = field(default_factory=list)
    rejected: list[ItemRejection] = field(default_factory=list)
    items: int | None = None
    accepted_items: int | None = None
    #: seed 002: the flattened feedback keys of each event (in ``events``' order), so the answer
    #: does not flatten the feedback again
    flat_keys: list[list[str]] = field(default_factory=list)

    def accepted_count(self) -> int:
        return len(self.events) if self.accepted_items is None else self.accepted_items


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


def check_items(n: int, limit: int | None) -> None:
    if limit is not None and n > limit:
        raise Refused(413, "TOO_MANY_ITEMS", f"{n} items exceed the limit of {limit} per request.")


def canonical_domain(ctx: Context, domain: str) -> str:
    """A domain as the stream keys it: a task id of the tenant (any UUID spelling) becomes its
    canonical form; domain names stay as written (they are exact). 403 if not owned."""
    canon = canonical_uuid(domain)
    if canon is not None and ctx.tenant.task(canon) is not None:
        return canon
    require_domain(ctx, domain)
    return domain


def require_domain(ctx: Context, domain: str) -> None:
    if not ctx.tenant.owns_domain(domain):
        raise Refused(
            403, "SCOPE_INSUFFICIENT", f"Tenant '{ctx.tenant.id}' may not write to domain '{domain}'."
        )


def default_domain(ctx: Context, contract: str) -> str:
    domain = ctx.tenant.default_domain(contract)
    if domain is None:
        raise Refused(
            403,
            "SCOPE_INSUFFICIENT",
            f"Tenant '{ctx.tenant.id}' has no default domain for {contract} feedback (tenants file).",
        )
    return domain


def trace_fields(trace_id: str | None, span_id: str | None) -> dict[str, str]:
    """The payload's ``trace_id``/``span_id`` as given (an absent one stays off the wire)."""
    return {k: v for k, v in (("trace_id", trace_id), ("span_id", span_id)) if v is not None}


def shared_fields(ctx: Context, domain: str) -> dict[str, Any]:
    """The envelope fields every event of a request shares (all but its event id)."""
    return {
        "tenant": ctx.tenant.id,
        "domain": domain,
        "received_at": ctx.received_at,
        "correlation_id": ctx.correlation_id,
        "request_id": ctx.request_id,
        "origin": ctx.origin,
    }


def base_fields(ctx: Context, domain: str, event_id: str | None = None) -> dict[str, Any]:
    """The envelope fields every contract's event shares (a new event id unless given)."""
    return {"event_id": event_id or ctx.new_id(), **shared_fields(ctx, domain)}


# --- seed 000 -------------------------------------------------------------------------------------


def ranking_outcomes(ctx: Context, req: RankingOutcomeRequest, *, max_items: int | None = None) -> Intake:
    """Seed 000: one event per seeker; an unregistered label rejects that item only (400 if all)."""
    check_items(len(req.items), max_items)
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
    if not by_seeker:
        raise Refused(
            400,
            "NO_VALID_ITEMS",
            "No item of the request is valid.",
            {"rejected": [{"index": r.index, "message": r.message} for r in out.rejected]},
            contract=Contract.RANKING_OUTCOME,
            rejected=out.rejected,
        )
    for seeker_id, items in by_seeker.items():
        payload = RankingOutcomePayload(seeker_id=seeker_id, items=items)
        out.events.append(RankingOutcomeEnvelope(**base_fields(ctx, domain), payload=payload))
    out.accepted_items = sum(len(items) for items in by_seeker.values())
    return out


# --- seed 001 -------------------------------------------------------------------------------------


def correction_payload(req: CorrectionRequest, feedback_mode: FeedbackMode) -> CorrectionPayload:
    return CorrectionPayload(
        case_id=req.case_id,
        module=req.module,
        original_output=req.original_output,
        corrected_output=req.corrected_output,
        actor=req.actor,
        feedback_mode=feedback_mode,
    )


def correction(ctx: Context, req: CorrectionRequest) -> Intake:
    """Seed 001: one event; the tenant's feedback mode is frozen into it."""
    domain = default_domain(ctx, Contract.CORRECTION)
    payload = correction_payload(req, ctx.tenant.feedback_mode)
    return Intake([CorrectionEnvelope(**base_fields(ctx, domain), payload=payload)])


# --- seed 002 -------------------------------------------------------------------------------------


def validate_inference_item(item: Any) -> InferenceFeedbackEvent | ItemError:
    """Validate one array item; a bad item becomes a 400 :class:`ItemError`, never an exception."""
    if not isinstance(item, Mapping):
        return ItemError(status_code=400, message="Each feedback event must be a JSON object.")
    try:
        return InferenceFeedbackEvent.model_validate(item)
    except ValidationError as err:
        return ItemError(status_code=400, message=describe_validation_error(err))


def inference_payload(item: InferenceFeedbackEvent) -> InferenceFeedbackPayload:
    return InferenceFeedbackPayload(
        id=item.id,
        feedback=item.feedback,
        tags=None if item.tags is None else dict(item.tags),
        optimize=item.optimize,
        **trace_fields(item.trace_id, item.span_id),
    )


_PLAIN_ITEM_FIELDS = frozenset({"id", "feedback", "tags", "optimize"})
_Optimize = Literal["max", "min"]


def plain_inference_item(item: Any) -> tuple[InferenceFeedbackPayload, list[FlatEntry]] | None:
    """The payload and flattened feedback of an item that is plainly valid, or None for any other
    (left to :func:`validate_inference_item`, whose pydantic model says what is wrong).

    Plainly valid: a dict of ``id`` (already canonical), ``feedback`` (a dict that flattens within
    the bounds), ``tags`` (a dict of strings within their bounds, or null) and ``optimize``; no
    trace fields. What is accepted here the model accepts with the same payload (a property test
    holds it); it saves the model per item (a quarter of taking a 100-item request in).
    """
    if item.__class__ is not dict or not item.keys() <= _PLAIN_ITEM_FIELDS:
        return None
    uid, feedback = item.get("id"), item.get("feedback")
    if uid.__class__ is not str or feedback.__class__ is not dict or not is_canonical_uuid(uid):
        return None
    optimize = item.get("optimize", "max")
    if optimize.__class__ is not str or (optimize != "max" and optimize != "min"):
        return None
    tags = item.get("tags")
    if tags is not None:
        if tags.__class__ is not dict or len(tags) > MAX_TAGS:
            return None
        for key, value in tags.items():
            if (
                key.__class__ is not str
                or value.__class__ is not str
                or len(key) > MAX_LABEL_CHARS
                or len(value) > MAX_ID_CHARS
            ):
                return None
        tags = dict(tags)
    entries = flatten_plain(feedback, MAX_KEYS_PER_ITEM, MAX_ID_CHARS)  # None: the model words why
    if entries is None:
        return None
    payload = InferenceFeedbackPayload(
        id=uid, feedback=feedback, tags=tags, optimize=cast(_Optimize, optimize)
    )
    return payload, entries


def inference_feedback(ctx: Context, items: Sequence[object], *, max_items: int | None = None) -> Intake:
    """Seed 002: validate item by item; a bad item is rejected alone (its answer says why)."""
    check_items(len(items), max_items)
    domain = default_domain(ctx, Contract.INFERENCE_FEEDBACK)
    out = Intake(items=len(items))
    shared = shared_fields(ctx, domain)
    new_id = ctx.new_id
    keys = 0
    for index, raw in enumerate(items):
        plain = plain_inference_item(raw)
        if plain is None:
            checked = validate_inference_item(raw)
            if isinstance(checked, ItemError):
                out.rejected.append(ItemRejection(index, checked.message, "invalid"))
                continue
            payload, entries = inference_payload(checked), checked.entries()
        else:
            payload, entries = plain
        flat = [entry.key for entry in entries]
        keys += len(flat)
        if keys > MAX_KEYS_PER_REQUEST:  # stop here: the rest is not worth validating
            raise Refused(
                413,
                "TOO_MANY_KEYS",
                f"The request's feedback flattens to more than {MAX_KEYS_PER_REQUEST} keys "
                f"(item {index} crosses the limit).",
            )
        out.events.append(InferenceFeedbackEnvelope(event_id=new_id(), payload=payload, **shared))
        out.flat_keys.append(flat)
    return out


# --- seed 003 -------------------------------------------------------------------------------------


def scored_payload(req: ScoredOutputRequest, entry_id: str) -> ScoredOutputPayload:
    return ScoredOutputPayload(
        task_id=req.task_id,
        inputs=req.inputs,
        output=req.output,
        score=req.score,
        source=req.source,
        metadata=req.metadata,
        entry_id=entry_id,
        **trace_fields(req.trace_id, req.span_id),
    )


def scored_output(ctx: Context, req: ScoredOutputRequest) -> Intake:
    """Seed 003: the task is the domain; unknown task 404, inputs off the task's schema 422."""
    contract = Contract.SCORED_OUTPUT
    if ctx.tenant.task(req.task_id) is None:
        message = f"Task '{req.task_id}' does not exist."
        raise Refused(404, "TASK_NOT_FOUND", message, contract=contract, reason="task_not_found")
    problem = ctx.tenant.inputs_problem(req.task_id, req.inputs)
    if problem:
        raise Refused(422, "INPUTS_MISMATCH", problem, contract=contract, reason="inputs_mismatch")
    entry_id = ctx.new_id()
    payload = scored_payload(req, entry_id)
    return Intake([ScoredOutputEnvelope(**base_fields(ctx, req.task_id, entry_id), payload=payload)])


# --- seed 004 -------------------------------------------------------------------------------------


def search_payload(req: SearchEventRequest, session_id: str) -> SearchEventPayload:
    return SearchEventPayload(
        event_type=req.event_type,
        agent_context=req.agent_context,
        doc_id=req.doc_id,
        passage_id=req.passage_id,
        search_id=req.search_id,
        session_id=session_id,
        notes=req.notes,
        query=req.query,
        rank=req.rank,
    )


def search_event(ctx: Context, req: SearchEventRequest, header_session: str | None) -> Intake:
    """Seed 004: the session comes from the body, else X-Session-ID, else a new one."""
    if header_session is not None and len(header_session) > MAX_ID_CHARS:  # it may become the Kafka key
        raise Refused(400, "INVALID_REQUEST", f"X-Session-ID is longer than {MAX_ID_CHARS} characters.")
    domain = default_domain(ctx, Contract.SEARCH_EVENT)
    session = req.session_id or header_session or str(uuid.uuid4())
    return Intake([SearchEventEnvelope(**base_fields(ctx, domain), payload=search_payload(req, session))])


def train_record(
    topic: str,
    *,
    request_id: str,
    tenant: str,
    domain: str,
    requested_at: datetime,
    headers: Sequence[tuple[str, bytes]] = (),
) -> OutRecord:
    """The ``feedback.units`` record of a manual trigger (``POST /v1/train``, ``feedstream train``):
    keyed by the domain, so the count stage orders it with the domain's units."""
    msg = TrainRequest(request_id=request_id, tenant=tenant, domain=domain, requested_at=requested_at)
    return OutRecord(topic, domain.encode(), to_json(msg), list(headers))


def erasure_record(
    topic: str, *, tenant: str, entry_id: str, task_id: str, request_id: str, correlation_id: str
) -> OutRecord:
    """The ``feedback.erasures`` record of an erased entry (keyed like the entry on feedback.raw)."""
    msg = Erasure(
        erasure_id=erasure_id(entry_id),
        tenant=tenant,
        entry_id=entry_id,
        task_id=task_id,
        requested_at=datetime.now(UTC),
        request_id=request_id,
        correlation_id=correlation_id,
    )
    return OutRecord(
        topic,
        f"{task_id}/{entry_id}".encode(),
        to_json(msg),
        [("request_id", request_id.encode()), ("tenant", tenant.encode())],
    )
