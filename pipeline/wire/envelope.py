"""The canonical envelope of ``feedback.raw``: one validated event, whichever way it came in.

The HTTP ingest and the publisher library both build these, so the stream treats both alike.
Everything the stream needs to stay deterministic on replay (resolved label grades, the tenant's
feedback mode at receipt) is frozen into the envelope when it is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from pipeline.api.contracts import (
    Contract,
    CorrectionRequest,
    InferenceFeedbackEvent,
    ScoredOutputRequest,
    SearchEventRequest,
)
from pipeline.kafka.io import OutRecord
from pipeline.tenants import FeedbackMode


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    event_id: str = Field(description="UUIDv7, unique per raw event.")
    tenant: str
    domain: str = Field(description="Training domain (seed 003: the task id).")
    received_at: datetime
    correlation_id: str
    request_id: str
    origin: Literal["http", "publisher"]
    request_events: int | None = Field(
        default=None,
        ge=1,
        description="Raw events the request became (set by the intake), so any reader of the results "
        "can tell when a request is complete.",
    )


class ResolvedOutcome(BaseModel):
    """A seed 000 item with its label resolved against the tenant at receipt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=0, description="Position of the item in the request.")
    candidate_id: str
    outcome: str
    grade: float = Field(ge=0, le=3)
    positive: bool
    weight: float = Field(ge=0, allow_inf_nan=False)


class RankingOutcomePayload(BaseModel):
    """The outcomes of one seeker from one request (keyed by domain and seeker on Kafka)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seeker_id: str
    items: list[ResolvedOutcome] = Field(min_length=1)


class RankingOutcomeEnvelope(_Envelope):
    contract: Literal[Contract.RANKING_OUTCOME] = Contract.RANKING_OUTCOME
    payload: RankingOutcomePayload


class CorrectionPayload(CorrectionRequest):
    feedback_mode: FeedbackMode = Field(description="The tenant's mode when the correction arrived.")


class CorrectionEnvelope(_Envelope):
    contract: Literal[Contract.CORRECTION] = Contract.CORRECTION
    payload: CorrectionPayload


class InferenceFeedbackEnvelope(_Envelope):
    contract: Literal[Contract.INFERENCE_FEEDBACK] = Contract.INFERENCE_FEEDBACK
    payload: InferenceFeedbackEvent


class ScoredOutputPayload(ScoredOutputRequest):
    entry_id: str = Field(description="The id returned to the caller (seed 003 `id`).")


class ScoredOutputEnvelope(_Envelope):
    contract: Literal[Contract.SCORED_OUTPUT] = Contract.SCORED_OUTPUT
    payload: ScoredOutputPayload


class SearchEventPayload(SearchEventRequest):
    session_id: str = Field(description="From the body, X-Session-ID, or generated.")


class SearchEventEnvelope(_Envelope):
    contract: Literal[Contract.SEARCH_EVENT] = Contract.SEARCH_EVENT
    payload: SearchEventPayload


RawEvent = Annotated[
    RankingOutcomeEnvelope
    | CorrectionEnvelope
    | InferenceFeedbackEnvelope
    | ScoredOutputEnvelope
    | SearchEventEnvelope,
    Field(discriminator="contract"),
]
RAW_EVENT: TypeAdapter[RawEvent] = TypeAdapter(RawEvent)


def encode(event: RawEvent) -> bytes:
    return orjson.dumps(event.model_dump(mode="json"))


def decode(data: bytes) -> RawEvent:
    """Parse and validate bytes from ``feedback.raw`` (raises pydantic.ValidationError)."""
    return RAW_EVENT.validate_json(data)


def search_anchor(payload: SearchEventRequest, session_id: str) -> str:
    """What a search event's triplets hang on: the ranked list, else the query, else the session."""
    if payload.search_id:
        return f"search:{payload.search_id}"
    if payload.query:
        return f"query:{payload.query}"
    return f"session:{session_id}"


def kafka_key(event: RawEvent) -> bytes:
    """Everything the stream must see in order shares a key (so a partition)."""
    p = event.payload
    if isinstance(p, RankingOutcomePayload):
        key = f"{event.domain}/{p.seeker_id}"
    elif isinstance(p, CorrectionPayload):
        key = f"{event.domain}/{p.case_id}"
    elif isinstance(p, InferenceFeedbackEvent):
        key = p.id
    elif isinstance(p, ScoredOutputPayload):
        key = f"{event.domain}/{p.entry_id}"
    else:
        key = f"{event.domain}/{search_anchor(p, p.session_id)}"
    return key.encode()


def raw_records(topic: str, events: Sequence[RawEvent]) -> list[OutRecord]:
    """The Kafka records of one request's events, each stamped with how many the request became
    (so any reader of the stream's results, on any ingest, can tell when the request is complete)."""
    n = len(events)
    return [
        OutRecord(topic, kafka_key(e), encode(e.model_copy(update={"request_events": n})), kafka_headers(e))
        for e in events
    ]


def kafka_headers(event: RawEvent) -> list[tuple[str, bytes]]:
    return [
        ("correlation_id", event.correlation_id.encode()),
        ("request_id", event.request_id.encode()),
        ("event_id", event.event_id.encode()),
        ("contract", str(event.contract).encode()),
        ("tenant", event.tenant.encode()),
    ]
