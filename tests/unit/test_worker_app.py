"""The worker is built on faust's extension points, not around them (no subclass of ``faust.App``)."""

from __future__ import annotations

from pathlib import Path

import faust
import pytest
from faust.app.base import BootStrategy
from faust.cli.faust import cli
from pydantic import ValidationError

from pipeline.procs import worker_service
from pipeline.run import worker_layout
from pipeline.settings import ALL_STAGES, Settings
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


def test_worker_stages_default_to_all_three_and_parse_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().worker_stages == ("expand", "count", "store") == ALL_STAGES
    monkeypatch.setenv("WORKER_STAGES", " count, expand ,")
    assert Settings().worker_stages == ("expand", "count")  # data-flow order, blanks ignored
    assert Settings(worker_stages="store,store").worker_stages == ("store",)


@pytest.mark.parametrize(("value", "message"), [("", "name at least one of"), ("expand,sort", "expand")])
def test_worker_stages_refuse_nothing_and_unknown_stages(value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(worker_stages=value)


def test_make_run_starts_one_worker_process_per_stage_on_ports_of_their_own() -> None:
    layout = worker_layout(Settings(worker_port=7000))
    assert layout == [
        ("worker-expand", 7000, ("expand",)),
        ("worker-count", 7001, ("count",)),
        ("worker-store", 7002, ("store",)),
    ]


def test_worker_service_names_the_stages_it_runs(tmp_path: Path) -> None:
    svc = worker_service({}, 7000, tmp_path, name="w", stages=["expand", "count"])
    assert svc.env["WORKER_STAGES"] == "expand,count"
    assert "WORKER_STAGES" not in worker_service({}, 7000, tmp_path).env  # all three, as before
