-- The feedback store (issue 10): portable SQL, applied as is on SQLite and PostgreSQL.
-- Times are microseconds since the epoch (BIGINT): one ordering on both engines; the exact
-- created_at string the POST answered is kept inside doc.

-- Seed 003 scored entries, one row per entry; doc is the list item exactly as answered.
CREATE TABLE feedback_entries (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    task_id TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    doc TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset BIGINT NOT NULL
);
-- GET /api/v1/feedback?task_id=: tenant and task equal, newest first, id breaks ties
CREATE INDEX feedback_entries_by_task ON feedback_entries (tenant, task_id, created_us DESC, id DESC);
-- GET /api/v1/feedback without task_id
CREATE INDEX feedback_entries_by_tenant ON feedback_entries (tenant, created_us DESC, id DESC);

-- Every raw event of every contract as a generic row (the envelope as written on feedback.raw).
CREATE TABLE feedback_events (
    event_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    domain TEXT NOT NULL,
    contract TEXT NOT NULL,
    received_us BIGINT NOT NULL,
    envelope TEXT NOT NULL
);
CREATE INDEX feedback_events_by_domain ON feedback_events (tenant, domain, received_us DESC, event_id DESC);

-- Erased ids: a replay of the original event never brings an erased entry back.
CREATE TABLE feedback_erasures (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    erased_us BIGINT NOT NULL
);

-- The store stage's consumed offsets, committed with the rows they produced (Kafka's group
-- offsets are not used).
CREATE TABLE store_offsets (
    consumer TEXT NOT NULL,
    topic TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (consumer, topic, kafka_partition)
);
