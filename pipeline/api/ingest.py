"""The HTTP ingest: validate feedback of the five contracts and write it, durable, to ``feedback.raw``.

Thin by design: no training logic and no state beyond the tenants file, rate buckets and
idempotency answers. A request is answered only after Kafka acknowledged its events (one record:
an idempotent acks=all send; several: one transaction per group of requests, so a failure leaves
nothing half-written; :class:`pipeline.kafka.io.AckedWriter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from pipeline import contracts, gcpolicy, memtrace, metrics, tracing
from pipeline.api import answers, intake
from pipeline.api.contracts import TrainingReport
from pipeline.api.guards import IdempotencyConflict, IdempotencyStore, RateLimiter, RateState, StoredAnswer
from pipeline.api.intake import erasure_record, train_record
from pipeline.api.stream_view import StreamView
from pipeline.api.wording import describe_validation_error
from pipeline.ids import canonical_uuid, new_request_id
from pipeline.kafka.io import AckedWriter, OutRecord, PublishError, Writer
from pipeline.kafka.topics import ensure_topics, topic_names
from pipeline.limits import MAX_DOMAIN_CHARS, MAX_ID_CHARS
from pipeline.rules.counters import DomainCounter, trigger_id
from pipeline.settings import Settings, get_settings
from pipeline.store import sql as store_sql
from pipeline.store.sql import Database, ErasureRow, open_database
from pipeline.tenants import Tenant, TenantRegistry, load_tenants
from pipeline.wire.envelope import Contract, Envelope
from pipeline.wire.records import TrainingResult, to_builtins, to_json, training_id

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("pipeline.api.ingest")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: An unauthenticated (or rate-limited) request to POST /v1/feedback has its body read only if it
#: declares at most this many bytes, and then only to pick the error shape (seed 001's for a
#: correction); a bigger or chunked body is never read and gets the generic shape.
SHAPE_SNIFF_BYTES = 16 * 1024
#: On SIGTERM the listener stays open at least this long (bounded by DRAIN_TIMEOUT_S), answering
#: 503 DRAINING, before it closes.
DRAIN_GRACE_S = 1.0
#: Status counted for a request whose client went away before its answer (nginx's convention).
CLIENT_GONE = 499


class ApiError(Exception):
    """An error answer; rendered in the seed 001 shape for corrections, else the generic shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = headers or {}


@dataclass
class Call:
    """Per-request facts every handler and error path needs."""

    request_id: str
    correlation_id: str
    received_at: datetime
    contract: str | None = None
    tenant: Tenant | None = None
    rate: RateState | None = None
    #: W3C trace headers for the request's Kafka records (pipeline.tracing), set by a writing route
    trace: tracing.TraceHeaders | None = None


#: where the middleware leaves a request's :class:`Call` for its handler (a typed request key)
CALL = web.RequestKey("call", Call)


def json_response(status: int, data: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=headers
    )


def header_text(request: web.Request, name: str) -> str:
    """A header as valid text: bytes that are not UTF-8 arrive as lone surrogates, which no JSON
    answer, Kafka record or key hash can take; they become '?' instead of failing with a bare 500."""
    return request.headers.get(name, "").encode("utf-8", "replace").decode("utf-8")


def error_body(call: Call, err: ApiError) -> dict[str, Any]:
    """The error answer in the shape of the request's contract (seed 001's flat one for corrections)."""
    spec = contracts.CONTRACTS.get(call.contract) if call.contract else None
    if spec is not None and spec.error_shape == "seed001":
        return {
            "error_code": err.code,
            "message": err.message,
            "correlation_id": call.correlation_id,
            "request_id": call.request_id,
        }
    return {
        "error": {"code": err.code, "message": err.message, "details": err.details},
        "correlation_id": call.correlation_id,
        "request_id": call.request_id,
    }


#: aiohttp's own answers (unknown path, method not allowed...) by status; others are HTTP_ERROR.
HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
#: Headers of an aiohttp exception that describe its text body, which the JSON body replaces.
BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding"})


def http_error(call: Call, exc: web.HTTPException) -> web.Response:
    """aiohttp's HTTP exception as a JSON error, keeping its headers (405's ``Allow``, RFC 9110)."""
    err = ApiError(exc.status, HTTP_CODES.get(exc.status, "HTTP_ERROR"), exc.reason)
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in BODY_HEADERS}
    return json_response(exc.status, error_body(call, err), headers)


def in_contract_shape(call: Call, err: ApiError) -> ApiError:
    """The error with the code the request's contract uses (seed 001 names its own codes)."""
    spec = contracts.CONTRACTS.get(call.contract) if call.contract else None
    if spec is not None:
        err.code = spec.error_code(err.status, err.code)
    return err


def refusal(call: Call, refused: intake.Refused) -> ApiError:
    """The one place an intake refusal becomes an HTTP error: in its contract's shape and codes,
    counted in ``items_rejected`` when it rejects items."""
    if refused.contract is not None:
        call.contract = refused.contract
    label = call.contract or "unknown"
    for rej in refused.rejected:
        metrics.ITEMS_REJECTED.labels(label, rej.reason).inc()
    if refused.reason is not None:
        metrics.ITEMS_REJECTED.labels(label, refused.reason).inc()
    err = ApiError(refused.status, refused.code, refused.message, details=refused.details)
    return in_contract_shape(call, err)


class ConnectionCap:
    """At most ``limit`` open connections per client address.

    aiohttp has no such option, so this hooks the connection callbacks its ``web.Server`` gets
    from each connection's ``RequestHandler`` (``connection_made``/``connection_lost``): a
    connection over the cap is closed at once, before a byte of it is read.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}
        self._addr: dict[object, str] = {}

    def install(self, server: web.Server) -> None:
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            peer = transport.get_extra_info("peername")
            addr = str(peer[0]) if peer else "?"
            self._addr[handler] = addr
            self.open[addr] = self.open.get(addr, 0) + 1
            made(handler, transport)
            if self.open[addr] > self.limit:
                log.debug("connection from %s over the cap of %d: closed", addr, self.limit)
                transport.close()

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            addr = self._addr.pop(handler, None)
            if addr is not None:
                self.open[addr] -= 1
                if self.open[addr] <= 0:
                    del self.open[addr]
            lost(handler, exc)

        setattr(server, "connection_made", connection_made)  # noqa: B010 - instance hook, see docstring
        setattr(server, "connection_lost", connection_lost)  # noqa: B010


def instrument_aiohttp(provider: TracerProvider) -> None:
    """OpenTelemetry's aiohttp server instrumentation, as its package means it to be used: once per
    process (it replaces ``aiohttp.web.Application``), with the process's tracer provider."""
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

    instrumentor = AioHttpServerInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)


class Ingest:
    """The aiohttp application and what it holds."""

    def __init__(
        self,
        settings: Settings,
        tenants: TenantRegistry,
        writer: Writer,
        view: StreamView,
        store: Database | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        #: set (tracing.setup): a server span per request (the OpenTelemetry aiohttp middleware),
        #: whose context goes to Kafka; None: the caller's traceparent goes to Kafka as it came
        self.tracer_provider = tracer_provider
        self.store = store  # the feedback store (GET/DELETE /api/v1/feedback); serve() always opens one
        self.tenants = tenants
        self.writer = writer
        self.view = view
        self.topics = topic_names(settings)
        self.limiter = RateLimiter()
        self.auth_failures = RateLimiter()  # per client address
        self.connections = ConnectionCap(settings.max_connections_per_client)
        self.draining = False  # set on SIGTERM: new requests get 503 DRAINING (see serve)
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.idempotency = IdempotencyStore(
            settings.idempotency_ttl_s, max_bytes_per_tenant=settings.idempotency_max_bytes_per_tenant
        )

    async def start_http(self, host: str, port: int) -> tuple[web.AppRunner, int]:
        """Serve on ``host:port`` (0: any free port); returns the runner and the bound port.

        Idle keep-alive connections close after ``keepalive_timeout_s``; ``runner.cleanup()``
        drains: it stops listening, closes idle connections and waits up to ``drain_timeout_s`` for
        requests in flight to be answered.
        """
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            keepalive_timeout=self.settings.keepalive_timeout_s,
            shutdown_timeout=self.settings.drain_timeout_s,
        )
        await runner.setup()
        assert runner.server is not None
        self.connections.install(runner.server)
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        server = site._server  # the bound port, when asked for any
        sockets = getattr(server, "sockets", None) or []
        bound = int(sockets[0].getsockname()[1]) if sockets else port
        return runner, bound

    # -- plumbing ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        if self.tracer_provider is not None:
            instrument_aiohttp(self.tracer_provider)
        # instrumented: aiohttp's Application is the instrumentor's, which puts its middleware first
        # (a server span per request around ours, so it covers our error answers too)
        app = web.Application(middlewares=[self.middleware], client_max_size=self.settings.max_body_bytes + 1)
        app.router.add_post("/v1/feedback", self.post_feedback)
        app.router.add_post("/api/v1/feedback", self.post_scored)
        app.router.add_get("/api/v1/feedback", self.list_scored)
        app.router.add_delete("/api/v1/feedback/{entry_id}", self.delete_scored)
        app.router.add_post("/v1/train", self.post_train)
        app.router.add_get("/v1/domains/{domain:[^/]+}", self.get_domain)  # braces too ({uuid})
        app.router.add_post("/v1/domains/{domain:[^/]+}/trainings", self.post_training)
        app.router.add_get("/v1/requests/{request_id}", self.get_request)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/openapi.json", self.openapi)
        return app

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        call = Call(
            request_id=new_request_id(),
            correlation_id=header_text(request, "X-Correlation-Id").strip()[:200] or new_request_id()[4:],
            received_at=datetime.now(UTC),
        )
        request[CALL] = call
        route = (
            request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        )
        drain_exempt = request.path in ("/healthz", "/metrics")
        try:
            if self.draining and not drain_exempt:
                raise ApiError(
                    503,
                    "DRAINING",
                    "This ingest is shutting down; retry (another instance will answer).",
                    headers={"Retry-After": "1", "Connection": "close"},
                )
            self.in_flight += 1
            self.idle.clear()
            try:
                response = await handler(request)
            finally:
                self.in_flight -= 1
                if not self.in_flight:
                    self.idle.set()
        except ApiError as err:
            close = err.headers.pop("Connection", None) == "close"
            response = json_response(err.status, error_body(call, err), err.headers)
            if close:  # the body was left unread: do not keep the connection (nor drain it)
                response.force_close()
        except web.HTTPException as exc:
            response = http_error(call, exc)
        except ConnectionResetError:  # the client went away (aiohttp's ClientConnectionResetError too)
            log.debug("client went away (request %s)", call.request_id)
            metrics.child(metrics.HTTP_REQUESTS, route, request.method, str(CLIENT_GONE)).inc()
            response = web.Response(status=CLIENT_GONE)  # nobody reads it; aiohttp drops it quietly
            response.force_close()
            return response
        except Exception:
            log.exception("unexpected error (request %s)", call.request_id)
            internal = ApiError(500, "INTERNAL_ERROR", "An unexpected error occurred.")
            response = json_response(500, error_body(call, internal))
        response.headers["X-Correlation-Id"] = call.correlation_id
        response.headers["X-Request-Id"] = call.request_id
        if call.rate is not None:
            response.headers["X-RateLimit-Limit"] = str(call.rate.limit_rps)
            response.headers["X-RateLimit-Remaining"] = str(call.rate.remaining)
            response.headers["X-RateLimit-Reset"] = call.rate.reset_at
        metrics.child(metrics.HTTP_REQUESTS, route, request.method, str(response.status)).inc()
        metrics.child(metrics.HTTP_LATENCY, route).observe(time.perf_counter() - started)
        return response

    async def read_body(self, request: web.Request, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes (413 past it), within ``body_read_timeout_s`` (408)."""
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, "PAYLOAD_TOO_LARGE", f"Body exceeds {limit} bytes.")
        content = request.content
        if content.is_eof():  # all of it arrived with the headers (small bodies): no timer, no loop
            body = content.read_nowait(-1)
            if len(body) > limit:
                raise ApiError(413, "PAYLOAD_TOO_LARGE", f"Body exceeds {limit} bytes.")
            return body
        # StreamReader.read(n) returns what has arrived (up to n bytes), not n bytes: read to EOF
        buf = bytearray()
        try:
            async with asyncio.timeout(self.settings.body_read_timeout_s):
                while len(buf) <= limit:
                    chunk = await request.content.read(limit + 1 - len(buf))
                    if not chunk:
                        break
                    buf += chunk
        except TimeoutError:
            raise ApiError(
                408,
                "REQUEST_TIMEOUT",
                f"The body was not received within {self.settings.body_read_timeout_s:g} s.",
                headers={"Connection": "close"},
            ) from None
        if len(buf) > limit:
            raise ApiError(413, "PAYLOAD_TOO_LARGE", f"Body exceeds {limit} bytes.")
        return bytes(buf)

    async def read_json(self, request: web.Request) -> tuple[bytes, Any]:
        body = await self.read_body(request, self.settings.max_body_bytes)
        try:
            return body, orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "INVALID_JSON", f"Body is not valid JSON: {exc}") from None

    @staticmethod
    def check_edge(call: Call, body: Any) -> None:
        """:func:`pipeline.api.intake.check_edge` (depth), answered in the contract's shape."""
        try:
            intake.check_edge(body)
        except intake.Refused as r:
            raise refusal(call, r) from None

    async def sniff_contract(self, request: web.Request, route: str) -> str | None:
        """Which contract an unauthenticated POST body is, only to answer in its error shape: read
        only if it declares at most SHAPE_SNIFF_BYTES, never validated, never written."""
        length = request.content_length
        if length is None or length > SHAPE_SNIFF_BYTES:
            return None
        try:
            body = orjson.loads(await self.read_body(request, SHAPE_SNIFF_BYTES))
        except (ApiError, orjson.JSONDecodeError):
            return None
        return contracts.sniff(body, contracts.on_route(route))

    def authenticate(self, request: web.Request, call: Call) -> Tenant:
        """From the headers only (no body is read before this). 401s are throttled per client
        address: past ``auth_failures_per_s`` the answer is 429 without even hashing the key."""
        auth = header_text(request, "Authorization")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else header_text(request, "X-API-Key").strip()
        tenant = self.tenants.authenticate(key) if key else None
        if tenant is None:
            failures = self.auth_failures.take(request.remote or "?", self.settings.auth_failures_per_s)
            if not failures.allowed:
                raise ApiError(
                    429,
                    "TOO_MANY_AUTH_FAILURES",
                    "Too many requests with a missing or invalid API key from this address.",
                    headers={"Retry-After": str(failures.retry_after_s), "Connection": "close"},
                )
            if not key:
                raise ApiError(
                    401,
                    "UNAUTHENTICATED",
                    "Missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'.",
                )
            raise ApiError(401, "UNAUTHENTICATED", "Invalid API key.")
        call.tenant = tenant
        call.rate = self.limiter.take(key, tenant.rate_limit_rps)
        if not call.rate.allowed:
            raise ApiError(
                429,
                "RATE_LIMITED",
                f"Rate limit of {tenant.rate_limit_rps} requests/s exceeded.",
                headers={"Retry-After": str(call.rate.retry_after_s)},
            )
        return tenant

    def context(self, call: Call) -> intake.Context:
        assert call.tenant is not None
        return intake.Context(call.tenant, call.request_id, call.correlation_id, call.received_at)

    def trace_headers(self, request: web.Request) -> tracing.TraceHeaders:
        """The request's trace context for Kafka: the server span's when tracing is on (a child of
        the caller's), else the caller's ``traceparent``/``tracestate`` as they came (if valid)."""
        if self.tracer_provider is not None:
            return tracing.from_context()
        return tracing.from_http(request.headers)

    async def write(self, events: list[Envelope], trace: tracing.TraceHeaders | None = None) -> None:
        records = contracts.request_records(self.topics.raw, events, trace or ())
        await self.write_records(records)
        metrics.child(metrics.RAW_PUBLISHED, "http").inc(len(events))

    async def write_records(self, records: list[OutRecord]) -> None:
        try:
            await self.writer.write(records)
        except PublishError as exc:
            raise ApiError(
                503,
                "UNAVAILABLE",
                f"Feedback could not be stored, nothing was written; retry. ({exc})",
                headers={"Retry-After": "1"},
            ) from None

    async def idempotent(
        self, request: web.Request, call: Call, body: bytes, produce: Callable[[], Awaitable[web.Response]]
    ) -> web.Response:
        """Answer a retry with the first answer; only successful answers are remembered."""
        key = header_text(request, "Idempotency-Key")
        if not key or call.tenant is None:
            return await produce()
        if len(key) > MAX_ID_CHARS:
            raise ApiError(
                400, "INVALID_REQUEST", f"Idempotency-Key is longer than {MAX_ID_CHARS} characters."
            )
        scope = (call.tenant.id, request.path, key)
        try:
            earlier = self.idempotency.claim(scope, body)
        except IdempotencyConflict:
            raise ApiError(
                422, "IDEMPOTENCY_CONFLICT", "Idempotency-Key was already used with a different body."
            ) from None
        if earlier is not None:
            try:
                stored = await earlier
            except asyncio.CancelledError:
                return await self.idempotent(request, call, body, produce)
            return web.Response(status=stored.status, body=stored.body, headers=stored.headers)
        answer: StoredAnswer | None = None
        try:
            response = await produce()
            if response.status < 500 and isinstance(response.body, bytes):
                answer = StoredAnswer(
                    response.status,
                    response.body,
                    {"Content-Type": response.content_type, "Idempotent-Replayed": "true"},
                )
            return response
        finally:
            self.idempotency.finish(scope, answer)

    # -- routes -----------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        fenced: str | None = getattr(self.writer, "fenced", None)
        if fenced:
            return json_response(503, {"status": "unhealthy", "reason": fenced})
        if self.draining:
            return json_response(503, {"status": "draining"})
        return json_response(200, {"status": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE_LATEST})

    async def openapi(self, request: web.Request) -> web.Response:
        from pipeline.api.openapi import openapi_document, router_operations

        return json_response(200, openapi_document(router_operations(request.app.router)))

    async def post_feedback(self, request: web.Request) -> web.Response:
        """``POST /v1/feedback`` (seeds 000, 001, 002, 004, told apart by the registry)."""
        return await self.post_contract(request, contracts.FEEDBACK_ROUTE)

    async def post_scored(self, request: web.Request) -> web.Response:
        """``POST /api/v1/feedback`` (seed 003)."""
        return await self.post_contract(request, contracts.SCORED_ROUTE)

    async def post_contract(self, request: web.Request, route: str) -> web.Response:
        """Every contract's POST alike: authenticate, accept (the registry's one intake), then write
        and answer as the contract says; errors take the contract's shape once it is known."""
        call = request[CALL]
        on_route = contracts.on_route(route)
        if len(on_route) == 1:
            call.contract = on_route[0].name
        try:
            self.authenticate(request, call)
        except ApiError as err:
            if call.contract is None and err.code != "TOO_MANY_AUTH_FAILURES":
                call.contract = await self.sniff_contract(request, route)
            raise in_contract_shape(call, err) from None
        raw, body = await self.read_json(request)
        hints = intake.Hints(
            headers={"X-Session-ID": header_text(request, "X-Session-ID")},
            max_items=self.settings.max_items_per_request,
        )
        try:
            accepted = contracts.accept(self.context(call), body, route=route, hints=hints)
        except intake.Refused as r:
            raise refusal(call, r) from None
        call.contract = accepted.contract.name
        call.trace = self.trace_headers(request)
        try:
            return await self.idempotent(request, call, raw, lambda: self.deliver(call, accepted))
        except ApiError as err:
            raise in_contract_shape(call, err) from None

    async def deliver(self, call: Call, accepted: contracts.Accepted) -> web.Response:
        """Write an accepted request's events, then answer as its contract says (seed 000 waits,
        bounded, for the stream's counts)."""
        spec, result = accepted.contract, accepted.intake
        waiting = self.view.expect(call.request_id, len(result.events)) if spec.waits_for_results else None
        try:
            await self.write(result.events, call.trace)
        except ApiError:
            if waiting is not None:
                self.view.forget(call.request_id)
            raise
        metrics.child(metrics.ITEMS_ACCEPTED, spec.name).inc(result.accepted_count())
        for rej in result.rejected:
            metrics.ITEMS_REJECTED.labels(spec.name, rej.reason).inc()
        results = None
        if waiting is not None:
            results = await self.view.wait(call.request_id, waiting, self.settings.result_wait_s)
        answer = spec.answer(answers.Answering(self.context(call), result, results, call.rate))
        return json_response(answer.status, answer.body)

    async def post_train(self, request: web.Request) -> web.Response:
        """Force a trigger (seed 000's ``POST /train``), ordered with the domain's counts."""
        call = request[CALL]
        tenant = self.authenticate(request, call)
        raw, body = await self.read_json(request)
        self.check_edge(call, body)
        domain = body.get("domain") if isinstance(body, dict) else None
        if not isinstance(domain, str) or not domain or set(body) - {"domain"}:
            raise ApiError(400, "INVALID_REQUEST", 'Body must be {"domain": "<domain>"}.')
        domain = self.owned_domain(tenant, domain, "train")
        call.trace = self.trace_headers(request)
        return await self.idempotent(request, call, raw, lambda: self.train(call, tenant, domain))

    @staticmethod
    def owned_domain(tenant: Tenant, domain: str, verb: str) -> str:
        """The domain as the stream keys it (a task id canonical, pipeline.ids), if the tenant owns it."""
        if len(domain) > MAX_DOMAIN_CHARS:
            raise ApiError(400, "INVALID_REQUEST", f"Domain is longer than {MAX_DOMAIN_CHARS} characters.")
        canon = canonical_uuid(domain)
        if canon is not None and tenant.task(canon) is not None:
            return canon
        if domain not in tenant.domains:
            raise ApiError(
                403, "SCOPE_INSUFFICIENT", f"Tenant '{tenant.id}' may not {verb} domain '{domain}'."
            )
        return domain

    async def train(self, call: Call, tenant: Tenant, domain: str) -> web.Response:
        record = train_record(
            self.topics.units,
            request_id=call.request_id,
            tenant=tenant.id,
            domain=domain,
            requested_at=call.received_at,
            headers=call.trace or (),
        )
        waiting = self.view.expect(call.request_id, 1)
        try:
            await self.write_records([record])
        except ApiError:
            self.view.forget(call.request_id)
            raise
        results = await self.view.wait(call.request_id, waiting, self.settings.result_wait_s)
        if results is None:
            return json_response(
                202,
                {
                    "accepted": True,
                    "status": "processing",
                    "request_id": call.request_id,
                    "results_url": f"/v1/requests/{call.request_id}",
                },
            )
        result = results[0]
        if not result.triggers:
            return json_response(
                200,
                {
                    "triggered": False,
                    "reason": "nothing_pending",
                    "domain": domain,
                    "pending": result.pending,
                    "request_id": call.request_id,
                },
            )
        trigger = to_builtins(result.triggers[0])
        return json_response(
            200, {"triggered": True, "domain": domain, "request_id": call.request_id, "trigger": trigger}
        )

    def counter(self, domain: str) -> DomainCounter:
        """A domain's counter from the count stage's changelog; 503 NOT_READY until the view has read
        it to where it ended at start (counts would be wrong before)."""
        if not self.view.caught_up.is_set():
            raise ApiError(
                503,
                "NOT_READY",
                "The ingest is still reading the domain counters; retry shortly.",
                headers={"Retry-After": "1"},
            )
        return self.view.domains.get(domain) or DomainCounter()

    async def get_domain(self, request: web.Request) -> web.Response:
        """Pending, threshold, total and last trigger of a domain, from the counting stage's changelog."""
        call = request[CALL]
        tenant = self.authenticate(request, call)
        domain = self.owned_domain(tenant, request.match_info["domain"], "read")
        counter = self.counter(domain)
        last = to_builtins(counter.last_trigger) if counter.last_trigger else None
        training = self.view.trainings.get(domain)
        return json_response(
            200,
            {
                "domain": domain,
                "pending": counter.pending,
                "threshold": tenant.threshold_for(domain),
                "total": counter.total,
                "sequence": counter.sequence,
                "last_trigger": last,
                "last_training": to_builtins(training) if training else None,
            },
        )

    async def post_training(self, request: web.Request) -> web.Response:
        """A trainer reports that it trained on one of the domain's triggers: written durably to
        ``train.completed`` (keyed by domain), shown by ``GET /v1/domains/{domain}`` and
        ``feedstream status``. The same report again is the same ``training_id`` (idempotent)."""
        call = request[CALL]
        tenant = self.authenticate(request, call)
        raw, body = await self.read_json(request)
        self.check_edge(call, body)
        domain = self.owned_domain(tenant, request.match_info["domain"], "report trainings of")
        try:
            report = TrainingReport.model_validate(body)
        except ValidationError as err:
            raise ApiError(400, "INVALID_REQUEST", describe_validation_error(err)) from None
        counter = self.counter(domain)  # the triggers are known from the counters' changelog
        if report.sequence > counter.sequence:
            raise ApiError(
                404,
                "TRIGGER_NOT_FOUND",
                f"Domain '{domain}' has no trigger {report.sequence} (its last is {counter.sequence}).",
            )
        expected = trigger_id(domain, report.sequence)
        if report.trigger_id is not None and report.trigger_id != expected:
            raise ApiError(
                422,
                "TRIGGER_MISMATCH",
                f"Trigger {report.sequence} of '{domain}' is '{expected}', not '{report.trigger_id}'.",
            )
        return await self.idempotent(
            request, call, raw, lambda: self.record_training(call, tenant, domain, report)
        )

    async def record_training(
        self, call: Call, tenant: Tenant, domain: str, report: TrainingReport
    ) -> web.Response:
        tid = trigger_id(domain, report.sequence)
        result = TrainingResult(
            training_id=training_id(domain, tid, report.model_version),
            domain=domain,
            trigger_id=tid,
            sequence=report.sequence,
            model_version=report.model_version,
            metrics=report.metrics,
            tenant=tenant.id,
            completed_at=report.completed_at or call.received_at,
            reported_at=call.received_at,
        )
        await self.write_records([OutRecord(self.topics.trainings, domain.encode(), to_json(result), [])])
        return json_response(201, to_builtins(result))

    async def get_request(self, request: web.Request) -> web.Response:
        """Where a 202 points: what the stream has answered so far for a request."""
        call = request[CALL]
        tenant = self.authenticate(request, call)
        request_id = request.match_info["request_id"]
        status = self.view.request_status(request_id)
        results = [r for r in status.results if tenant.owns_domain(r.domain)] if status else []
        if status is None or not results:
            raise ApiError(404, "NOT_FOUND", f"No stream result for request '{request_id}' (yet).")
        return json_response(
            200,
            {
                "request_id": request_id,
                # every raw event of the request (all its chunks) has its result; false while this
                # instance does not know how many events the request had
                "complete": status.complete and len(results) == len(status.results),
                "triplets_generated": sum(r.units_generated for r in results),
                "triplets_pending_train": results[-1].pending,
                "results": [to_builtins(r) for r in results],
            },
        )

    # -- the feedback store (seed 003's list; issue 10) ---------------------------------------------

    def require_store(self) -> Database:
        if self.store is None:
            raise ApiError(503, "STORE_UNAVAILABLE", "This ingest has no feedback store.")
        return self.store

    async def list_scored(self, request: web.Request) -> web.Response:
        """Seed 003's ``GET /api/v1/feedback``: the caller's entries, newest first, as a JSON array."""
        call = request[CALL]
        call.contract = Contract.SCORED_OUTPUT
        tenant = self.authenticate(request, call)
        task_id, limit, offset = list_query(request)
        db = self.require_store()
        docs = await store_sql.list_entries(db, tenant.id, task_id, limit, offset)
        return web.Response(status=200, body=b"[" + b",".join(docs) + b"]", content_type="application/json")

    async def delete_scored(self, request: web.Request) -> web.Response:
        """Erase one of the caller's entries: an erasure on Kafka (trainers, the store stage), then
        the row is removed and a deleted marker kept (a replay of the entry never brings it back)."""
        call = request[CALL]
        call.contract = Contract.SCORED_OUTPUT
        tenant = self.authenticate(request, call)
        db = self.require_store()
        raw_id = request.match_info["entry_id"]
        entry_id = canonical_uuid(raw_id)
        doc = None if entry_id is None else await store_sql.get_entry(db, tenant.id, entry_id)
        if entry_id is None or doc is None:
            raise ApiError(404, "NOT_FOUND", f"No feedback entry '{raw_id[:64]}' (or not listed yet).")
        task_id = str(orjson.loads(doc)["task_id"])
        await self.write_records(
            [
                erasure_record(
                    self.topics.erasures,
                    tenant=tenant.id,
                    entry_id=entry_id,
                    task_id=task_id,
                    request_id=call.request_id,
                    correlation_id=call.correlation_id,
                )
            ]
        )
        # on Kafka first: if this fails now, the store stage applies the erasure from the topic
        await store_sql.erase(db, ErasureRow(entry_id, tenant.id, int(time.time() * 1_000_000)))
        return web.Response(status=204)


LIST_PARAMS = frozenset({"task_id", "limit", "offset"})
_MAX_OFFSET = 2**63 - 1


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    values = request.query.getall(name, [])
    if not values:
        return default
    text = values[0]
    ok = len(values) == 1 and text.isascii() and text.isdigit() and len(text) <= 19
    if not ok or not low <= int(text) <= high:
        message = f"'{name}' must be one integer from {low} to {high}."
        raise ApiError(422, "INVALID_QUERY", message, details={name: text[:64]})
    return int(text)


def list_query(request: web.Request) -> tuple[str | None, int, int]:
    """``task_id`` (canonical UUID or None), ``limit`` (1-1000, default 100), ``offset`` (>= 0)."""
    unknown = sorted(set(request.query) - LIST_PARAMS)
    if unknown:
        raise ApiError(
            422,
            "INVALID_QUERY",
            f"Unknown query parameter(s): {', '.join(u[:64] for u in unknown[:5])}; "
            "known: task_id, limit, offset.",
        )
    limit = _int_param(request, "limit", store_sql.DEFAULT_LIMIT, 1, store_sql.MAX_LIMIT)
    offset = _int_param(request, "offset", 0, 0, _MAX_OFFSET)
    tasks = request.query.getall("task_id", [])
    if not tasks:
        return None, limit, offset
    task_id = canonical_uuid(tasks[0]) if len(tasks) == 1 else None
    if task_id is None:
        raise ApiError(
            422, "INVALID_QUERY", "'task_id' must be one UUID.", details={"task_id": tasks[0][:64]}
        )
    return task_id, limit, offset


async def serve(settings: Settings) -> None:
    """Run until cancelled: topics, the writer, then HTTP."""
    bootstrap = settings.kafka_bootstrap_servers
    if not bootstrap:
        raise SystemExit("KAFKA_BOOTSTRAP_SERVERS is not set (make run and the tests set it for you)")
    tenants = load_tenants(settings.tenants_file)
    await ensure_topics(bootstrap, settings)
    writer = AckedWriter(
        bootstrap,
        transactional_id=settings.ingest_instance,
        timeout_s=settings.produce_timeout_s,
        lanes=settings.ingest_writer_lanes,
    )
    await writer.start()
    view = StreamView(
        bootstrap,
        topic_names(settings),
        owner_of=tenants.owner_of,
        max_bytes_per_tenant=settings.view_max_bytes_per_tenant,
    )
    await view.start()
    store = await open_database(settings)  # the same database the worker's store stage writes
    provider = tracing.setup("feedstream-ingest")
    ingest = Ingest(settings, tenants, writer, view, store, tracer_provider=provider)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner, _ = await ingest.start_http(settings.ingest_host, settings.ingest_port)
    gcpolicy.tune("ingest", enabled=settings.gc_tuned)
    log.info(
        "ingest %s listening on http://%s:%d",
        settings.ingest_instance,
        settings.ingest_host,
        settings.ingest_port,
    )
    try:
        await stop.wait()
        ingest.draining = True
        log.info(
            "draining: new requests get 503; finishing those in flight (up to %gs)", settings.drain_timeout_s
        )
    finally:
        # order matters: answer (and so commit) every request in flight, then close what they used.
        # The listener stays open meanwhile: new requests get a quick 503 DRAINING with
        # Connection: close rather than a reset from a closed listener's accept queue.
        ingest.draining = True
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ingest.idle.wait(), settings.drain_timeout_s)
        # keep answering 503 a moment, so clients and load balancers learn before the listener
        # closes (a connection still in a closed listener's accept queue is reset by the kernel)
        grace = min(DRAIN_GRACE_S, settings.drain_timeout_s) - (time.monotonic() - started)
        if grace > 0:
            await asyncio.sleep(grace)
        await runner.cleanup()
        await writer.stop(drain_s=max(0.0, settings.drain_timeout_s - (time.monotonic() - started)))
        await view.stop()
        await store.close()
        if provider is not None:
            provider.shutdown()  # flush the spans still batched
        log.info("ingest stopped after draining for %.2fs", time.monotonic() - started)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
    )
    memtrace.maybe_start("ingest")
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT/SIGTERM drain inside serve()
        asyncio.run(serve(get_settings()))


if __name__ == "__main__":
    main()
