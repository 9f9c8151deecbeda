"""Shared fixtures: a real Kafka broker (pipeline.kafka.broker), per-session topics, live services."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.kafka.broker import Broker, find_broker
from pipeline.kafka.topics import TopicNames, delete_prefixed_topics, ensure_topics, topic_names
from pipeline.procs import Service, child_env, free_port, ingest_service, worker_service
from pipeline.settings import Settings
from pipeline.store.postgres import PostgresServer, find_postgres
from tests.kafka_helpers import run

#: the in-process ingest harness (the ``edge`` fixture) for every test module
pytest_plugins = ["tests.inprocess"]

LOG_DIR = Path(__file__).resolve().parent.parent / ".local" / "test-logs"
TEST_TENANTS = Path(__file__).resolve().parent / "data" / "tenants.test.yaml"


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    with find_broker() as b:
        yield b


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the feedback store (pipeline.store.postgres: DATABASE_URL, Docker, or a
    throwaway local server), stopped after the session if we started it."""
    with find_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def prefix() -> str:
    """Every test session writes to its own topics, so runs never see each other's data."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture(scope="session")
def settings(broker: Broker, prefix: str) -> Iterator[Settings]:
    s = Settings(
        kafka_bootstrap_servers=broker.bootstrap,
        topic_prefix=prefix,
        worker_id=f"fs-{prefix[:-1]}",
        tenants_file=TEST_TENANTS,
        shared_pool_threshold=2,
    )
    run(ensure_topics(broker.bootstrap, s))
    yield s
    # the session's topics go away with it (a long-lived local broker would otherwise fill up);
    # workers and ingests are stopped by then: their fixtures depend on this one
    run(delete_prefixed_topics(broker.bootstrap, prefix))
    run(delete_prefixed_topics(broker.bootstrap, s.worker_id + "-"))  # faust's own leader topic


@pytest.fixture(scope="session")
def names(settings: Settings) -> TopicNames:
    return topic_names(settings)


@pytest.fixture(scope="session")
def service_env(settings: Settings) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "COV_")) and k not in ("DATABASE_URL", "STORE_PATH")
    }
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers or "",
        TOPIC_PREFIX=settings.topic_prefix,
        WORKER_ID=settings.worker_id,
        INGEST_INSTANCE=f"ingest-{settings.topic_prefix[:-1]}",
        TENANTS_FILE=str(TEST_TENANTS),
        SHARED_POOL_THRESHOLD="2",
        # the session's own feedback store (SQLite); tests of PostgreSQL set DATABASE_URL themselves
        STORE_PATH=str(LOG_DIR / settings.topic_prefix / "store.sqlite3"),
        # the suite sends dozens of 401s back to back from one address (the default throttles
        # them to 20/s: tests/unit/test_edge.py proves the throttle on its own ingest)
        AUTH_FAILURES_PER_S="1000",
    )
    return env


@pytest.fixture(scope="session")
def worker(service_env: dict[str, str]) -> Iterator[Service]:
    svc = worker_service(service_env, free_port(), LOG_DIR / service_env["TOPIC_PREFIX"]).start()
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def ingest(service_env: dict[str, str]) -> Iterator[Service]:
    svc = ingest_service(service_env, free_port(), LOG_DIR / service_env["TOPIC_PREFIX"]).start()
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


# --- dedicated ingests (tests/integration/test_ingest_*.py) ---------------------------------------


@pytest.fixture(scope="module")
def ingest_factory(service_env: dict[str, str]) -> Iterator[Callable[..., Service]]:
    """Start extra ingests with overridden settings (e.g. ``max_body_bytes=2048``); stopped after the module.

    Each gets its own transactional id, so it never fences the session ingest.
    """
    started: list[Service] = []

    def start(name: str, **overrides: object) -> Service:
        env = child_env(
            service_env,
            ingest_instance=f"{service_env['INGEST_INSTANCE']}-{name}-{uuid.uuid4().hex[:6]}",
            **overrides,
        )
        svc = ingest_service(env, free_port(), LOG_DIR / service_env["TOPIC_PREFIX"], name=name).start()
        started.append(svc)
        svc.wait_ready()
        return svc

    try:
        yield start
    finally:
        for svc in started:
            svc.stop()
