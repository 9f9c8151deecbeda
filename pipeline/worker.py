"""The faust app: topics, tables and agents wired to the pure stage functions.

Run with ``python -m pipeline.worker worker`` (faust's CLI). Settings come from the environment.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.web import Request, Response, View

from pipeline import metrics, topics
from pipeline.settings import Settings, get_settings


def faust_broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip()]


def create_app(settings: Settings, bootstrap: str) -> faust.App:
    """Build the faust app; one function so tests and the CLI build it the same way."""
    app = faust.App(
        settings.worker_id,
        broker=faust_broker_urls(bootstrap),
        processing_guarantee="exactly_once",
        store="memory://",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        web_host=settings.worker_host,
        web_port=settings.worker_port,
        datadir=str(settings.worker_data_dir),
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
    )
    names = topics.topic_names(settings)
    raw_topic = app.topic(names.raw, value_type=bytes, value_serializer="raw", key_serializer="raw")
    signals_topic = app.topic(names.signals, value_type=bytes, value_serializer="raw", key_serializer="raw")

    @app.agent(raw_topic)
    async def expand(stream: Any) -> None:
        async for key, value in stream.items():
            await signals_topic.send(key=key, value=value)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(metrics.render(), content_type=metrics.CONTENT_TYPE_NO_CHARSET)

    @app.page("/ready")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            ready = app.tables.recovery.completed.is_set() and not app.rebalancing  # type: ignore[attr-defined]
            return self.json({"ready": ready}, status=200 if ready else 503)

    return app


def _bootstrap_from_env() -> str:
    settings = get_settings()
    if not settings.kafka_bootstrap_servers:
        raise SystemExit("KAFKA_BOOTSTRAP_SERVERS is not set (make run and the tests set it for you)")
    return settings.kafka_bootstrap_servers


app = create_app(get_settings(), get_settings().kafka_bootstrap_servers or "127.0.0.1:9092")

if __name__ == "__main__":
    _bootstrap_from_env()
    app.main()
