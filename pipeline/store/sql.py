"""The feedback store's SQL layer: one schema on SQLite (aiosqlite, the embedded default) and
PostgreSQL (asyncpg, when ``DATABASE_URL=postgresql://...``).

Migrations are the plain SQL files of ``pipeline/store/migrations`` (``NNN_name.sql``), applied in order
under a lock and recorded in ``schema_migrations``; every process that opens the store applies what
is missing. Statements are written once with ``?`` placeholders (numbered ``$n`` for asyncpg).

Writes of the store stage (:func:`write_batch`) put rows and the consumed offsets in one
transaction, and check that the offsets in the database are the ones the writer started from, so a
writer that lost its partitions (a zombie) commits nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

from pipeline.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
#: pg_advisory_xact_lock key of migrations (any constant; "feedstre" in ASCII)
_PG_MIGRATION_LOCK = 0x6665656473747265

#: GET /api/v1/feedback bounds (seed 003)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class Conn(Protocol):
    """One connection inside a transaction."""

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None: ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


class Database(Protocol):
    engine: str  # "sqlite" or "postgres"
    for_update: str  # row lock suffix of a SELECT inside a transaction ("" on SQLite: BEGIN IMMEDIATE)

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Conn]: ...

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    async def close(self) -> None: ...


# --- SQLite ------------------------------------------------------------------------------------------


class _SqliteConn:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        async with self._conn.execute(sql, tuple(args)):
            pass

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self._conn.executemany(sql, [tuple(r) for r in rows]):
            pass

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._conn.execute(sql, tuple(args)) as cur:
            return [tuple(r) for r in await cur.fetchall()]


class SqliteDatabase:
    """A SQLite file in WAL mode: one writing connection (transactions serialized by a lock and by
    ``BEGIN IMMEDIATE`` across processes), one reading connection (WAL readers never wait)."""

    engine = "sqlite"
    for_update = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> SqliteDatabase:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect("PRAGMA journal_mode=WAL")
        self._reader = await self._connect()
        return self

    async def _connect(self, *pragmas: str) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(str(self.path), isolation_level=None)  # we issue BEGIN/COMMIT
        # NORMAL in WAL mode: a commit survives a process crash (the store stage's SIGKILL); a power
        # loss may lose the last commits, rows and offsets alike, which the stage then redoes.
        for pragma in ("PRAGMA busy_timeout=30000", "PRAGMA synchronous=NORMAL", *pragmas):
            async with conn.execute(pragma):  # closed at once: an open cursor would hold a lock
                pass
        return conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        assert self._writer is not None, "open() first"
        async with self._lock:
            conn = _SqliteConn(self._writer)
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        assert self._reader is not None, "open() first"
        async with self._reader.execute(sql, tuple(args)) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._reader = self._writer = None


# --- PostgreSQL --------------------------------------------------------------------------------------


def numbered(sql: str) -> str:
    """``?`` placeholders as asyncpg's ``$1, $2, ...`` (our statements have no ``?`` in literals)."""
    count = 0

    def number(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    return re.sub(r"\?", number, sql)


class _PgConn:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        await self._conn.execute(numbered(sql), *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = [tuple(r) for r in rows]
        if batch:
            await self._conn.executemany(numbered(sql), batch)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self._conn.fetch(numbered(sql), *args)]


class PostgresDatabase:
    """A PostgreSQL server through an asyncpg pool (several ingests and workers share it)."""

    engine = "postgres"
    for_update = " FOR UPDATE"

    def __init__(self, url: str, *, max_size: int = 4) -> None:
        self.url = url
        self.max_size = max_size
        self._pool: Any = None

    async def open(self) -> PostgresDatabase:
        import asyncpg

        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.max_size)
        return self

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        assert self._pool is not None, "open() first"
        async with self._pool.acquire() as conn, conn.transaction():
            yield _PgConn(conn)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        assert self._pool is not None, "open() first"
        return [tuple(r) for r in await self._pool.fetch(numbered(sql), *args)]

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


# --- opening, migrations -----------------------------------------------------------------------------


def describe(settings: Settings) -> str:
    """Where the store is, for logs (no password)."""
    url = settings.database_url
    if url and url.startswith(("postgresql://", "postgres://")):
        return "postgres " + re.sub(r"//[^@/]*@", "//", url)
    return f"sqlite {settings.store_path}"


async def open_database(settings: Settings) -> Database:
    """The store of these settings, migrated: PostgreSQL for a ``postgresql://`` DATABASE_URL, else
    the SQLite file ``STORE_PATH``."""
    url = settings.database_url
    db: Database
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "DATABASE_URL must be postgresql://... (unset it for the SQLite file STORE_PATH)"
            )
        db = await PostgresDatabase(url).open()
    else:
        db = await SqliteDatabase(settings.store_path).open()
    try:
        await migrate(db)
    except BaseException:
        await db.close()
        raise
    return db


def migrations() -> list[tuple[str, str]]:
    """(version, SQL) of every migration file, in order."""
    out = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        found = _MIGRATION_NAME.match(path.name)
        if not found:
            raise ValueError(f"migration file {path.name} is not named NNN_name.sql")
        out.append((path.stem, path.read_text()))
    return out


def statements(sql: str) -> list[str]:
    """A migration's statements: ``;`` ends one; ``--`` comments are dropped."""
    text = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [s.strip() for s in text.split(";") if s.strip()]


async def migrate(db: Database) -> list[str]:
    """Apply the missing migrations in order, under a lock (concurrent openers wait); returns them."""
    applied: list[str] = []
    async with db.transaction() as conn:
        if db.engine == "postgres":
            await conn.execute(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, sql in migrations():
            if version in done:
                continue
            for statement in statements(sql):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) "
                "VALUES (?, CAST(CURRENT_TIMESTAMP AS TEXT))",
                (version,),
            )
            applied.append(version)
    return applied


# --- the store's statements --------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryRow:
    id: str
    tenant: str
    task_id: str
    created_us: int
    doc: bytes  # the list item as JSON
    partition: int
    offset: int


@dataclass(frozen=True)
class EventRow:
    event_id: str
    tenant: str
    domain: str
    contract: str
    received_us: int
    envelope: bytes


@dataclass(frozen=True)
class ErasureRow:
    id: str
    tenant: str
    erased_us: int


@dataclass
class PartitionBatch:
    """What one input partition's records became, and the offsets to commit with it."""

    topic: str
    partition: int
    expected: int | None  # the next offset the database held when this writer took the partition
    next_offset: int
    entries: list[EntryRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    erasures: list[ErasureRow] = field(default_factory=list)


class OffsetConflict(Exception):
    """The database's offsets moved since this writer read them: another owner wrote; nothing committed."""

    def __init__(self, partitions: list[tuple[str, int, int | None]]) -> None:
        super().__init__(f"offsets moved under this writer: {partitions}")
        self.partitions = partitions


INSERT_ENTRY = (
    "INSERT INTO feedback_entries (id, tenant, task_id, created_us, doc, source_partition, source_offset) "
    "SELECT ?, ?, ?, CAST(? AS BIGINT), ?, CAST(? AS INTEGER), CAST(? AS BIGINT) "
    "WHERE NOT EXISTS (SELECT 1 FROM feedback_erasures WHERE id = ?) ON CONFLICT (id) DO NOTHING"
)
INSERT_EVENT = (
    "INSERT INTO feedback_events (event_id, tenant, domain, contract, received_us, envelope) "
    "SELECT ?, ?, ?, ?, CAST(? AS BIGINT), ? "
    "WHERE NOT EXISTS (SELECT 1 FROM feedback_erasures WHERE id = ?) ON CONFLICT (event_id) DO NOTHING"
)
INSERT_ERASURE = (
    "INSERT INTO feedback_erasures (id, tenant, erased_us) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING"
)
DELETE_ENTRY = "DELETE FROM feedback_entries WHERE id = ? AND tenant = ?"
DELETE_EVENT = "DELETE FROM feedback_events WHERE event_id = ? AND tenant = ?"
UPSERT_OFFSET = (
    "INSERT INTO store_offsets (consumer, topic, kafka_partition, next_offset) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (consumer, topic, kafka_partition) DO UPDATE SET next_offset = excluded.next_offset"
)
#: The list query (seed 003): a tenant's entries, of one task or all, newest first.
LIST_BY_TASK = (
    "SELECT doc FROM feedback_entries WHERE tenant = ? AND task_id = ? "
    "ORDER BY created_us DESC, id DESC LIMIT ? OFFSET ?"
)
LIST_ALL = (
    "SELECT doc FROM feedback_entries WHERE tenant = ? ORDER BY created_us DESC, id DESC LIMIT ? OFFSET ?"
)


def _text(value: bytes) -> str:
    return value.decode()


async def write_batch(db: Database, consumer: str, batches: Sequence[PartitionBatch]) -> None:
    """Rows and offsets of ``batches`` in one transaction; :class:`OffsetConflict` (nothing written)
    if any partition's offset in the database is not the one this writer expects."""
    async with db.transaction() as conn:
        moved: list[tuple[str, int, int | None]] = []
        for b in batches:
            rows = await conn.fetch(
                "SELECT next_offset FROM store_offsets "
                "WHERE consumer = ? AND topic = ? AND kafka_partition = ?" + db.for_update,
                (consumer, b.topic, b.partition),
            )
            current = int(rows[0][0]) if rows else None
            if current != b.expected:
                moved.append((b.topic, b.partition, current))
        if moved:
            raise OffsetConflict(moved)
        erasures = [e for b in batches for e in b.erasures]
        await conn.executemany(INSERT_ERASURE, [(e.id, e.tenant, e.erased_us) for e in erasures])
        await conn.executemany(DELETE_ENTRY, [(e.id, e.tenant) for e in erasures])
        await conn.executemany(DELETE_EVENT, [(e.id, e.tenant) for e in erasures])
        await conn.executemany(
            INSERT_ENTRY,
            [
                (r.id, r.tenant, r.task_id, r.created_us, _text(r.doc), r.partition, r.offset, r.id)
                for b in batches
                for r in b.entries
            ],
        )
        await conn.executemany(
            INSERT_EVENT,
            [
                (e.event_id, e.tenant, e.domain, e.contract, e.received_us, _text(e.envelope), e.event_id)
                for b in batches
                for e in b.events
            ],
        )
        await conn.executemany(
            UPSERT_OFFSET, [(consumer, b.topic, b.partition, b.next_offset) for b in batches]
        )


async def read_offsets(db: Database, consumer: str, topic: str) -> dict[int, int]:
    """The committed next offset per partition of ``topic`` for ``consumer``."""
    rows = await db.fetch(
        "SELECT kafka_partition, next_offset FROM store_offsets WHERE consumer = ? AND topic = ?",
        (consumer, topic),
    )
    return {int(p): int(o) for p, o in rows}


async def list_entries(
    db: Database, tenant: str, task_id: str | None, limit: int = DEFAULT_LIMIT, offset: int = 0
) -> list[bytes]:
    """The list items (JSON) of a tenant's entries, newest first."""
    if task_id is None:
        rows = await db.fetch(LIST_ALL, (tenant, limit, offset))
    else:
        rows = await db.fetch(LIST_BY_TASK, (tenant, task_id, limit, offset))
    return [r[0].encode() if isinstance(r[0], str) else bytes(r[0]) for r in rows]


async def get_entry(db: Database, tenant: str, entry_id: str) -> bytes | None:
    rows = await db.fetch("SELECT doc FROM feedback_entries WHERE id = ? AND tenant = ?", (entry_id, tenant))
    return str(rows[0][0]).encode() if rows else None


async def erase(db: Database, erasure: ErasureRow) -> bool:
    """Remove an entry (and its event row) and keep the deleted marker; True if a row was removed."""
    async with db.transaction() as conn:
        found = await conn.fetch(
            "SELECT id FROM feedback_entries WHERE id = ? AND tenant = ?", (erasure.id, erasure.tenant)
        )
        await conn.execute(INSERT_ERASURE, (erasure.id, erasure.tenant, erasure.erased_us))
        await conn.execute(DELETE_ENTRY, (erasure.id, erasure.tenant))
        await conn.execute(DELETE_EVENT, (erasure.id, erasure.tenant))
    return bool(found)


async def count_entries(db: Database, tenant: str | None = None) -> int:
    if tenant is None:
        rows = await db.fetch("SELECT COUNT(*) FROM feedback_entries")
    else:
        rows = await db.fetch("SELECT COUNT(*) FROM feedback_entries WHERE tenant = ?", (tenant,))
    return int(rows[0][0])


async def explain_list(db: Database, with_task: bool = True) -> list[str]:
    """The engine's plan of the list query (docs/design.md shows it)."""
    sql = LIST_BY_TASK if with_task else LIST_ALL
    task = "550e8400-e29b-41d4-a716-446655440000"
    args: tuple[Any, ...] = ("dev", task, 20, 0) if with_task else ("dev", 20, 0)
    if db.engine == "sqlite":
        return [str(r[-1]) for r in await db.fetch("EXPLAIN QUERY PLAN " + sql, args)]
    return [str(r[0]) for r in await db.fetch("EXPLAIN " + sql, args)]
