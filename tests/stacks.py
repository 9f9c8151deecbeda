"""A pipeline of its own for a test: fresh topics (own prefix), own worker ids, a tenants file.

For tests that count what is on a topic (dead letters, lag, triggers) and so must not share the
session's topics with the other modules of their xdist worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from asyncio.subprocess import DEVNULL, PIPE
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import TopicNames, delete_prefixed_topics, ensure_topics, topic_names
from pipeline.procs import Service, child_env, free_port, worker_service
from pipeline.settings import Settings
from tests.conftest import LOG_DIR, TEST_TENANTS


@dataclass
class Stack:
    settings: Settings
    names: TopicNames
    env: dict[str, str]
    tenants: Path  # the test tenants plus the extra domains
    log_dir: Path

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap_servers or ""

    async def run(self, *args: str) -> tuple[int | None, str, str]:
        """``feedstream ARGS`` (as ``python -m pipeline.ops``) on the stack's topics: status, out, err.

        No terminal on stdin: a command that would ask (``dlq replay`` without ``--yes``) must refuse,
        not wait."""
        env = child_env(self.env, columns=200)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipeline.ops", *args, env=env, stdin=DEVNULL, stdout=PIPE, stderr=PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode, out.decode(), err.decode()

    async def feedstream(self, *args: str) -> str:
        """``feedstream ARGS``'s output; it must succeed."""
        status, out, err = await self.run(*args)
        assert status == 0, out + err
        return out

    def worker(self, tenants: Path | None = None, stages: tuple[str, ...] = ("expand", "count")) -> Service:
        """A worker on the stack's topics (``tenants``: another tenants file), ready."""
        env = child_env(self.env, tenants_file=tenants or self.tenants)
        svc = worker_service(env, free_port(), self.log_dir, stages=list(stages)).start()
        svc.wait_ready()
        return svc


@contextlib.contextmanager
def own_stack(
    broker: Broker,
    service_env: Mapping[str, str],
    tmp_path: Path,
    name: str,
    extra_domains: Mapping[str, Mapping[str, Any]] = {},
) -> Iterator[Stack]:
    """Topics ``<name><hex>.*`` (deleted after), and a tenants file with ``extra_domains`` added
    (tenant id -> {domain: config})."""
    prefix = f"{name}{uuid.uuid4().hex[:8]}."
    tenants = yaml.safe_load(TEST_TENANTS.read_text())
    for tenant in tenants["tenants"]:
        tenant.setdefault("domains", {}).update(extra_domains.get(tenant["id"], {}))
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump(tenants))
    settings = Settings(
        kafka_bootstrap_servers=broker.bootstrap,
        topic_prefix=prefix,
        worker_id=f"fs-{prefix[:-1]}",
        tenants_file=path,
        store_path=tmp_path / "store.sqlite3",
    )
    asyncio.new_event_loop().run_until_complete(ensure_topics(broker.bootstrap, settings))
    env = child_env(
        service_env,
        topic_prefix=prefix,
        worker_id=settings.worker_id,
        store_path=settings.store_path,
        tenants_file=path,
    )
    try:
        yield Stack(settings, topic_names(settings), env, path, LOG_DIR / prefix)
    finally:
        asyncio.new_event_loop().run_until_complete(delete_prefixed_topics(broker.bootstrap, prefix))
