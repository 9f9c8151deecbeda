"""The ingest's OpenAPI 3.1 document, generated from the same pydantic models that validate."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from pipeline.api.contracts import (
    CorrectionError,
    CorrectionRequest,
    CorrectionResponse,
    ErrorBody,
    InferenceFeedbackEvent,
    InferenceFeedbackResult,
    RankingOutcomeRequest,
    RankingOutcomeResponse,
    ScoredOutputRequest,
    ScoredOutputResponse,
    SearchEventRequest,
    SearchEventResponse,
)

MODELS: tuple[type[BaseModel], ...] = (
    RankingOutcomeRequest,
    RankingOutcomeResponse,
    CorrectionRequest,
    CorrectionResponse,
    CorrectionError,
    InferenceFeedbackEvent,
    InferenceFeedbackResult,
    ScoredOutputRequest,
    ScoredOutputResponse,
    SearchEventRequest,
    SearchEventResponse,
    ErrorBody,
)


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


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(m, "validation") for m in MODELS], ref_template="#/components/schemas/{model}"
    )
    err = {
        "description": "Error (seed 001 shape for corrections, else the generic shape)",
        **_json({"oneOf": [_ref(ErrorBody), _ref(CorrectionError)]}),
    }
    feedback_body = {
        "oneOf": [
            _ref(RankingOutcomeRequest),
            _ref(CorrectionRequest),
            {"type": "array", "items": _ref(InferenceFeedbackEvent)},
            _ref(SearchEventRequest),
        ]
    }
    seed002_examples = {
        "InferenceFeedbackEvent_batch": {
            "value": [ex["value"] for ex in _examples(InferenceFeedbackEvent).values()]
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "feedstream ingest",
            "version": "1.0.0",
            "description": "Feedback in five contracts (seeds 000-004), written durably to Kafka.",
        },
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearerAuth": []}, {"apiKey": []}],
        "paths": {
            "/v1/feedback": {
                "post": {
                    "operationId": "submitFeedback",
                    "summary": "Outcomes (000), corrections (001), inference feedback (002), search (004)",
                    "parameters": [
                        {"name": "X-Correlation-Id", "in": "header", "schema": {"type": "string"}},
                        {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
                        {"name": "X-Session-ID", "in": "header", "schema": {"type": "string"}},
                    ],
                    "requestBody": {
                        "required": True,
                        **_json(
                            feedback_body,
                            {
                                **_examples(RankingOutcomeRequest, CorrectionRequest, SearchEventRequest),
                                **seed002_examples,
                            },
                        ),
                    },
                    "responses": {
                        "200": {
                            "description": "000 true counts, 001 stored, 002 per item, 004 accepted",
                            **_json(
                                {
                                    "oneOf": [
                                        _ref(RankingOutcomeResponse),
                                        _ref(CorrectionResponse),
                                        {"type": "array", "items": _ref(InferenceFeedbackResult)},
                                        _ref(SearchEventResponse),
                                    ]
                                },
                                _examples(
                                    RankingOutcomeResponse,
                                    CorrectionResponse,
                                    InferenceFeedbackResult,
                                    SearchEventResponse,
                                ),
                            ),
                        },
                        "202": {"description": "Seed 000 accepted; counts not ready within the wait"},
                        "400": err,
                        "401": err,
                        "403": err,
                        "408": err,
                        "413": err,
                        "422": err,
                        "429": err,
                        "503": err,
                    },
                }
            },
            "/api/v1/feedback": {
                "get": {
                    "operationId": "listScoredOutputs",
                    "summary": "The caller's feedback entries, newest first (seed 003)",
                    "description": "From the feedback store: listed once the worker's store stage "
                    "wrote them (feedstream_store_lag_seconds after the 201). A task of another "
                    "tenant lists nothing.",
                    "parameters": [
                        {"name": "task_id", "in": "query", "schema": {"type": "string", "format": "uuid"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                        },
                        {
                            "name": "offset",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "default": 0},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "Entries, each as its POST answered it",
                            **_json(
                                {"type": "array", "items": _ref(ScoredOutputResponse)},
                                {
                                    "seed_003": {
                                        "value": [
                                            ex["value"] for ex in _examples(ScoredOutputResponse).values()
                                        ]
                                    }
                                },
                            ),
                        },
                        "401": err,
                        "422": err,
                        "429": err,
                        "503": err,
                    },
                },
                "post": {
                    "operationId": "submitScoredOutput",
                    "summary": "A scored LLM output of a task (seed 003)",
                    "requestBody": {
                        "required": True,
                        **_json(_ref(ScoredOutputRequest), _examples(ScoredOutputRequest)),
                    },
                    "responses": {
                        "201": {
                            "description": "Stored entry",
                            **_json(_ref(ScoredOutputResponse), _examples(ScoredOutputResponse)),
                        },
                        "400": err,
                        "401": err,
                        "404": err,
                        "408": err,
                        "413": err,
                        "422": err,
                        "429": err,
                        "503": err,
                    },
                },
            },
            "/api/v1/feedback/{id}": {
                "delete": {
                    "operationId": "eraseScoredOutput",
                    "summary": "Erase one of the caller's entries (an erasure on feedback.erasures)",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "format": "uuid"},
                        }
                    ],
                    "responses": {
                        "204": {"description": "Erased"},
                        "401": err,
                        "404": err,
                        "429": err,
                        "503": err,
                    },
                }
            },
        },
    }
