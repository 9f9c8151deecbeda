"""The feedback store's SQL layer on both engines: SQLite (a file in tmp_path) and PostgreSQL (the
session's server from pipeline.store.postgres, a fresh database per test). Migrations, the list query,
exactly-once writes (offsets checked and committed with the rows), erasure markers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson
import pytest

from pipeline import contracts
from pipeline.api import intake
from pipeline.api.contracts import ScoredOutputRequest, ScoredOutputResponse
from pipeline.settings import Settings
from pipeline.store.postgres import PostgresServer
from pipeline.store.sql import (
    Database,
    EntryRow,
    ErasureRow,
    EventRow,
    OffsetConflict,
    PartitionBatch,
    count_entries,
    erase,
    explain_list,
    get_entry,
    list_entries,
    migrate,
    migrations,
    open_database,
    read_offsets,
    statements,
    write_batch,
)
from pipeline.stream.store import micros, raw_rows, record_rows
from pipeline.tenants import load_tenants

TENANTS = Path(__file__).resolve().parent.parent / "data" / "tenants.test.yaml"
TASK = "550e8400-e29b-41d4-a716-446655440000"
T0 = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)


def admin_url(url: str, database: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + database


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        store = await open_database(Settings(store_path=tmp_path / "store.sqlite3"))
        try:
            yield store
        finally:
            await store.close()
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server.url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        store = await open_database(Settings(database_url=admin_url(server.url, name)))
        try:
            yield store
        finally:
            await store.close()
        await admin.execute(f"DROP DATABASE {name}")
    finally:
        await admin.close()


def entry(i: int, *, tenant: str = "dev", task: str = TASK, at: datetime | None = None) -> EntryRow:
    created = at or T0 + timedelta(minutes=i)
    eid = str(uuid.UUID(int=i + 1))
    doc = orjson.dumps({"id": eid, "task_id": task, "n": i})
    return EntryRow(eid, tenant, task, micros(created), doc, 0, i)


def batch(expected: int | None, entries: list[EntryRow], *, partition: int = 0) -> PartitionBatch:
    return PartitionBatch("raw", partition, expected, (expected or 0) + len(entries), entries=entries)


def ids(docs: list[bytes]) -> list[str]:
    return [orjson.loads(d)["id"] for d in docs]


async def test_migrations_apply_once_in_order_and_are_recorded(db: Database) -> None:
    versions = [v for v, _ in migrations()]
    assert versions == sorted(versions) and versions[0].startswith("001_")
    rows = await db.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert [r[0] for r in rows] == versions
    assert await migrate(db) == []  # a second opener applies nothing
    assert list(await asyncio.gather(migrate(db), migrate(db))) == [[], []]


def test_migration_statements_split_on_semicolons_and_drop_comments() -> None:
    parts = statements("-- a; comment\nCREATE TABLE a (x TEXT); -- trailing\n\nCREATE INDEX i ON a (x);\n")
    assert parts == ["CREATE TABLE a (x TEXT)", "CREATE INDEX i ON a (x)"]


async def test_list_is_newest_first_per_tenant_and_task_with_limit_and_offset(db: Database) -> None:
    other_task = "7d444840-9dc0-11d1-b245-5ffdce74fad2"
    rows = [entry(i) for i in range(5)] + [entry(10, task=other_task), entry(11, tenant="other")]
    rows.append(entry(12, at=T0 + timedelta(minutes=4)))  # same time as entry 4: id breaks the tie
    await write_batch(db, "c", [batch(None, rows)])
    newest_first = [str(uuid.UUID(int=n + 1)) for n in (12, 4, 3, 2, 1, 0)]
    assert ids(await list_entries(db, "dev", TASK)) == newest_first
    assert ids(await list_entries(db, "dev", TASK, limit=2, offset=1)) == newest_first[1:3]
    assert ids(await list_entries(db, "dev", TASK, limit=1000, offset=6)) == []
    assert ids(await list_entries(db, "dev", None))[:2] == [str(uuid.UUID(int=11)), newest_first[0]]
    assert len(await list_entries(db, "dev", None)) == 7
    assert ids(await list_entries(db, "other", None)) == [str(uuid.UUID(int=12))]
    assert await list_entries(db, "other", TASK) == [entry(11, tenant="other").doc]
    assert await list_entries(db, "nobody", None) == []


async def test_rows_and_offsets_commit_together_and_a_stale_writer_commits_nothing(db: Database) -> None:
    await write_batch(db, "c", [batch(None, [entry(0), entry(1)])])
    assert await read_offsets(db, "c", "raw") == {0: 2}
    assert await read_offsets(db, "other-consumer", "raw") == {}
    # a writer that still believes the partition starts at None (a zombie) is refused, wholesale
    with pytest.raises(OffsetConflict):
        await write_batch(db, "c", [batch(None, [entry(5)]), batch(None, [entry(6)], partition=1)])
    assert await count_entries(db) == 2
    assert await read_offsets(db, "c", "raw") == {0: 2}
    # the owner goes on from the stored offset; a replay of rows it already wrote changes nothing
    await write_batch(db, "c", [batch(2, [entry(1), entry(2)])])
    assert await count_entries(db) == 3
    assert await read_offsets(db, "c", "raw") == {0: 4}


async def test_an_erased_entry_never_comes_back_from_a_replay(db: Database) -> None:
    e = entry(0)
    event = EventRow(e.id, "dev", TASK, "scored_output", e.created_us, b"{}")
    await write_batch(db, "c", [PartitionBatch("raw", 0, None, 1, entries=[e], events=[event])])
    assert await erase(db, ErasureRow(e.id, "other", 1)) is False  # another tenant's: untouched
    assert await get_entry(db, "dev", e.id) == e.doc
    assert await erase(db, ErasureRow(e.id, "dev", 1)) is True
    assert await get_entry(db, "dev", e.id) is None
    assert await erase(db, ErasureRow(e.id, "dev", 2)) is False  # idempotent
    # the store stage replays the original event and then the erasure: still gone, once
    replay = PartitionBatch("raw", 0, 1, 2, entries=[e], events=[event])
    erasure = PartitionBatch("erasures", 0, None, 1, erasures=[ErasureRow(e.id, "dev", 3)])
    await write_batch(db, "c", [replay, erasure])
    assert await list_entries(db, "dev", None) == []
    assert await db.fetch("SELECT event_id FROM feedback_events") == []
    assert len(await db.fetch("SELECT id FROM feedback_erasures")) == 1


async def test_the_list_query_uses_its_index(db: Database) -> None:
    plan = "\n".join(await explain_list(db))
    if db.engine == "sqlite":
        assert "feedback_entries_by_task" in plan and "TEMP B-TREE" not in plan, plan
        assert "feedback_entries_by_tenant" in "\n".join(await explain_list(db, with_task=False))
    else:  # an empty table: the planner may scan, but never sorts what the index gives in order
        assert "feedback_entries" in plan and "Sort" not in plan, plan


def test_a_stored_entry_is_exactly_what_the_post_answered() -> None:
    tenant = load_tenants(TENANTS).authenticate("fs_dev_key_123")
    assert tenant is not None
    body = {
        "task_id": TASK.upper(),
        "inputs": {"ticket_text": "Login fails on Safari", "priority": "high"},
        "output": "Authentication issue on Safari browser.",
        "score": 0.9,
        "source": "sdk",
    }
    model = ScoredOutputRequest.model_validate(body)
    ctx = intake.Context(tenant, "req_1", "c-1", datetime(2024, 1, 15, 10, 35, 0, 123456, tzinfo=UTC))
    event = intake.scored_output(ctx, model).events[0]
    answer = ScoredOutputResponse.from_request(model, id=event.event_id, created_at=event.received_at)
    value = contracts.raw_records("raw", [event])[0].value
    row, stored = raw_rows(value, 3, 42)
    assert stored is not None
    assert stored.doc == orjson.dumps(answer.model_dump(mode="json"))
    assert list(orjson.loads(stored.doc)) == [
        "id", "task_id", "inputs", "output", "score", "source", "metadata", "created_at"
    ]  # fmt: skip
    assert (stored.id, stored.task_id, stored.partition, stored.offset) == (event.event_id, TASK, 3, 42)
    assert orjson.loads(stored.doc)["created_at"] == "2024-01-15T10:35:00.123456Z"
    assert (row.event_id, row.contract, row.envelope) == (event.event_id, "scored_output", value)


def test_an_array_record_gives_a_row_per_envelope_and_skips_a_bad_one_alone() -> None:
    """One request's seed 002 items are one record (an array of envelopes): each is an event row."""
    tenant = load_tenants(TENANTS).authenticate("fs_dev_key_123")
    assert tenant is not None
    ctx = intake.Context(tenant, "req_2", "c-2", datetime(2024, 1, 15, 10, 35, tzinfo=UTC))
    items = [{"id": str(uuid.UUID(int=i + 1)), "feedback": {"helpful": True}} for i in range(3)]
    events = intake.inference_feedback(ctx, items).events
    (record,) = contracts.request_records("raw", events)
    rows, entries = record_rows(record.value, 1, 7)
    assert [r.event_id for r in rows] == [e.event_id for e in events] and entries == []
    assert [orjson.loads(r.envelope) for r in rows] == orjson.loads(record.value)
    bad = b'[{"contract": "telepathy"},' + record.value[1:]
    assert [r.event_id for r in record_rows(bad, 1, 7)[0]] == [e.event_id for e in events]
    with pytest.raises(ValueError):
        record_rows(b"[]", 1, 7)
