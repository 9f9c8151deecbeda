"""The stream worker: a faust app hosting the stages (expand and count, exactly once on Kafka
transactions; the store stage, exactly once into the SQL feedback store), ``/ready`` and ``/metrics``.

Run with ``python -m pipeline.stream.worker worker`` (faust's CLI; ``... ensure-topics`` is an operator
command). ``WORKER_STAGES`` (default ``expand,count,store``) picks the stages this process runs, so
each stage can be its own process (one core each) and scale out: processes running the same stage
share its partitions through the stage's consumer group. The stages run on
:mod:`pipeline.stream.runtime` rather than faust agents under faust's ``exactly_once`` (its module
docstring says why); faust gives the process its CLI, lifecycle
(``@app.service``), web server and views (``@app.page``), and starts none of its own Kafka clients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import faust
import mode
from faust.app.base import BootStrategy
from faust.web import Request, Response, View

from pipeline import gcpolicy, memtrace, metrics, tracing
from pipeline.kafka import topics
from pipeline.ops.page import render_status
from pipeline.ops.status import collect
from pipeline.rules.triplets import Limits
from pipeline.settings import Settings, get_settings
from pipeline.store.sql import Database, describe, open_database
from pipeline.stream.count import CountStage
from pipeline.stream.expand import ExpandStage
from pipeline.stream.partitions import Clients
from pipeline.stream.runtime import StageRunner
from pipeline.stream.store import StoreRunner
from pipeline.tenants import load_tenants

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

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
        group_id=settings.stage_group("expand"),
        input_topic=names.raw,
        changelog_topic=names.expand_state,
        dlq_topic=names.dlq,
        limits=sizes,
        max_batch=settings.stage_batch,
        clients=clients,
    )
    count = StageRunner(
        CountStage(
            names,
            threshold_for,
            source=f"/feedstream/{settings.worker_id}",
            time_trigger_for=registry.time_trigger_for,
        ),
        bootstrap=bootstrap,
        group_id=settings.stage_group("count"),
        input_topic=names.units,
        changelog_topic=names.count_state,
        dlq_topic=names.dlq,
        limits=sizes,
        max_batch=settings.stage_batch,
        clients=clients,
    )
    return expand, count


def build_store_runner(settings: Settings, bootstrap: str, db: Database) -> StoreRunner:
    """The store stage wired to its topics and database (its own consumer group and offsets)."""
    names = topics.topic_names(settings)
    return StoreRunner(
        db,
        bootstrap=bootstrap,
        group_id=settings.stage_group("store"),
        raw_topic=names.raw,
        erasures_topic=names.erasures,
        max_batch=settings.stage_batch,
    )


def create_app(settings: Settings, bootstrap: str) -> faust.App:
    """The worker: a faust app whose extension points host our parts (one function, so tests and the
    CLI build it the same way): ``@app.service`` the stages, ``@app.page`` the views,
    ``@app.command`` operator commands."""
    app = faust.App(
        settings.worker_id,
        broker=faust_broker_urls(bootstrap),
        store="memory://",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        web_host=settings.worker_host,
        web_port=settings.worker_port,
        datadir=str(settings.worker_data_dir),
    )
    # faust starts its web server and sensors, not its own Kafka clients: the stages consume, produce
    # and commit on their own (pipeline.stream.runtime), so faust's consumer would only join a group of
    # its own (with a leader topic) that nothing reads: an idle member to rebalance, and after a crash
    # a dead one whose session must expire before faust calls the app started.
    app.boot_strategy = BootStrategy(app, enable_kafka=False)

    running: list[Stages] = []

    @app.service
    class Stages(mode.Service):
        """The stages of ``WORKER_STAGES`` (all three by default), started and stopped with the app.
        Topics are ensured first (the stages' producers need their partitions); the store stage's
        database is opened only if it runs here, and closed after it stops."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.runners: list[StageRunner[Any] | StoreRunner] = []
            self.db: Database | None = None
            self.tracing: TracerProvider | None = None
            running.append(self)

        async def on_start(self) -> None:
            await topics.ensure_topics(bootstrap, settings)
            stages = settings.worker_stages
            log.info("worker stages: %s", ",".join(stages))
            if "expand" in stages or "count" in stages:
                expand, count = build_runners(settings, bootstrap)
                self.runners += [r for r in (expand, count) if r.stage.name in stages]
            if "store" in stages:
                self.db = await open_database(settings)
                log.info("feedback store: %s", describe(settings))
                self.runners.append(build_store_runner(settings, bootstrap, self.db))
            self.tracing = tracing.setup(f"feedstream-worker-{'-'.join(stages)}")
            for runner in self.runners:
                if self.tracing is not None and isinstance(runner, StageRunner):
                    runner.tracer = self.tracing.get_tracer("pipeline.stream")
                await runner.start()
            gcpolicy.tune(f"worker {','.join(stages)}", enabled=settings.gc_tuned)

        async def on_stop(self) -> None:
            for runner in reversed(self.runners):
                with contextlib.suppress(Exception):
                    await runner.stop()
            if self.db is not None:
                await self.db.close()
            if self.tracing is not None:
                self.tracing.shutdown()  # flush the spans still batched

        def readiness(self) -> tuple[bool, dict[str, list[int]]]:
            """Ready once every stage this process runs owns its share of partitions (their state
            restored); the answer names those stages only."""
            started = len(self.runners) == len(settings.worker_stages)
            ready = started and all(r.ready.is_set() for r in self.runners)
            owned = {
                r.stage.name if isinstance(r, StageRunner) else r.name: r.partitions for r in self.runners
            }
            return ready, owned

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(metrics.render(), content_type=metrics.CONTENT_TYPE_NO_CHARSET)

    snapshot: list[tuple[float, str]] = []  # (monotonic time, page): one collection per second at most

    @app.page("/status")
    class Status(View):
        """The operator's page (pipeline.ops.page): read from Kafka with its own short-lived clients,
        never the stages'; cached a second so refreshing tabs cost one collection."""

        async def get(self, request: Request) -> Response:
            now = time.monotonic()
            if not snapshot or now - snapshot[0][0] > 1.0:
                page = render_status(await collect(settings, bootstrap), worker=settings.worker_id)
                snapshot[:] = [(now, page)]
            return self.html(snapshot[0][1])

    @app.page("/ready")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            ready, owned = running[0].readiness() if running else (False, {})
            return self.json({"ready": ready, **owned}, status=200 if ready else 503)

    @app.command()
    async def ensure_topics() -> None:
        """Create the pipeline's topics, or bring their partitions and size limits up to date."""
        await topics.ensure_topics(bootstrap, settings)
        for name in dataclasses.astuple(topics.topic_names(settings)):
            print(name)

    return app


def _bootstrap() -> str:
    bootstrap = get_settings().kafka_bootstrap_servers
    if not bootstrap:
        raise SystemExit("KAFKA_BOOTSTRAP_SERVERS is not set (make run and the tests set it for you)")
    return bootstrap


if __name__ == "__main__":
    memtrace.maybe_start("worker")
    create_app(get_settings(), _bootstrap()).main()
