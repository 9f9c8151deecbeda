"""The ingest's OpenAPI 3.1 document, generated from the same pydantic models that validate.

The paths come from the app's router (:func:`router_operations`): :data:`OPERATIONS` says what each
route takes and answers, and a route without an entry there cannot be documented (a test asserts
the router and the document name the same operations). Every status an operation can answer is
listed, with the error codes behind it. Two answers are not per operation: 405 (a method the path
does not have; JSON in the generic shape, with ``Allow``) and 404 for an unknown path. HEAD is
aiohttp's implicit twin of every GET and is not listed (as OPTIONS, it is answered by the framework).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from pipeline.api.contracts import (
    CorrectionError,
    ErrorBody,
    ScoredOutputRequest,
    ScoredOutputResponse,
    TrainingReport,
)
from pipeline.contracts import CONTRACTS, FEEDBACK_ROUTE, ContractSpec, on_route
from pipeline.limits import MAX_DOMAIN_CHARS, MAX_ID_CHARS
from pipeline.wire.records import TrainingResult, struct_json_schema


def _models() -> tuple[type[BaseModel], ...]:
    """The components: every registered contract's request and answer models, and the error shapes."""
    models: list[type[BaseModel]] = []
    for spec in CONTRACTS.values():
        models += [spec.request] if spec.response is None else [spec.request, spec.response]
        if spec.error_shape == "seed001":
            models.append(CorrectionError)
    return (*dict.fromkeys(models), ErrorBody)


#: Methods the framework answers for every path; not operations of the document.
IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})

Operation = tuple[str, str]  # (method in lower case, path template as OpenAPI writes it)


def router_operations(router: web.UrlDispatcher) -> tuple[Operation, ...]:
    """The app's routes as (method, path) pairs: the one source of the document's paths."""
    found = {
        (route.method.lower(), route.resource.canonical)
        for route in router.routes()
        if route.resource is not None and route.method not in IMPLICIT_METHODS
    }
    return tuple(sorted(found))


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _examples(*models: type[BaseModel]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in models:
        extra = m.model_config.get("json_schema_extra")
        examples = extra.get("examples", []) if isinstance(extra, dict) else []
        for i, ex in enumerate(examples if isinstance(examples, list) else []):
            out[f"{m.__name__}_{i}"] = {"value": ex}
    return out


def _json(schema: dict[str, Any], examples: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"schema": schema}
    if examples:
        body["examples"] = examples
    return {"content": {"application/json": body}}


# --- answers every operation shares ------------------------------------------------------------------

_STRING: dict[str, Any] = {"schema": {"type": "string"}}
#: On every answer (the middleware sets them), so clients can quote them in a support request.
_TRACE_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-Id": {"description": "This request's id (req_...).", "required": True, **_STRING},
    "X-Correlation-Id": {
        "description": "The caller's X-Correlation-Id (cut to 200 characters), else a new id.",
        "required": True,
        **_STRING,
    },
}
_RATE_HEADERS = {
    name: {"description": what, **_STRING}
    for name, what in (
        ("X-RateLimit-Limit", "The key's requests per second (authenticated requests)."),
        ("X-RateLimit-Remaining", "Requests left in the key's bucket now."),
        ("X-RateLimit-Reset", "When the bucket is full again (RFC 3339)."),
    )
}
_RETRY_AFTER: dict[str, Any] = {"description": "Seconds to wait before retrying.", **_STRING}

GENERIC = _ref(ErrorBody)
#: POST /v1/feedback answers a correction (seed 001) in its own flat shape, the rest generically.
CORRECTION_OR_GENERIC = {"oneOf": [_ref(ErrorBody), _ref(CorrectionError)]}

#: Per status: what it means, and its codes; an operation lists the statuses it can answer.
ERRORS: dict[str, str] = {
    "400": "Bad request",
    "401": "Missing or invalid API key: UNAUTHENTICATED",
    "403": "The tenant may not use this domain: SCOPE_INSUFFICIENT",
    "404": "Not found",
    "408": "The body did not arrive within BODY_READ_TIMEOUT_S: REQUEST_TIMEOUT (connection closed)",
    "413": "Too large",
    "422": "Unprocessable",
    "429": "Too many requests: RATE_LIMITED (the key's rate), TOO_MANY_AUTH_FAILURES (401s from this "
    "address; connection closed)",
    "500": "Unexpected error: INTERNAL_ERROR",
    "503": "Unavailable, retry: DRAINING (this instance is shutting down)",
}
_BODY_400 = "INVALID_JSON, TOO_DEEP (nesting), INVALID_REQUEST (Idempotency-Key too long)"
_BODY_413 = "PAYLOAD_TOO_LARGE (MAX_BODY_BYTES)"
_WRITE_503 = "UNAVAILABLE (Kafka did not acknowledge within PRODUCE_TIMEOUT_S; nothing written)"


def _error(status: str, shape: dict[str, Any], detail: str | None = None) -> dict[str, Any]:
    text = ERRORS[status] if detail is None else f"{ERRORS[status]}: {detail}"
    headers = dict(_TRACE_HEADERS)
    if status == "429":
        headers["Retry-After"] = {**_RETRY_AFTER, "required": True}
    if status == "503":
        headers["Retry-After"] = _RETRY_AFTER
    return {"description": text, "headers": headers, **_json(shape)}


def _ok(description: str, body: dict[str, Any] | None = None, *, rate: bool = True) -> dict[str, Any]:
    headers: dict[str, Any] = dict(_TRACE_HEADERS)
    if rate:
        headers.update(_RATE_HEADERS)
        headers["Idempotent-Replayed"] = {
            "description": "true: the stored answer to an earlier request with this Idempotency-Key.",
            **_STRING,
        }
    return {"description": description, "headers": headers, **(body or {})}


def _errors(shape: dict[str, Any], details: dict[str, str | None]) -> dict[str, Any]:
    """Error answers of an operation: each status with what, besides ERRORS' own codes, causes it."""
    return {status: _error(status, shape, detail) for status, detail in details.items()}


def _header(name: str, description: str, max_length: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if max_length is not None:
        schema["maxLength"] = max_length
    return {"name": name, "in": "header", "description": description, "schema": schema}


CORRELATION = _header("X-Correlation-Id", "Echoed in the answer and carried on every record.")
IDEMPOTENCY = _header(
    "Idempotency-Key",
    "A retry with the same key and body gets the first answer (per tenant and path); "
    "another body with the key: 422 IDEMPOTENCY_CONFLICT.",
    MAX_ID_CHARS,
)
#: Errors of every authenticated operation (before anything else is looked at).
AUTH: dict[str, str | None] = {"401": None, "429": None, "500": None, "503": None}
NO_AUTH: list[dict[str, list[str]]] = []  # an operation's ``security: []``


def _train_answer() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["request_id"],
        "properties": {
            "triggered": {"type": "boolean"},
            "reason": {"type": "string", "enum": ["nothing_pending"]},
            "domain": {"type": "string"},
            "pending": {"type": "integer", "minimum": 0},
            "request_id": {"type": "string"},
            "trigger": {"type": "object", "description": "The train.triggers message (its JSON Schema)."},
        },
    }


def _processing() -> dict[str, Any]:
    return _json(
        {
            "type": "object",
            "required": ["request_id", "status", "results_url"],
            "properties": {
                "accepted": {"type": ["boolean", "integer"]},
                "status": {"type": "string", "enum": ["processing"]},
                "request_id": {"type": "string"},
                "results_url": {"type": "string"},
                "rejected": {"type": "array", "items": {"type": "object"}},
            },
        }
    )


def _operations() -> dict[Operation, dict[str, Any]]:
    """What each route takes and answers; keys must match :func:`router_operations` of the app."""
    # the contracts posted to /v1/feedback, told apart by shape (the registry's table, in its order)
    on_feedback = on_route(FEEDBACK_ROUTE)

    def body(model: type[BaseModel], array: bool) -> dict[str, Any]:
        return {"type": "array", "items": _ref(model)} if array else _ref(model)

    feedback_body = {"oneOf": [body(s.request, s.array) for s in on_feedback]}
    feedback_examples = {
        **_examples(*(s.request for s in on_feedback if not s.array)),
        **{
            f"{s.request.__name__}_batch": {"value": [ex["value"] for ex in _examples(s.request).values()]}
            for s in on_feedback
            if s.array
        },
    }
    write_errors: dict[str, str | None] = {
        **AUTH,
        "408": None,
        "422": "IDEMPOTENCY_CONFLICT",
        "503": f"{_WRITE_503}, DRAINING",
    }
    return {
        ("post", "/v1/feedback"): {
            "operationId": "submitFeedback",
            "summary": "Outcomes (000), corrections (001), inference feedback (002), search (004)",
            "description": "Told apart by shape. Seed 002 answers 200 with an error per invalid "
            "item (only valid items are written); seed 000 rejects unknown labels per item.",
            "parameters": [
                CORRELATION,
                IDEMPOTENCY,
                _header(
                    "X-Session-ID",
                    f"Seed 004's session when the body names none (read only for seed 004 bodies: "
                    f"longer than {MAX_ID_CHARS} characters there is 400).",
                ),
            ],
            "requestBody": {
                "required": True,
                **_json(feedback_body, feedback_examples),
            },
            "responses": {
                "200": _ok(
                    "000 true counts, 001 stored, 002 per item, 004 accepted",
                    _json(
                        {"oneOf": [body(s.response, s.array) for s in on_feedback if s.response is not None]},
                        _examples(*(s.response for s in on_feedback if s.response is not None)),
                    ),
                ),
                "202": _ok("Seed 000 accepted; counts not ready within RESULT_WAIT_S", _processing()),
                **_errors(
                    CORRECTION_OR_GENERIC,
                    {
                        **write_errors,
                        "400": f"{_BODY_400}, NO_MATCHING_CONTRACT, AMBIGUOUS_CONTRACT, INVALID_REQUEST, "
                        "NO_VALID_ITEMS (seed 000: every item rejected; X-Session-ID too long); "
                        "seed 001: MISSING_REQUIRED_FIELD, INVALID_FIELD",
                        "403": None,
                        "413": f"{_BODY_413}, TOO_MANY_ITEMS (MAX_ITEMS_PER_REQUEST), TOO_MANY_KEYS",
                    },
                ),
            },
        },
        ("post", "/api/v1/feedback"): {
            "operationId": "submitScoredOutput",
            "summary": "A scored LLM output of a task (seed 003)",
            "parameters": [CORRELATION, IDEMPOTENCY],
            "requestBody": {
                "required": True,
                **_json(_ref(ScoredOutputRequest), _examples(ScoredOutputRequest)),
            },
            "responses": {
                "201": _ok(
                    "Stored entry", _json(_ref(ScoredOutputResponse), _examples(ScoredOutputResponse))
                ),
                **_errors(
                    GENERIC,
                    {
                        **write_errors,
                        "400": _BODY_400,
                        "404": "TASK_NOT_FOUND (also a task of another tenant)",
                        "413": _BODY_413,
                        "422": "INVALID_SCORE, INVALID_REQUEST, INPUTS_MISMATCH, IDEMPOTENCY_CONFLICT",
                    },
                ),
            },
        },
        ("get", "/api/v1/feedback"): {
            "operationId": "listScoredOutputs",
            "summary": "The caller's feedback entries, newest first (seed 003)",
            "description": "From the feedback store: listed once the worker's store stage "
            "wrote them (feedstream_store_lag_seconds after the 201). A task of another "
            "tenant lists nothing.",
            "parameters": [
                CORRELATION,
                {"name": "task_id", "in": "query", "schema": {"type": "string", "format": "uuid"}},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                },
                {
                    "name": "offset",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1, "default": 0},
                },
            ],
            "responses": {
                "200": _ok(
                    "Entries, each as its POST answered it",
                    _json(
                        {"type": "array", "items": _ref(ScoredOutputResponse)},
                        {
                            "seed_003": {
                                "value": [ex["value"] for ex in _examples(ScoredOutputResponse).values()]
                            }
                        },
                    ),
                ),
                **_errors(
                    GENERIC,
                    {
                        **AUTH,
                        "422": "INVALID_QUERY (an unknown parameter, limit/offset out of range, "
                        "task_id not a UUID)",
                        "503": "STORE_UNAVAILABLE, DRAINING",
                    },
                ),
            },
        },
        ("delete", "/api/v1/feedback/{entry_id}"): {
            "operationId": "eraseScoredOutput",
            "summary": "Erase one of the caller's entries (an erasure on feedback.erasures)",
            "parameters": [
                CORRELATION,
                {"name": "entry_id", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "responses": {
                "204": _ok("Erased", rate=False),
                **_errors(
                    GENERIC,
                    {
                        **AUTH,
                        "404": "NOT_FOUND (not a UUID, not the caller's, or not listed yet)",
                        "503": f"{_WRITE_503}, STORE_UNAVAILABLE, DRAINING",
                    },
                ),
            },
        },
        ("post", "/v1/train"): {
            "operationId": "forceTrain",
            "summary": "Force a trigger of a domain (seed 000's POST /train), ordered with its counts",
            "parameters": [CORRELATION, IDEMPOTENCY],
            "requestBody": {
                "required": True,
                **_json(
                    {
                        "type": "object",
                        "required": ["domain"],
                        "properties": {"domain": {"type": "string", "minLength": 1}},
                        "additionalProperties": False,
                    },
                    {"dating": {"value": {"domain": "dating"}}},
                ),
            },
            "responses": {
                "200": _ok("Triggered, or nothing pending", _json(_train_answer())),
                "202": _ok("Written; the counting stage did not answer within RESULT_WAIT_S", _processing()),
                **_errors(
                    GENERIC,
                    {
                        **write_errors,
                        "400": f'{_BODY_400}, INVALID_REQUEST (not {{"domain": ...}}, domain too long)',
                        "403": None,
                        "413": _BODY_413,
                    },
                ),
            },
        },
        ("get", "/v1/domains/{domain}"): {
            "operationId": "domainState",
            "summary": "Pending, threshold, total, sequence and last trigger of a domain (or task id)",
            "parameters": [
                CORRELATION,
                {"name": "domain", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _ok(
                    "The domain's counters, from the counting stage's changelog",
                    _json(
                        {
                            "type": "object",
                            "required": [
                                "domain",
                                "pending",
                                "threshold",
                                "total",
                                "sequence",
                                "last_trigger",
                                "last_training",
                            ],
                            "properties": {
                                "domain": {"type": "string"},
                                "pending": {"type": "integer", "minimum": 0},
                                "threshold": {"type": "integer", "minimum": 1},
                                "total": {"type": "integer", "minimum": 0},
                                "sequence": {"type": "integer", "minimum": 0},
                                "last_trigger": {"type": ["object", "null"]},
                                "last_training": {"type": ["object", "null"]},
                            },
                        }
                    ),
                    rate=False,
                ),
                **_errors(
                    GENERIC,
                    {
                        **AUTH,
                        "400": f"INVALID_REQUEST (domain longer than {MAX_DOMAIN_CHARS} characters)",
                        "403": None,
                        "503": "NOT_READY (the counters are still being read), DRAINING",
                    },
                ),
            },
        },
        ("post", "/v1/domains/{domain}/trainings"): {
            "operationId": "reportTraining",
            "summary": "A trainer reports it trained on one of the domain's triggers (written to "
            "train.completed; shown as last_training)",
            "parameters": [
                CORRELATION,
                IDEMPOTENCY,
                {"name": "domain", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "requestBody": {
                "required": True,
                **_json(
                    TrainingReport.model_json_schema(),
                    {
                        "trained": {
                            "value": {
                                "sequence": 1,
                                "model_version": "dating-2026-11-27",
                                "metrics": {"ndcg@10": 0.41},
                            }
                        }
                    },
                ),
            },
            "responses": {
                "201": _ok(
                    "Recorded (the same report again: the same training_id)",
                    _json(struct_json_schema(TrainingResult)),
                    rate=False,
                ),
                **_errors(
                    GENERIC,
                    {
                        **write_errors,
                        "400": f"{_BODY_400}, INVALID_REQUEST (the report's fields)",
                        "403": None,
                        "404": "TRIGGER_NOT_FOUND (the domain has no trigger of that sequence)",
                        "413": _BODY_413,
                        "422": "IDEMPOTENCY_CONFLICT, TRIGGER_MISMATCH (trigger_id is not the sequence's)",
                        "503": f"{_WRITE_503}, NOT_READY (the counters are still being read), DRAINING",
                    },
                ),
            },
        },
        ("get", "/v1/requests/{request_id}"): {
            "operationId": "requestResults",
            "summary": "Where a 202 points: what the stream answered so far for a request",
            "parameters": [
                CORRELATION,
                {"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _ok(
                    "The stream's results for the request (the caller's domains only)",
                    _json(
                        {
                            "type": "object",
                            "required": [
                                "request_id",
                                "complete",
                                "triplets_generated",
                                "triplets_pending_train",
                                "results",
                            ],
                            "properties": {
                                "request_id": {"type": "string"},
                                "complete": {"type": "boolean"},
                                "triplets_generated": {"type": "integer", "minimum": 0},
                                "triplets_pending_train": {"type": "integer", "minimum": 0},
                                "results": {"type": "array", "items": {"type": "object"}},
                            },
                        }
                    ),
                    rate=False,
                ),
                **_errors(GENERIC, {**AUTH, "404": "NOT_FOUND (no result for the request, yet)"}),
            },
        },
        ("get", "/healthz"): {
            "operationId": "health",
            "summary": "Liveness: 503 once the writer was fenced or while draining (no API key)",
            "security": NO_AUTH,
            "responses": {
                "200": _ok("Healthy", _json(_health(["ok"])), rate=False),
                "503": {
                    "description": "Fenced by another instance (unhealthy) or draining",
                    "headers": _TRACE_HEADERS,
                    **_json(_health(["unhealthy", "draining"])),
                },
                "500": _error("500", GENERIC),
            },
        },
        ("get", "/metrics"): {
            "operationId": "metrics",
            "summary": "Prometheus metrics of this ingest (no API key; answered while draining)",
            "security": NO_AUTH,
            "responses": {
                "200": {
                    "description": "Prometheus text format",
                    "headers": _TRACE_HEADERS,
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "500": _error("500", GENERIC),
            },
        },
        ("get", "/openapi.json"): {
            "operationId": "openapi",
            "summary": "This document (no API key)",
            "security": NO_AUTH,
            "responses": {
                "200": _ok("OpenAPI 3.1", _json({"type": "object"}), rate=False),
                **_errors(GENERIC, {"500": None, "503": None}),
            },
        },
    }


def _health(states: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": states}, "reason": {"type": "string"}},
    }


class UndocumentedRoute(LookupError):
    """A route of the app has no entry in the document's operations."""


def openapi_document(operations: tuple[Operation, ...] | None = None) -> dict[str, Any]:
    """The document of exactly ``operations`` (the ingest serves :func:`router_operations` of its
    app); None: every documented operation (the same set: a test asserts it)."""
    return _document(operations, tuple(CONTRACTS.values()))


@lru_cache(maxsize=4)
def _document(operations: tuple[Operation, ...] | None, registry: tuple[ContractSpec, ...]) -> dict[str, Any]:
    """Built once per set of operations and of registered contracts (the registry is part of the
    key: a contract registered later changes the document)."""
    specs = _operations()
    if operations is None:
        operations = tuple(sorted(specs))
    missing = [op for op in operations if op not in specs]
    if missing:
        raise UndocumentedRoute(f"routes without an OpenAPI operation: {missing}")
    _, defs = models_json_schema(
        [(m, "validation") for m in _models()], ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, dict[str, Any]] = {}
    for method, path in operations:
        paths.setdefault(path, {})[method] = specs[(method, path)]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "feedstream ingest",
            "version": "1.0.0",
            "description": "Feedback in five contracts (seeds 000-004), written durably to Kafka. "
            "Errors are JSON: seed 001's flat shape for corrections, else the generic shape. "
            "A method a path does not have is answered 405 with Allow; an unknown path 404 "
            "NOT_FOUND. A request whose client went away is counted as 499 in the metrics and "
            "never answered.",
        },
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearerAuth": []}, {"apiKey": []}],
        "paths": paths,
    }
