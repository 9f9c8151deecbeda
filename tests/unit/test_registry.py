"""The contract registry: one spec per contract, and a sixth contract added in one place flows end to end.

The toy contract below (``thumb``: a thumb up or down on an item) is defined only in this file and
registered for the duration of a test: the in-process ingest takes it over HTTP, the wire event is
written, decoded, turned into signals and a training unit, and answered as its spec says. No module
of ``pipeline`` knows it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest
from pydantic import BaseModel, ConfigDict, Field

from pipeline import contracts
from pipeline.api.answers import Answer, Answering
from pipeline.api.intake import Context, Hints, Intake, base_fields, canonical_domain
from pipeline.api.publisher import FeedbackPublisher, PublishRejected
from pipeline.contracts import ContractSpec
from pipeline.rules.expansion import Plan
from pipeline.rules.signals import signal
from pipeline.rules.triplets import Limits, scored_unit
from pipeline.tenants import load_tenants
from pipeline.wire.envelope import RAW_TYPES, Contract, Envelope
from pipeline.wire.records import ScoredUnit
from tests.inprocess import TENANTS, Edge, make_settings

LIMITS = Limits(max_items=200, max_age_seconds=30 * 86_400.0)
PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"

# --- the toy sixth contract: everything it needs, in one place -------------------------------------


class ThumbRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    board: str = Field(min_length=1)  # the domain
    item_id: str = Field(min_length=1, max_length=64)
    thumb: Literal["up", "down"]


class ThumbPayload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    item_id: str
    up: bool


class ThumbEnvelope(Envelope, frozen=True, kw_only=True, tag="thumb"):
    payload: ThumbPayload


def thumb_intake(ctx: Context, req: ThumbRequest, hints: Hints) -> Intake:
    domain = canonical_domain(ctx, req.board)
    payload = ThumbPayload(item_id=req.item_id, up=req.thumb == "up")
    return Intake([ThumbEnvelope(**base_fields(ctx, domain), payload=payload)])


def thumb_signals(event: ThumbEnvelope) -> list[dict[str, Any]]:
    return [signal(event, "thumb", event.payload.up, event.payload.item_id)]


def thumb_plan(event: ThumbEnvelope, shared_pool: str) -> Plan:
    unit = scored_unit(
        event_id=event.event_id,
        tenant=event.tenant,
        domain=event.domain,
        task_id=event.payload.item_id,
        inputs=None,
        output=None,
        score=1.0 if event.payload.up else 0.0,
        source="user_rating",
        metadata=None,
        received_at=event.received_at,
    )
    return Plan(units=[unit])


def thumb_answer(a: Answering) -> Answer:
    event = a.intake.events[0]
    assert isinstance(event, ThumbEnvelope)
    return Answer(201, {"thumb_id": event.event_id, "up": event.payload.up, "request_id": a.ctx.request_id})


THUMB = ContractSpec(
    name="thumb",
    route=contracts.FEEDBACK_ROUTE,
    request=ThumbRequest,
    response=None,
    wire=ThumbEnvelope,
    key=lambda event: f"{event.domain}/{event.payload.item_id}",
    intake=thumb_intake,
    signals=thumb_signals,
    expansion=thumb_plan,
    answer=thumb_answer,
    signature=frozenset({"thumb"}),
)


@pytest.fixture
def thumb() -> Iterator[ContractSpec]:
    with contracts.registered(THUMB) as spec:
        yield spec


# --- the toy contract, end to end ---------------------------------------------------------------------


async def test_a_sixth_contract_flows_end_to_end(thumb: ContractSpec, edge: Edge) -> None:
    status, body, _ = await edge.post("/v1/feedback", {"board": "dating", "item_id": "i-7", "thumb": "up"})
    assert status == 201, body
    assert body["up"] is True and body["request_id"]

    (record,) = edge.writer.records
    assert record.topic == edge.ingest.topics.raw
    assert record.key == b"dating/i-7"
    assert ("contract", b"thumb") in record.headers
    event = contracts.decode(record.value)
    assert isinstance(event, ThumbEnvelope)
    assert event.contract == "thumb" and event.event_id == body["thumb_id"]
    assert (event.tenant, event.domain, event.request_events) == ("dev", "dating", 1)
    assert event.payload == ThumbPayload(item_id="i-7", up=True)

    (sig,) = contracts.signal_records(event)
    assert (sig["contract"], sig["key"], sig["value"], sig["subject"]) == ("thumb", "thumb", True, "i-7")
    out = contracts.expand_event(event, {}, limits=LIMITS, shared_pool="__shared__")
    assert len(out.signals) == 1 and not out.discarded
    (batch,) = out.batches
    assert (batch.contract, batch.domain, batch.event_id) == ("thumb", "dating", event.event_id)
    (unit,) = batch.units
    assert isinstance(unit, ScoredUnit) and unit.score == 1.0 and unit.task_id == "i-7"


async def test_the_sixth_contract_gets_the_shared_refusals(thumb: ContractSpec, edge: Edge) -> None:
    status, body, _ = await edge.post(
        "/v1/feedback", {"board": "dating", "item_id": "i", "thumb": "sideways"}
    )
    assert status == 400 and body["error"]["code"] == "INVALID_REQUEST"
    assert "thumb" in body["error"]["message"]
    status, body, _ = await edge.post("/v1/feedback", {"board": "jobs", "item_id": "i", "thumb": "up"})
    assert status == 403 and body["error"]["code"] == "SCOPE_INSUFFICIENT"
    assert edge.writer.records == []


def test_the_publisher_takes_the_sixth_contract_too(thumb: ContractSpec) -> None:
    pub = FeedbackPublisher("127.0.0.1:1", load_tenants(TENANTS), "dev", settings=make_settings())
    result, answer = pub.plan({"board": "dating", "item_id": "i-8", "thumb": "down"})
    assert answer.contract == "thumb"
    (event,) = result.events
    assert isinstance(event, ThumbEnvelope) and event.origin == "publisher"
    assert event.payload.up is False
    (record,) = contracts.raw_records("raw", result.events)
    assert contracts.decode(record.value) == msgspec.structs.replace(event, request_events=1)


def test_the_sixth_contract_is_in_the_openapi_document(thumb: ContractSpec) -> None:
    """The document's /v1/feedback body and components come from the same table."""
    from pipeline.api.openapi import openapi_document

    doc = openapi_document()
    body = doc["paths"]["/v1/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/ThumbRequest"} in body["oneOf"]
    assert "ThumbRequest" in doc["components"]["schemas"]


async def test_unregistered_the_sixth_contract_is_unknown_again(edge: Edge) -> None:
    pub = FeedbackPublisher("127.0.0.1:1", load_tenants(TENANTS), "dev", settings=make_settings())
    body = {"board": "dating", "item_id": "i", "thumb": "up"}
    with contracts.registered(THUMB):
        assert "thumb" in contracts.CONTRACTS
        (record,) = contracts.raw_records("raw", pub.plan(body)[0].events)
    assert "thumb" not in contracts.CONTRACTS
    status, answer, _ = await edge.post("/v1/feedback", body)
    assert status == 400 and answer["error"]["code"] == "NO_MATCHING_CONTRACT"
    assert edge.writer.records == []
    with pytest.raises(ValueError):  # the stream would dead-letter it as a schema violation
        contracts.decode(record.value)
    with pytest.raises(PublishRejected) as refused:
        pub.plan(body)
    assert refused.value.code == "NO_MATCHING_CONTRACT"


# --- the table ----------------------------------------------------------------------------------------


def test_the_builtin_table() -> None:
    assert list(contracts.CONTRACTS) == list(Contract)
    assert [spec.wire for spec in contracts.CONTRACTS.values()] == list(RAW_TYPES)
    assert [s.name for s in contracts.on_route(contracts.FEEDBACK_ROUTE)] == [
        "ranking_outcome",
        "correction",
        "inference_feedback",
        "search_event",
    ]
    assert [s.name for s in contracts.on_route(contracts.SCORED_ROUTE)] == ["scored_output"]
    signatures = [s.signature for s in contracts.on_route(contracts.FEEDBACK_ROUTE) if not s.array]
    for i, a in enumerate(signatures):  # a signature key marks one contract only
        for b in signatures[i + 1 :]:
            assert not a & b


def test_a_contract_is_registered_once_and_tagged_by_its_name() -> None:
    with pytest.raises(ValueError, match="already registered"):
        contracts.register(contracts.spec_named("correction"))
    with pytest.raises(ValueError, match="tagged"):
        contracts.register(ContractSpec(**{**THUMB.__dict__, "name": "thumbs"}))
    assert "thumbs" not in contracts.CONTRACTS


# --- import rules: the registry imports rules and wire, never the other way -----------------------------

FORBIDDEN = ("pipeline.api", "pipeline.stream", "pipeline.kafka", "pipeline.contracts")
#: pipeline/wire/schemas.py writes every topic's schema file, so it reads the topic declarations
#: (pipeline.kafka.topics: names and docs, no I/O); it is a tool, not a message type.
EXEMPT = {("wire/schemas.py", "pipeline.kafka")}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize(
    "path",
    sorted([*PIPELINE.glob("rules/*.py"), *PIPELINE.glob("wire/*.py")]),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_rules_and_wire_do_not_import_the_api_the_stream_kafka_or_the_registry(path: Path) -> None:
    where = f"{path.parent.name}/{path.name}"
    bad = sorted(
        name
        for name in _imports(path)
        for prefix in FORBIDDEN
        if (name == prefix or name.startswith(prefix + ".")) and (where, prefix) not in EXEMPT
    )
    assert not bad, f"{where} imports {bad}"
