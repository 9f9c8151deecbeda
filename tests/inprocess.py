"""The ingest in process: aiohttp's test client against the real app, with an in-memory writer and
stream view (no broker). Shared by every in-process test of the HTTP contract."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pipeline import contracts
from pipeline.api.ingest import Ingest
from pipeline.kafka.io import OutRecord, Written
from pipeline.rules.counters import DomainCounter
from pipeline.settings import Settings
from pipeline.tenants import load_tenants
from pipeline.wire.envelope import is_array
from pipeline.wire.records import StageResult, TrainingResult
from tests.http_helpers import parse_answer

TENANTS = Path(__file__).resolve().parent / "data" / "tenants.test.yaml"
DEV_KEY = "fs_dev_key_123"


class FakeWriter:
    """Commits instantly in memory."""

    def __init__(self) -> None:
        self.records: list[OutRecord] = []
        self.fenced: str | None = None

    async def write(self, records: Sequence[OutRecord]) -> list[Written]:
        self.records.extend(records)
        return [Written(r.topic, 0, i) for i, r in enumerate(records)]

    def envelopes(self) -> list[dict[str, Any]]:
        return [orjson.loads(part) for r in self.records for part in contracts.split_record(r.value)]

    def written(self, correlation_id: str) -> list[OutRecord]:
        """The records a request wrote, by the correlation id header every raw record carries."""
        wanted = correlation_id.encode()
        return [r for r in self.records if dict(r.headers).get("correlation_id") == wanted]

    def of(self, correlation_id: str) -> list[OutRecord]:
        """The envelopes a request wrote, a record each as the stream sees them (an array record's
        parts with their own key, as :meth:`ExpandStage.events` splits it)."""
        out = []
        for r in self.written(correlation_id):
            if not is_array(r.value):
                out.append(r)
                continue
            for part in contracts.split_record(r.value):
                key = contracts.kafka_key(contracts.decode(part))
                out.append(OutRecord(r.topic, key, part, [h for h in r.headers if h[0] != "events"]))
        return out


class FakeView:
    """No stream behind it: seed 000 and train answer 202 at once (``result_wait_s=0``)."""

    def __init__(self) -> None:
        self.domains: dict[str, DomainCounter] = {}
        self.trainings: dict[str, TrainingResult] = {}
        self.recent: dict[str, list[StageResult]] = {}
        self.caught_up = asyncio.Event()
        self.caught_up.set()

    def expect(self, request_id: str, count: int) -> asyncio.Future[list[StageResult]]:
        return asyncio.get_running_loop().create_future()

    async def wait(
        self, request_id: str, fut: asyncio.Future[list[StageResult]], timeout_s: float
    ) -> list[StageResult] | None:
        return None

    def forget(self, request_id: str) -> None:
        return None


def make_settings(**overrides: Any) -> Settings:
    return Settings(tenants_file=TENANTS, result_wait_s=0, **overrides)


class Edge:
    def __init__(self, client: TestClient[web.Request, web.Application], ingest: Ingest) -> None:
        self.client, self.ingest = client, ingest
        self.writer: FakeWriter = ingest.writer  # type: ignore[assignment]
        self.view: FakeView = ingest.view  # type: ignore[assignment]

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = DEV_KEY,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        h = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            h["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else (None if body is None and method == "GET" else orjson.dumps(body))
        async with self.client.request(method, path, data=data, headers=h) as resp:
            text = await resp.read()
            return resp.status, orjson.loads(text) if text else None, dict(resp.headers)

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return await self.call("POST", path, body, **kw)

    async def send(
        self,
        path: str,
        body: Any = None,
        *,
        key: str | None = DEV_KEY,
        header: str = "bearer",
        correlation_id: str | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        method: str = "POST",
    ) -> tuple[int, Any, dict[str, str]]:
        """As ``tests.http_helpers.post`` does over the network: the key as a bearer token or in
        X-API-Key, header names in lower case, a body that is not JSON as text."""
        h = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            h["Authorization" if header == "bearer" else "X-API-Key"] = (
                f"Bearer {key}" if header == "bearer" else key
            )
        if correlation_id:
            h["X-Correlation-Id"] = correlation_id
        data = raw if raw is not None else orjson.dumps(body)
        async with self.client.request(method, path, data=data, headers=h) as resp:
            return (
                resp.status,
                parse_answer(await resp.read()),
                {k.lower(): v for k, v in resp.headers.items()},
            )


async def start_edge(
    *, tenants: Path = TENANTS, **overrides: Any
) -> tuple[Edge, TestClient[web.Request, web.Application]]:
    settings = make_settings(**overrides)
    ingest = Ingest(settings, load_tenants(tenants), FakeWriter(), FakeView())  # type: ignore[arg-type]
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(ingest.app()))
    await client.start_server()
    return Edge(client, ingest), client


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    e, client = await start_edge()
    try:
        yield e
    finally:
        await client.close()


def in_process(**overrides: Any) -> Ingest:
    return Ingest(make_settings(**overrides), load_tenants(TENANTS), FakeWriter(), FakeView())  # type: ignore[arg-type]
