"""The worker is built on faust's extension points, not around them (no subclass of ``faust.App``)."""

from __future__ import annotations

from pathlib import Path

import faust
from faust.app.base import BootStrategy
from faust.cli.faust import cli

from pipeline.settings import Settings
from pipeline.stream.worker import create_app

TENANTS = Path(__file__).resolve().parent.parent / "data" / "tenants.test.yaml"


def test_the_worker_is_a_plain_faust_app_with_a_service_views_and_a_command() -> None:
    app = create_app(Settings(tenants_file=TENANTS, worker_id="fs-unit"), "127.0.0.1:9")
    assert type(app) is faust.App
    assert [s.__name__ for s in app._extra_services] == ["Stages"]
    assert {page.split(":")[-1] for page in app.web.views} >= {"/ready", "/metrics"}
    # faust's own Kafka clients (consumer, producer, topic conductor, tables) are not started
    strategy = app.boot_strategy
    assert isinstance(strategy, BootStrategy)
    assert not strategy.enable_kafka
    assert not list(strategy.kafka_consumer()) and not list(strategy.kafka_producer())
    assert not list(strategy.kafka_conductor()) and not list(strategy.tables())
    assert list(strategy.web_server()), "the web server (/ready, /metrics) still starts"
    assert "ensure-topics" in cli.commands  # python -m pipeline.stream.worker ensure-topics
