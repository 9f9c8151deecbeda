"""The OpenAPI document against the app it documents, and 405 answers (RFC 9110), in process."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.api.openapi import IMPLICIT_METHODS, openapi_document, router_operations
from tests.inprocess import Edge, in_process


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, ops in doc["paths"].items() for method in ops}


def test_every_route_of_the_app_is_documented_and_nothing_else() -> None:
    """One source of truth: the router. A route added without its operation fails here."""
    app = in_process().app()
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method not in IMPLICIT_METHODS
    }
    assert len(routes) == 11
    assert set(router_operations(app.router)) == routes
    assert documented(openapi_document(router_operations(app.router))) == routes
    assert documented(openapi_document()) == routes  # the default is the same set


async def test_the_served_document_is_the_routers(edge: Edge) -> None:
    status, doc, headers = await edge.call("GET", "/openapi.json", key=None)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert edge.client.app is not None
    assert doc == openapi_document(router_operations(edge.client.app.router))


WRITE = {"200", "400", "401", "408", "413", "422", "429", "500", "503"}
AUTHED = {"401", "429", "500", "503"}


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("post", "/v1/feedback", WRITE | {"202", "403"}),
        ("post", "/api/v1/feedback", WRITE - {"200"} | {"201", "404"}),
        ("post", "/v1/train", WRITE | {"202", "403"}),
        ("get", "/api/v1/feedback", AUTHED | {"200", "422"}),
        ("delete", "/api/v1/feedback/{entry_id}", AUTHED | {"204", "404"}),
        ("get", "/v1/domains/{domain}", AUTHED | {"200", "400", "403"}),
        ("get", "/v1/requests/{request_id}", AUTHED | {"200", "404"}),
        ("get", "/healthz", {"200", "500", "503"}),
        ("get", "/metrics", {"200", "500"}),
        ("get", "/openapi.json", {"200", "500", "503"}),
    ],
)
def test_openapi_documents_every_status_the_edge_answers(method: str, path: str, statuses: set[str]) -> None:
    """Bodies refused for depth or bad JSON (400), slow bodies (408), the empty body of
    POST /api/v1/feedback (400), draining (503): all part of the contract."""
    responses = openapi_document()["paths"][path][method]["responses"]
    assert set(responses) == statuses
    for status, answer in responses.items():
        assert answer["description"]
        if status not in ("204", "200") or path != "/metrics":
            assert answer["headers"]["X-Request-Id"]["required"] is True
        if status >= "400" and path != "/healthz":
            schema = answer["content"]["application/json"]["schema"]
            shapes = [s["$ref"] for s in schema.get("oneOf", [schema])]
            expected = ["ErrorBody", "CorrectionError"] if path == "/v1/feedback" else ["ErrorBody"]
            assert shapes == [f"#/components/schemas/{name}" for name in expected]
    if "429" in responses:
        assert responses["429"]["headers"]["Retry-After"]["required"] is True


def test_only_the_operational_routes_need_no_key() -> None:
    doc = openapi_document()
    open_ops = {(m, p) for p, ops in doc["paths"].items() for m, o in ops.items() if o.get("security") == []}
    assert open_ops == {("get", "/healthz"), ("get", "/metrics"), ("get", "/openapi.json")}
    assert doc["security"] == [{"bearerAuth": []}, {"apiKey": []}]


async def test_empty_body_on_post_api_v1_feedback_is_the_documented_400(edge: Edge) -> None:
    status, answer, _ = await edge.call("POST", "/api/v1/feedback", raw=b"")
    assert (status, answer["error"]["code"]) == (400, "INVALID_JSON")
    assert "400" in openapi_document()["paths"]["/api/v1/feedback"]["post"]["responses"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/feedback", {"POST"}),
        ("GET", "/v1/feedback", {"POST"}),
        ("PATCH", "/api/v1/feedback", {"GET", "HEAD", "POST"}),
        ("GET", "/api/v1/feedback/550e8400-e29b-41d4-a716-446655440000", {"DELETE"}),
        ("POST", "/healthz", {"GET", "HEAD"}),
        ("DELETE", "/v1/domains/dating", {"GET", "HEAD"}),
        ("OPTIONS", "/v1/train", {"POST"}),
    ],
)
async def test_405_carries_allow_and_the_json_error(
    edge: Edge, method: str, path: str, allow: set[str]
) -> None:
    """RFC 9110 §15.5.6: a 405 names the methods the resource has; the body stays our JSON error."""
    status, answer, headers = await edge.call(method, path, {"domain": "dating"}, key=None)
    assert status == 405
    assert {m.strip() for m in headers["Allow"].split(",")} == allow
    assert headers["Content-Type"].startswith("application/json")
    assert answer["error"]["code"] == "METHOD_NOT_ALLOWED" and answer["error"]["message"]
    assert answer["request_id"] == headers["X-Request-ID"]
    assert edge.writer.records == []


async def test_unknown_path_is_a_json_404(edge: Edge) -> None:
    status, answer, headers = await edge.post("/v2/feedback", {"event_type": "result_helpful"})
    assert (status, answer["error"]["code"]) == (404, "NOT_FOUND")
    assert headers["Content-Type"].startswith("application/json") and "Allow" not in headers
