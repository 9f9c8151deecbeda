"""The publisher library: services that already speak Kafka write feedback straight to ``feedback.raw``.

Same contracts, same validation, same envelope as the HTTP ingest (both go through
:func:`pipeline.contracts.accept`),
so the stream cannot tell the two paths apart except by ``origin``. Writes are atomic (all events
of one call or none: one event is an idempotent send, several a transaction, as on the ingest)
and acknowledged (acks=all) before ``publish`` returns. The current OpenTelemetry span's context
(W3C ``traceparent``/``tracestate``) goes on the records' headers, so the stream keeps the caller's
trace::

    async with FeedbackPublisher(bootstrap, load_tenants(path), tenant_id="acme") as pub:
        result = await pub.publish({"domain": "dating", "items": [...]})
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from pipeline import contracts, tracing
from pipeline.api import intake
from pipeline.api.answers import item_results
from pipeline.api.contracts import InferenceFeedbackResult
from pipeline.ids import new_request_id
from pipeline.kafka.io import AckedWriter
from pipeline.kafka.topics import topic_names
from pipeline.settings import Settings
from pipeline.tenants import TenantRegistry


class PublishRejected(ValueError):
    """Nothing was written: the body breaks its contract or the tenant's rights."""

    def __init__(self, message: str, *, status: int = 400, code: str = "INVALID_REQUEST") -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class PublishResult:
    request_id: str
    correlation_id: str
    contract: str
    event_ids: list[str]
    rejected: list[intake.ItemRejection] = field(default_factory=list)
    inference_results: list[InferenceFeedbackResult] | None = None


class FeedbackPublisher:
    """Validate and publish feedback of one tenant (identified by id, not by API key)."""

    def __init__(
        self,
        bootstrap: str,
        tenants: TenantRegistry,
        tenant_id: str,
        *,
        settings: Settings | None = None,
        transactional_id: str | None = None,
    ) -> None:
        tenant = tenants.tenant(tenant_id)
        if tenant is None:
            raise KeyError(f"unknown tenant '{tenant_id}'")
        self.tenant = tenant
        self.settings = settings or Settings(kafka_bootstrap_servers=bootstrap)
        self.topic = topic_names(self.settings).raw
        self.writer = AckedWriter(
            bootstrap,
            transactional_id=transactional_id or f"publisher-{tenant_id}-{uuid.uuid4().hex[:12]}",
            timeout_s=self.settings.produce_timeout_s,
        )

    async def __aenter__(self) -> FeedbackPublisher:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.writer.start()

    async def stop(self) -> None:
        await self.writer.stop()

    def plan(
        self,
        body: Any,
        *,
        contract: str | None = None,
        correlation_id: str | None = None,
        session_id: str | None = None,
    ) -> tuple[intake.Intake, PublishResult]:
        """Pure part of ``publish``: validate and build the events (raises PublishRejected)."""
        ctx = intake.Context(
            self.tenant,
            new_request_id(),
            correlation_id or new_request_id()[4:],
            datetime.now(UTC),
            origin="publisher",
        )
        hints = intake.Hints(headers={"X-Session-ID": session_id} if session_id else {})
        try:
            accepted = contracts.accept(ctx, body, contract=contract, hints=hints)
        except intake.Refused as r:
            message = r.message
            if r.rejected:  # say which items failed, as the HTTP answer's details do
                message = message.rstrip(".") + ": " + "; ".join(x.message for x in r.rejected)
            raise PublishRejected(message, status=r.status, code=r.code) from None
        result = accepted.intake
        return result, PublishResult(
            ctx.request_id,
            ctx.correlation_id,
            accepted.contract.name,
            [e.event_id for e in result.events],
            list(result.rejected),
            item_results(result) if accepted.contract.array else None,
        )

    async def publish(
        self,
        body: Any,
        *,
        contract: str | None = None,
        correlation_id: str | None = None,
        session_id: str | None = None,
    ) -> PublishResult:
        """Validate, then write atomically; returns once Kafka acknowledged (PublishError if not)."""
        result, answer = self.plan(
            body, contract=contract, correlation_id=correlation_id, session_id=session_id
        )
        # the caller's current span (if its OpenTelemetry SDK has one): the records join its trace
        await self.writer.write(contracts.request_records(self.topic, result.events, tracing.from_context()))
        return answer
