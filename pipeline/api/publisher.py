"""The publisher library: services that already speak Kafka write feedback straight to ``feedback.raw``.

Same contracts, same validation, same envelope as the HTTP ingest (both use :mod:`pipeline.api.intake`),
so the stream cannot tell the two paths apart except by ``origin``. Writes are transactional
(all events of one call or none) and acknowledged (acks=all) before ``publish`` returns::

    async with FeedbackPublisher(bootstrap, load_tenants(path), tenant_id="acme") as pub:
        result = await pub.publish({"domain": "dating", "items": [...]})
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from pipeline.api import intake
from pipeline.api.contracts import (
    ClassifyOutcome,
    Contract,
    CorrectionRequest,
    InferenceFeedbackResult,
    RankingOutcomeRequest,
    ScoredOutputRequest,
    SearchEventRequest,
    classify,
    describe_validation_error,
)
from pipeline.ids import new_request_id
from pipeline.kafka.io import TransactionalWriter
from pipeline.kafka.topics import topic_names
from pipeline.settings import Settings
from pipeline.tenants import TenantRegistry
from pipeline.wire import envelope


class PublishRejected(ValueError):
    """Nothing was written: the body breaks its contract or the tenant's rights."""

    def __init__(self, message: str, *, status: int = 400, code: str = "INVALID_REQUEST") -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class PublishResult:
    request_id: str
    correlation_id: str
    contract: Contract
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
        self.writer = TransactionalWriter(
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
        contract: Contract | None = None,
        correlation_id: str | None = None,
        session_id: str | None = None,
    ) -> tuple[intake.Intake, PublishResult]:
        """Pure part of ``publish``: validate and build the envelopes (raises PublishRejected)."""
        ctx = intake.Context(
            self.tenant,
            new_request_id(),
            correlation_id or new_request_id()[4:],
            datetime.now(UTC),
            origin="publisher",
        )
        try:
            intake.check_edge(body)  # the same shape checks as the HTTP ingest
            if contract is Contract.SCORED_OUTPUT:
                result = intake.scored_output(ctx, ScoredOutputRequest.model_validate(body))
                return result, self._result(ctx, Contract.SCORED_OUTPUT, result)
            found = classify(body)
            if found.outcome is not ClassifyOutcome.MATCHED or found.contract is None:
                raise PublishRejected(found.message)
            if contract is not None and found.contract is not contract:
                raise PublishRejected(f"Body is a {found.contract} request, not {contract}.")
            if found.contract is Contract.INFERENCE_FEEDBACK:
                result, pending = intake.inference_feedback(ctx, body)
                res = self._result(ctx, found.contract, result)
                return result, PublishResult(
                    **{**res.__dict__, "inference_results": intake.inference_results(result, pending)}
                )
            if found.error is not None:
                raise PublishRejected(describe_validation_error(found.error))
            model = found.model
            if isinstance(model, RankingOutcomeRequest):
                result = intake.ranking_outcomes(ctx, model)
                if not result.events:
                    raise PublishRejected(
                        "No item of the request is valid: " + "; ".join(r.message for r in result.rejected)
                    )
            elif isinstance(model, CorrectionRequest):
                result = intake.correction(ctx, model)
            elif isinstance(model, SearchEventRequest):
                result = intake.search_event(ctx, model, session_id)
            else:  # pragma: no cover - classify only matches the contracts above
                raise PublishRejected("unsupported contract")
            return result, self._result(ctx, found.contract, result)
        except ValidationError as err:
            raise PublishRejected(describe_validation_error(err), status=422) from None
        except intake.Refused as r:
            raise PublishRejected(r.message, status=r.status, code=r.code) from None

    async def publish(
        self,
        body: Any,
        *,
        contract: Contract | None = None,
        correlation_id: str | None = None,
        session_id: str | None = None,
    ) -> PublishResult:
        """Validate, then write atomically; returns once Kafka acknowledged (PublishError if not)."""
        result, answer = self.plan(
            body, contract=contract, correlation_id=correlation_id, session_id=session_id
        )
        await self.writer.write(envelope.raw_records(self.topic, result.events))
        return answer

    @staticmethod
    def _result(ctx: intake.Context, contract: Contract, result: intake.Intake) -> PublishResult:
        return PublishResult(
            ctx.request_id,
            ctx.correlation_id,
            contract,
            [e.event_id for e in result.events],
            list(result.rejected),
        )
