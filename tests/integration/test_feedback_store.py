"""Seed 003's list on the real broker, against both stores: a stack (ingest + worker with its store
stage) on SQLite and one on PostgreSQL, each on topics of its own. The seed's GET example, tenant
isolation, limit/offset edges, erasure (gone from the list, an erasure on Kafka), the lag metric;
and a store stage SIGKILLed mid-load that loses and duplicates no row."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from pipeline.api.contracts import Contract
from pipeline.api.publisher import FeedbackPublisher
from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import TopicNames, delete_prefixed_topics, ensure_topics, topic_names
from pipeline.procs import Service, child_env, free_port, ingest_service, worker_service
from pipeline.settings import Settings
from pipeline.store.postgres import PostgresServer
from pipeline.store.sql import Database, count_entries, open_database, read_offsets
from pipeline.tenants import load_tenants
from pipeline.wire import envelope
from scripts.common import write_raw
from tests.conftest import LOG_DIR, TEST_TENANTS
from tests.http_helpers import KAIZEN_KEY, base_url
from tests.kafka_helpers import read_until, run

pytestmark = pytest.mark.timeout(300)

TASK = "550e8400-e29b-41d4-a716-446655440000"
STREAM_TASK = "7d444840-9dc0-11d1-b245-5ffdce74fad2"
STREAM_KEY = "fs_stream_key"
SEED_GET = f"/api/v1/feedback?task_id={TASK}&limit=20&offset=0"
SEED_POSTS = [
    {"task_id": TASK, "inputs": {"ticket_text": "Dark mode not working", "priority": "low"},
     "output": "UI theme preference not persisting across sessions.", "score": 0.85, "source": "sdk"},
    {"task_id": TASK, "inputs": {"ticket_text": "Login fails on Safari", "priority": "high"},
     "output": "Authentication issue on Safari browser.", "score": 0.9, "source": "sdk"},
]  # fmt: skip
#: read-your-writes: how long a test waits for a 201 to be listed (the documented bound is the
#: store stage's lag, milliseconds when idle; this is generous for a loaded 2-core CI machine)
LISTED_WITHIN_S = 20.0


@dataclass
class Stack:
    kind: str
    settings: Settings
    env: dict[str, str]
    names: TopicNames
    ingest: Service
    worker: Service


def fresh_postgres_database(server: PostgresServer) -> str:
    name = f"fs_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(server.url)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()

    run(create())
    return server.url.rsplit("/", 1)[0] + "/" + name


def stack_env(
    broker: Broker, service_env: dict[str, str], kind: str, request: pytest.FixtureRequest, tag: str
) -> tuple[Settings, dict[str, str]]:
    prefix = f"{tag}{uuid.uuid4().hex[:8]}."
    store: dict[str, Any] = {}
    if kind == "postgres":
        store["database_url"] = fresh_postgres_database(request.getfixturevalue("postgres"))
    else:
        store["store_path"] = LOG_DIR / prefix / "store.sqlite3"
    settings = Settings(
        kafka_bootstrap_servers=broker.bootstrap,
        topic_prefix=prefix,
        worker_id=f"w-{prefix[:-1]}",
        tenants_file=TEST_TENANTS,
        **store,
    )
    env = child_env(
        service_env,
        topic_prefix=prefix,
        worker_id=settings.worker_id,
        ingest_instance=f"ingest-{prefix[:-1]}",
        **store,
    )
    run(ensure_topics(broker.bootstrap, settings))
    return settings, env


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stack(request: pytest.FixtureRequest, broker: Broker, service_env: dict[str, str]) -> Iterator[Stack]:
    settings, env = stack_env(broker, service_env, request.param, request, "st")
    logs = LOG_DIR / settings.topic_prefix
    worker = worker_service(env, free_port(), logs).start()
    ingest = ingest_service(env, free_port(), logs).start()
    try:
        ingest.wait_ready()
        worker.wait_ready()
        yield Stack(request.param, settings, env, topic_names(settings), ingest, worker)
    finally:
        ingest.stop()
        worker.stop()
        for doomed in (settings.topic_prefix, settings.worker_id + "-"):
            run(delete_prefixed_topics(broker.bootstrap, doomed))


async def call(
    svc: Service, method: str, path: str, body: Any = None, *, key: str | None = KAIZEN_KEY
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-API-Key"] = key  # seed 003's header
    data = None if body is None else orjson.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, base_url(svc) + path, data=data, headers=headers) as resp,
    ):
        text = await resp.read()
        return resp.status, orjson.loads(text) if text else None


async def listed(svc: Service, path: str, want: int, *, key: str = KAIZEN_KEY) -> list[dict[str, Any]]:
    """GET ``path`` until it lists ``want`` entries (read-your-writes within LISTED_WITHIN_S)."""
    deadline = time.monotonic() + LISTED_WITHIN_S
    while True:
        status, answer = await call(svc, "GET", path, key=key)
        assert status == 200, answer
        if len(answer) >= want or time.monotonic() > deadline:
            return answer  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)


async def test_seed_003_get_example_answers_as_documented(stack: Stack) -> None:
    posted = []
    for body in SEED_POSTS:
        status, answer = await call(stack.ingest, "POST", "/api/v1/feedback", body)
        assert status == 201, answer
        posted.append(answer)
    items = await listed(stack.ingest, SEED_GET, 2)
    assert items == posted[::-1], stack.kind  # newest first, each exactly as its POST answered it
    assert [list(item) for item in items] == [
        ["id", "task_id", "inputs", "output", "score", "source", "metadata", "created_at"]
    ] * 2
    assert items[0]["metadata"] is None and items[0]["task_id"] == TASK
    status, answer = await call(stack.ingest, "GET", "/api/v1/feedback", key=None)
    assert status == 401 and answer["error"]["code"] == "UNAUTHENTICATED"
    # the worker says how far behind the store is
    async with aiohttp.ClientSession() as session, session.get(base_url(stack.worker) + "/metrics") as resp:
        assert b"feedstream_store_lag_seconds " in await resp.read()


async def test_cross_tenant_reads_return_nothing(stack: Stack) -> None:
    body = {"task_id": STREAM_TASK}
    status, theirs = await call(stack.ingest, "POST", "/api/v1/feedback", body, key=STREAM_KEY)
    assert status == 201, theirs
    assert await listed(stack.ingest, "/api/v1/feedback", 1, key=STREAM_KEY) == [theirs]
    mine = await listed(stack.ingest, "/api/v1/feedback?limit=1000", 2)
    assert mine and theirs["id"] not in {e["id"] for e in mine}
    assert all(e["task_id"] == TASK for e in mine)
    for key, path in [
        (KAIZEN_KEY, f"/api/v1/feedback?task_id={STREAM_TASK}"),
        (STREAM_KEY, f"/api/v1/feedback?task_id={TASK}"),
        ("fs_other_key_456", "/api/v1/feedback"),
    ]:
        assert await call(stack.ingest, "GET", path, key=key) == (200, []), (key, path)
    status, _ = await call(stack.ingest, "DELETE", f"/api/v1/feedback/{theirs['id']}")
    assert status == 404  # not the caller's: not even erasable
    assert await listed(stack.ingest, "/api/v1/feedback", 1, key=STREAM_KEY) == [theirs]


async def test_limit_and_offset_edges(stack: Stack) -> None:
    everything = await listed(stack.ingest, "/api/v1/feedback?limit=1000", 2)
    assert 2 <= len(everything) <= 1000
    for query, expected in [
        ("limit=1", everything[:1]),
        ("limit=1000", everything),
        ("limit=1&offset=1", everything[1:2]),
        (f"offset={len(everything)}", []),
    ]:
        assert await call(stack.ingest, "GET", "/api/v1/feedback?" + query) == (200, expected), query
    for query in ("limit=0", "limit=1001", "limit=-1", "limit=ten", "offset=-1", "task_id=not-a-task"):
        status, answer = await call(stack.ingest, "GET", "/api/v1/feedback?" + query)
        assert status == 422 and answer["error"]["code"] == "INVALID_QUERY", query


async def test_delete_removes_the_entry_and_writes_an_erasure_to_kafka(stack: Stack) -> None:
    status, entry = await call(stack.ingest, "POST", "/api/v1/feedback", {"task_id": TASK, "score": 0.3})
    assert status == 201
    assert entry in await listed(stack.ingest, "/api/v1/feedback?limit=1000", 3)
    assert (await call(stack.ingest, "DELETE", f"/api/v1/feedback/{entry['id']}"))[0] == 204
    after = (await call(stack.ingest, "GET", "/api/v1/feedback?limit=1000"))[1]
    assert entry["id"] not in {e["id"] for e in after}
    assert (await call(stack.ingest, "DELETE", f"/api/v1/feedback/{entry['id']}"))[0] == 404
    bootstrap = stack.settings.kafka_bootstrap_servers or ""
    erasures = await read_until(
        bootstrap, stack.names.erasures, lambda r: True, count=1, timeout_s=15, settle_s=1
    )
    assert [orjson.loads(r.value)["entry_id"] for r in erasures] == [entry["id"]]
    # the store stage applied it too (marker kept): a second look after it ran lists nothing new
    await asyncio.sleep(1.0)
    again = (await call(stack.ingest, "GET", "/api/v1/feedback?limit=1000"))[1]
    assert entry["id"] not in {e["id"] for e in again}


# --- SIGKILL of the store stage mid-load ------------------------------------------------------------


def scored_events(pub: FeedbackPublisher, n: int) -> list[envelope.RawEvent]:
    events: list[envelope.RawEvent] = []
    for i in range(n):
        contract = None
        if i % 5 == 4:  # other contracts go to the store's generic rows only
            body: dict[str, Any] = {
                "domain": "s_crash",
                "items": [{"seeker_id": f"s{i % 7}", "candidate_id": f"c{i}", "outcome": "accepted"}],
            }
        else:
            body = {"task_id": STREAM_TASK, "output": f"answer {i}", "score": (i % 11) / 10, "source": "sdk"}
            contract = Contract.SCORED_OUTPUT
        intake_, _ = pub.plan(body, contract=contract)
        events.extend(intake_.events)
    return events


@pytest.fixture(params=["sqlite", "postgres"])
def crash_env(
    request: pytest.FixtureRequest, broker: Broker, service_env: dict[str, str]
) -> Iterator[tuple[Settings, dict[str, str]]]:
    settings, env = stack_env(broker, service_env, request.param, request, "sk")
    env["STAGE_BATCH"] = "10"  # many small store transactions: kills land between and inside them
    yield settings, env
    for doomed in (settings.topic_prefix, settings.worker_id + "-"):
        run(delete_prefixed_topics(broker.bootstrap, doomed))


@pytest.mark.slow
async def test_sigkill_of_the_store_stage_loses_and_duplicates_no_row(
    crash_env: tuple[Settings, dict[str, str]],
) -> None:
    settings, env = crash_env
    bootstrap = settings.kafka_bootstrap_servers or ""
    names = topic_names(settings)
    pub = FeedbackPublisher(bootstrap, load_tenants(TEST_TENANTS), "stream", settings=settings)
    events = scored_events(pub, 2500)
    await write_raw(bootstrap, settings, events, transactional_id=f"load-{settings.topic_prefix}", chunk=250)
    scored = [e for e in events if isinstance(e, envelope.ScoredOutputEnvelope)]
    db: Database = await open_database(settings)
    logs = LOG_DIR / settings.topic_prefix
    seen_at_kill = []
    try:
        for i, fraction in enumerate([0.0, 0.2, 0.5, 0.8]):
            worker = worker_service(env, free_port(), logs, name=f"store-kill{i}").start()
            deadline = time.monotonic() + 90
            if fraction == 0.0:
                await asyncio.sleep(2.0)  # during start-up: assignment, reading offsets
            else:
                while await count_entries(db) < int(len(scored) * fraction):
                    assert time.monotonic() < deadline, "the store stage made no progress"
                    await asyncio.sleep(0.02)
            worker.kill()
            seen_at_kill.append(await count_entries(db))
        final = worker_service(env, free_port(), logs, name="store-final").start()
        try:
            deadline = time.monotonic() + 120
            while await count_entries(db) < len(scored):
                assert time.monotonic() < deadline, f"{await count_entries(db)} of {len(scored)} rows"
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)  # anything duplicated or late would show now
            # against what is on feedback.raw: every scored entry once, every event once
            on_kafka = await read_until(bootstrap, names.raw, lambda r: True, count=len(events), timeout_s=60)
            raw_ids = collections.Counter(
                envelope.decode(r.value).event_id for r in on_kafka if b'"scored_output"' in r.value
            )
            rows = await db.fetch("SELECT id FROM feedback_entries")
            assert len(rows) == len(raw_ids) == len(scored), seen_at_kill
            assert {r[0] for r in rows} == set(raw_ids) == {e.event_id for e in scored}
            assert int((await db.fetch("SELECT COUNT(*) FROM feedback_events"))[0][0]) == len(events)
            ends: dict[int, int] = {}
            for r in on_kafka:
                ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
            stored = await read_offsets(db, settings.stage_group("store"), names.raw)
            assert all(stored[p] >= end for p, end in ends.items()), (stored, ends)
        finally:
            final.stop()
    finally:
        await db.close()
