"""The stream worker: a faust app hosting the two exactly-once stages and the store stage
(``pipeline.stream.store``: feedback.raw into the SQL feedback store), web and metrics.

Run with ``python -m pipeline.stream.worker worker`` (faust's CLI). The stages (``pipeline.stream.expand``,
``pipeline.stream.count``) run on :mod:`pipeline.stream.runtime` rather than faust agents under faust's
``exactly_once``: see the module docstring of ``pipeline.stream.runtime`` for why. faust provides the
process: CLI, lifecycle, the web server (``/ready``, ``/metrics``, ``/v1/domains/{domain}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import faust
from faust.web import Request, Response, View

from pipeline import memtrace, metrics
from pipeline.kafka import topics
from pipeline.rules.triplets import Limits
from pipeline.settings import Settings, get_settings
from pipeline.store.sql import Database, describe, open_database
from pipeline.stream.count import CountStage
from pipeline.stream.expand import ExpandStage
from pipeline.stream.partitions import Clients
from pipeline.stream.runtime import StageRunner
from pipeline.stream.store import StoreRunner
from pipeline.tenants import load_tenants

log = logging.getLogger(__name__)


def faust_broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip()]


def build_runners(
    settings: Settings, bootstrap: str, clients: Clients | None = None
) -> tuple[StageRunner[Any], StageRunner[Any]]:
    """The two stages wired to their topics (also used by the benchmark and tests; ``clients``: the
    Kafka clients, aiokafka on ``bootstrap`` by default, an in-memory Kafka in unit tests)."""
    names = topics.topic_names(settings)
    registry = load_tenants(settings.tenants_file)

    def threshold_for(domain: str) -> int | None:
        if domain == settings.shared_pool_domain:
            return settings.shared_pool_threshold
        return registry.threshold_for(domain)

    limits = Limits(max_items=settings.seeker_max_items, max_age_seconds=settings.seeker_max_age_s)
    sizes = topics.message_limits(settings)  # every output is checked against its topic's limit
    expand = StageRunner(
        ExpandStage(names, limits, settings.shared_pool_domain),
        bootstrap=bootstrap,
        group_id=f"{settings.worker_id}-expand",
        input_topic=names.raw,
        changelog_topic=names.expand_state,
        dlq_topic=names.dlq,
        limits=sizes,
        max_batch=settings.take_batch,
        clients=clients,
    )
    count = StageRunner(
        CountStage(names, threshold_for),
        bootstrap=bootstrap,
        group_id=f"{settings.worker_id}-count",
        input_topic=names.units,
        changelog_topic=names.count_state,
        dlq_topic=names.dlq,
        limits=sizes,
        max_batch=settings.take_batch,
        clients=clients,
    )
    return expand, count


def build_store_runner(settings: Settings, bootstrap: str, db: Database) -> StoreRunner:
    """The store stage wired to its topics and database (its own consumer group and offsets)."""
    names = topics.topic_names(settings)
    return StoreRunner(
        db,
        bootstrap=bootstrap,
        group_id=f"{settings.worker_id}-store",
        raw_topic=names.raw,
        erasures_topic=names.erasures,
        max_batch=settings.take_batch,
    )


class WorkerApp(faust.App):
    """A faust app that starts the stages as soon as it starts.

    faust runs ``@app.task`` only after its own consumer group settled, which after a crash
    waits for the dead member's session to expire; the stages have groups of their own and
    need not wait for faust's.
    """

    stage_starter: Any = None

    async def on_start(self) -> None:
        await super().on_start()
        if self.stage_starter is not None:
            self.add_future(self.stage_starter())


def create_app(settings: Settings, bootstrap: str) -> faust.App:
    """Build the faust app; one function so tests and the CLI build it the same way."""
    app = WorkerApp(
        settings.worker_id,
        broker=faust_broker_urls(bootstrap),
        store="memory://",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        web_host=settings.worker_host,
        web_port=settings.worker_port,
        datadir=str(settings.worker_data_dir),
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=20.0,
    )
    runners: list[StageRunner[Any] | StoreRunner] = []

    async def run_stages() -> None:
        await topics.ensure_topics(bootstrap, settings)
        db = await open_database(settings)
        log.info("feedback store: %s", describe(settings))
        runners.extend(build_runners(settings, bootstrap))
        runners.append(build_store_runner(settings, bootstrap, db))
        try:
            for runner in runners:
                await runner.start()
            await asyncio.Event().wait()
        finally:
            for runner in runners:
                with contextlib.suppress(Exception):
                    await runner.stop()
            await db.close()

    app.stage_starter = run_stages

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(metrics.render(), content_type=metrics.CONTENT_TYPE_NO_CHARSET)

    @app.page("/ready")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            ready = len(runners) == 3 and all(r.ready.is_set() for r in runners)
            body = {
                "ready": ready,
                **{r.stage.name if isinstance(r, StageRunner) else r.name: r.partitions for r in runners},
            }
            return self.json(body, status=200 if ready else 503)

    return app


def _bootstrap() -> str:
    bootstrap = get_settings().kafka_bootstrap_servers
    if not bootstrap:
        raise SystemExit("KAFKA_BOOTSTRAP_SERVERS is not set (make run and the tests set it for you)")
    return bootstrap


if __name__ == "__main__":
    memtrace.maybe_start("worker")
    create_app(get_settings(), _bootstrap()).main()
