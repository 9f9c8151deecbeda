"""Shared fixtures: a real Kafka broker (pipeline.broker), per-session topics, live services."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.broker import Broker, find_broker
from pipeline.procs import Service, free_port, ingest_service, worker_service
from pipeline.settings import Settings
from pipeline.topics import TopicNames, ensure_topics, topic_names
from tests.kafka_helpers import run

LOG_DIR = Path(__file__).resolve().parent.parent / ".local" / "test-logs"
TEST_TENANTS = Path(__file__).resolve().parent / "data" / "tenants.test.yaml"


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    with find_broker() as b:
        yield b


@pytest.fixture(scope="session")
def prefix() -> str:
    """Every test session writes to its own topics, so runs never see each other's data."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture(scope="session")
def settings(broker: Broker, prefix: str) -> Settings:
    s = Settings(
        kafka_bootstrap_servers=broker.bootstrap,
        topic_prefix=prefix,
        worker_id=f"fs-{prefix[:-1]}",
        tenants_file=TEST_TENANTS,
        shared_pool_threshold=2,
    )
    run(ensure_topics(broker.bootstrap, s))
    return s


@pytest.fixture(scope="session")
def names(settings: Settings) -> TopicNames:
    return topic_names(settings)


@pytest.fixture(scope="session")
def service_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers or "",
        TOPIC_PREFIX=settings.topic_prefix,
        WORKER_ID=settings.worker_id,
        INGEST_INSTANCE=f"ingest-{settings.topic_prefix[:-1]}",
        TENANTS_FILE=str(TEST_TENANTS),
        SHARED_POOL_THRESHOLD="2",
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
