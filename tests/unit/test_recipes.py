"""deploy/recipes: the Argo Events and KEDA recipes name our topic and run the example trainer with
options it has."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from pipeline.kafka.topics import TRIGGERS
from pipeline.settings import REPO_ROOT

RECIPES = REPO_ROOT / "deploy" / "recipes"


def trainer_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_trainer", REPO_ROOT / "examples" / "trainer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["example_trainer"] = module
    spec.loader.exec_module(module)
    return module


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((RECIPES / name).read_text()) if d]


def accepts(argv: list[str]) -> None:
    """The trainer's own parser takes these arguments (exits on an unknown one)."""
    assert argv[:2] == ["python", "examples/trainer.py"] and (REPO_ROOT / argv[1]).is_file()
    args = trainer_module().parser().parse_args(argv[2:])
    assert args.out


def test_argo_events_reads_the_triggers_topic_and_hands_each_trigger_to_the_trainer() -> None:
    source, sensor = docs("argo-events-trainer.yaml")
    assert (source["kind"], sensor["kind"]) == ("EventSource", "Sensor")
    [kafka] = source["spec"]["kafka"].values()
    assert kafka["topic"] == TRIGGERS and kafka["consumerGroup"]["groupName"]
    [dependency] = sensor["spec"]["dependencies"]
    assert dependency["eventSourceName"] == source["metadata"]["name"]
    [trigger] = sensor["spec"]["triggers"]
    job = trigger["template"]["k8s"]["source"]["resource"]
    [container] = job["spec"]["template"]["spec"]["containers"]
    [param] = trigger["template"]["k8s"]["parameters"]
    assert param["dest"] == "spec.template.spec.containers.0.args.1" and container["args"][0] == "--trigger"
    accepts(container["command"] + container["args"])


def test_keda_scales_the_trainer_on_its_own_groups_lag() -> None:
    [job] = docs("keda-scaledjob-trainer.yaml")
    assert job["kind"] == "ScaledJob"
    [scaler] = job["spec"]["triggers"]
    [container] = job["spec"]["jobTargetRef"]["template"]["spec"]["containers"]
    command = container["command"]
    assert scaler["type"] == "kafka" and scaler["metadata"]["topic"] == TRIGGERS
    assert command[command.index("--group") + 1] == scaler["metadata"]["consumerGroup"]
    accepts(command)
    assert Path(REPO_ROOT / "Dockerfile").read_text().count("COPY examples") == 1
