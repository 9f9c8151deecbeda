"""Seed 003's ``GET /api/v1/feedback`` and ``DELETE /api/v1/feedback/{id}``, in process: the real
ingest app with an in-memory writer (tests/inprocess.py) over a real SQLite feedback store.
What the POSTs wrote is put into the store the way the store stage does it (raw_rows, write_batch).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from pipeline.api.ingest import Ingest
from pipeline.kafka.topics import message_limits, topic_names
from pipeline.settings import Settings
from pipeline.store.sql import Database, PartitionBatch, open_database, read_offsets, write_batch
from pipeline.stream.store import raw_rows
from pipeline.tenants import load_tenants
from pipeline.wire.records import Erasure, from_json
from tests.inprocess import TENANTS, Edge, FakeView, FakeWriter
from tests.unit.test_edge import TASK

KAIZEN_KEY = "kaizen_abc123"
OTHER_KEY = "fs_other_key_456"
STREAM_KEY = "fs_stream_key"
STREAM_TASK = "7d444840-9dc0-11d1-b245-5ffdce74fad2"
SEED_ITEMS = [
    {"inputs": {"ticket_text": "Dark mode not working", "priority": "low"},
     "output": "UI theme preference not persisting across sessions.", "score": 0.85},
    {"inputs": {"ticket_text": "Login fails on Safari", "priority": "high"},
     "output": "Authentication issue on Safari browser.", "score": 0.9},
]  # fmt: skip


class Store:
    """The app, its fake writer, and the store it reads; ``sync()`` is the store stage."""

    def __init__(self, edge: Edge, db: Database) -> None:
        self.edge, self.db = edge, db
        self.names = topic_names(edge.ingest.settings)
        self.synced = 0

    async def sync(self) -> None:
        records = self.edge.writer.records[self.synced :]
        raw = [r for r in records if r.topic == self.names.raw]
        entries = [e for r in raw if (e := raw_rows(r.value, 0, 0)[1]) is not None]
        offsets = await read_offsets(self.db, "unit", "raw")
        start = offsets.get(0)
        batch = PartitionBatch("raw", 0, start, (start or 0) + 1, entries=entries)
        await write_batch(self.db, "unit", [batch])
        self.synced = len(self.edge.writer.records)

    async def post(self, body: dict[str, Any], key: str = KAIZEN_KEY) -> dict[str, Any]:
        status, answer, _ = await self.edge.post("/api/v1/feedback", body, key=key)
        assert status == 201, answer
        return answer  # type: ignore[no-any-return]

    async def get(self, query: str = "", key: str | None = KAIZEN_KEY) -> tuple[int, Any]:
        status, answer, _ = await self.edge.call("GET", "/api/v1/feedback" + query, key=key)
        return status, answer


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    settings = Settings(tenants_file=TENANTS, result_wait_s=0, store_path=tmp_path / "store.sqlite3")
    db = await open_database(settings)
    ingest = Ingest(settings, load_tenants(TENANTS), FakeWriter(), FakeView(), db)  # type: ignore[arg-type]
    client: TestClient[Any, Any] = TestClient(TestServer(ingest.app()))
    await client.start_server()
    try:
        yield Store(Edge(client, ingest), db)
    finally:
        await client.close()
        await db.close()


async def test_seed_003_list_example_answers_as_documented(store: Store) -> None:
    posted = [await store.post({"task_id": TASK, "source": "sdk", **item}) for item in SEED_ITEMS]
    await store.sync()
    status, listed = await store.get(f"?task_id={TASK}&limit=20&offset=0")
    assert status == 200
    assert listed == posted[::-1]  # newest first, each exactly as its POST answered
    assert [list(item) for item in listed] == [
        ["id", "task_id", "inputs", "output", "score", "source", "metadata", "created_at"]
    ] * 2
    assert listed[0]["metadata"] is None and listed[0]["created_at"].endswith("Z")
    assert (await store.get())[1] == listed  # no task_id: all the tenant's entries


async def test_limit_and_offset_defaults_and_edges(store: Store) -> None:
    for i in range(3):
        await store.post({"task_id": TASK, "score": i / 10})
    await store.sync()
    _, everything = await store.get()
    assert [e["score"] for e in everything] == [0.2, 0.1, 0.0]
    for query, scores in [
        ("?limit=1", [0.2]),
        ("?limit=1000", [0.2, 0.1, 0.0]),
        ("?limit=2&offset=1", [0.1, 0.0]),
        ("?offset=3", []),
        ("?offset=9223372036854775807", []),
        ("?limit=0100", [0.2, 0.1, 0.0]),
    ]:
        status, listed = await store.get(query)
        assert status == 200 and [e["score"] for e in listed] == scores, query
    for query in ["?limit=0", "?limit=1001", "?limit=-1", "?limit=abc", "?limit=1.5", "?limit=", "?limit=1e3",
                  "?limit=%2B5", "?limit=1&limit=2", "?offset=-1", "?offset=x", "?offset=9223372036854775808",
                  "?task_id=nope", "?task_id=" + TASK + "-", "?taskid=" + TASK, "?limit=\u0661"]:  # fmt: skip
        status, answer = await store.get(query)
        assert status == 422, query
        assert answer["error"]["code"] == "INVALID_QUERY" and answer["error"]["message"], query


async def test_401_without_a_valid_key(store: Store) -> None:
    for key in (None, "nope"):
        status, answer = await store.get(key=key)
        assert status == 401 and answer["error"]["code"] == "UNAUTHENTICATED"


async def test_task_ids_in_any_spelling_and_only_the_callers_entries(store: Store) -> None:
    mine = await store.post({"task_id": TASK, "score": 0.5})
    theirs = await store.post({"task_id": STREAM_TASK, "score": 0.7}, key=STREAM_KEY)
    await store.sync()
    for spelling in (TASK.upper(), "{" + TASK + "}", "urn:uuid:" + TASK, TASK.replace("-", "")):
        assert (await store.get("?task_id=" + spelling.replace("{", "%7B").replace("}", "%7D")))[1] == [mine]
    assert (await store.get())[1] == [mine]
    assert (await store.get("?task_id=" + STREAM_TASK))[1] == []  # another tenant's task: nothing
    assert (await store.get(key=STREAM_KEY))[1] == [theirs]
    assert (await store.get("?task_id=" + TASK, key=STREAM_KEY))[1] == []
    assert (await store.get(key=OTHER_KEY))[1] == []


async def test_delete_erases_the_entry_and_tells_kafka(store: Store) -> None:
    keep = await store.post({"task_id": TASK, "score": 0.1})
    gone = await store.post({"task_id": TASK, "score": 0.2})
    await store.sync()
    path = f"/api/v1/feedback/{gone['id']}"
    for key in (OTHER_KEY, STREAM_KEY):  # another tenant cannot see it, so cannot erase it
        assert (await store.edge.call("DELETE", path, key=key))[0] == 404
    assert (await store.edge.call("DELETE", path, key=None))[0] == 401
    upper = f"/api/v1/feedback/{gone['id'].upper()}"  # any spelling of the id
    status, _, _ = await store.edge.call("DELETE", upper)
    assert status == 204
    assert (await store.get())[1] == [keep]
    erasures = [r for r in store.edge.writer.records if r.topic == store.names.erasures]
    assert len(erasures) == 1
    record = erasures[0]
    message = from_json(Erasure, record.value)
    assert (message.entry_id, message.tenant, message.task_id) == (gone["id"], "dev", TASK)
    assert record.key == f"{TASK}/{gone['id']}".encode()
    size = len(record.key or b"") + len(record.value) + sum(len(k) + len(v) for k, v in record.headers)
    assert size + 128 < message_limits(store.edge.ingest.settings)[store.names.erasures]
    assert (await store.edge.call("DELETE", path))[0] == 404  # erased: gone for good
    assert (await store.edge.call("DELETE", "/api/v1/feedback/not-a-uuid"))[0] == 404
    # the store stage replays the original record: it does not come back
    store.synced = 0
    await store.sync()
    assert (await store.get())[1] == [keep]


async def test_without_a_store_the_list_says_so() -> None:
    settings = Settings(tenants_file=TENANTS, result_wait_s=0)
    ingest = Ingest(settings, load_tenants(TENANTS), FakeWriter(), FakeView())  # type: ignore[arg-type]
    client: TestClient[Any, Any] = TestClient(TestServer(ingest.app()))
    await client.start_server()
    try:
        async with client.get("/api/v1/feedback", headers={"X-API-Key": KAIZEN_KEY}) as resp:
            assert resp.status == 503
            assert orjson.loads(await resp.read())["error"]["code"] == "STORE_UNAVAILABLE"
    finally:
        await client.close()


def test_openapi_documents_the_list_and_the_erasure() -> None:
    from pipeline.api.openapi import openapi_document

    paths = openapi_document()["paths"]
    listing = paths["/api/v1/feedback"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"X-Correlation-Id", "task_id", "limit", "offset"}
    assert set(listing["responses"]) == {"200", "401", "422", "429", "500", "503"}
    example = listing["responses"]["200"]["content"]["application/json"]["examples"]["seed_003"]["value"]
    assert [list(item) for item in example] == [
        ["id", "task_id", "inputs", "output", "score", "source", "metadata", "created_at"]
    ]
    erase = paths["/api/v1/feedback/{entry_id}"]["delete"]["responses"]
    assert set(erase) == {"204", "401", "404", "429", "500", "503"}
