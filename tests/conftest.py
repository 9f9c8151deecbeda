"""Shared fixtures: a real Kafka broker (pipeline.kafka.broker), per-session topics, live services.

The suite runs on several processes (pytest-xdist, ``addopts`` in pyproject.toml). Every session
fixture then exists once per xdist worker, so everything it names is per session: topic prefix,
consumer groups, transactional ids, ports, log and data directories (all derived from ``prefix``).
The broker is shared: the first worker that needs it finds (or starts) it under a file lock, and only
the controlling process may stop one it started (CI), after every worker is done.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

from pipeline.kafka.broker import Broker, find_broker, local_running, stop_local
from pipeline.kafka.topics import TopicNames, delete_prefixed_topics, ensure_topics, topic_names
from pipeline.procs import Service, child_env, free_port, ingest_service, worker_service
from pipeline.settings import Settings
from pipeline.store.postgres import PostgresServer, find_postgres
from tests.kafka_helpers import run

#: the in-process ingest harness (the ``edge`` fixture) for every test module
pytest_plugins = ["tests.inprocess"]

LOCAL_DIR = Path(__file__).resolve().parent.parent / ".local"
LOG_DIR = LOCAL_DIR / "test-logs"
TEST_TENANTS = Path(__file__).resolve().parent / "data" / "tenants.test.yaml"

#: the controlling process notes whether the local broker ran before this session
_was_running_key = pytest.StashKey[bool]()


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    """The controlling process (or the only one without xdist) notes whether the local broker ran."""
    if not _is_xdist_worker(config) and not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        config.stash[_was_running_key] = local_running()


def pytest_unconfigure(config: pytest.Config) -> None:
    """In CI, stop the local broker if this run started it (workers never do: others may still use it)."""
    was_running = config.stash.get(_was_running_key, True)
    if not was_running and os.environ.get("CI") and local_running():
        stop_local()


@contextlib.contextmanager
def file_lock(name: str) -> Iterator[None]:
    """An exclusive lock between this checkout's test processes (xdist workers), released on exit."""
    LOCAL_DIR.mkdir(parents=True, exist_ok=True)
    with (LOCAL_DIR / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """One broker for every worker: found (or started) under a lock, so two workers never both start
    the local one; a worker never stops it (``pytest_unconfigure`` of the controller does, in CI)."""
    with contextlib.ExitStack() as stack:
        with file_lock("broker"):
            b = stack.enter_context(find_broker(stop_on_exit=False))
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


@contextlib.contextmanager
def ingest_starter(service_env: dict[str, str], *, own_instance: bool) -> Iterator[Callable[..., Service]]:
    """``start(name, **overrides)`` runs an ingest with overridden settings (e.g. ``max_body_bytes=2048``)
    and waits until it is ready; every ingest started is stopped on exit.

    With ``own_instance`` each gets its own transactional id, so it never fences the session ingest
    (without it, a test can start two ingests of one instance on purpose).
    """
    started: list[Service] = []

    def start(name: str, **overrides: object) -> Service:
        if own_instance:
            overrides.setdefault(
                "ingest_instance", f"{service_env['INGEST_INSTANCE']}-{name}-{uuid.uuid4().hex[:6]}"
            )
        env = child_env(service_env, **overrides)
        svc = ingest_service(env, free_port(), LOG_DIR / service_env["TOPIC_PREFIX"], name=name).start()
        started.append(svc)
        svc.wait_ready()
        return svc

    try:
        yield start
    finally:
        for svc in started:
            svc.stop()


@pytest.fixture(scope="module")
def ingest_factory(service_env: dict[str, str]) -> Iterator[Callable[..., Service]]:
    """Extra ingests with their own transactional ids, stopped after the module."""
    with ingest_starter(service_env, own_instance=True) as start:
        yield start


#: tests that stand alone (their own topics, processes and stores: nothing module-scoped, no order):
#: spread one by one over the workers instead of running after their module's other tests
SPREAD = (
    "tests/integration/test_exactly_once.py::",
    "tests/integration/test_feedback_store.py::test_sigkill_",
    "tests/integration/test_max_wait_sigkill.py::",
)


class ModuleScheduling(LoadScopeScheduling):  # type: ignore[misc]
    """xdist's ``loadscope`` (a module's tests on one worker, in order: module-scoped services start
    once, order-dependent checks such as ``test_zz_*`` see their module's requests) except ``SPREAD``.

    Not ``loadgroup`` with ``xdist_group`` marks: with pytest 9.2 xdist 3.8 loses the groups
    (pytest-dev/pytest-xdist#1386), silently."""

    def _split_scope(self, nodeid: str) -> str:
        return nodeid if nodeid.startswith(SPREAD) else super()._split_scope(nodeid)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> ModuleScheduling:
    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` go first (stable order otherwise), so no worker starts one at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
