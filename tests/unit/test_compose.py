"""docker-compose.yml, deploy/prometheus/prometheus.yml and the Dockerfile agree with the settings code."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from pipeline.settings import ALL_STAGES, REPO_ROOT, Settings

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PROMETHEUS = yaml.safe_load(
    (REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8")
)
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")

WORKERS = ("worker-expand", "worker-count", "worker-store")
APP_SERVICES = ("ingest", *WORKERS)
FIELDS = {name.upper() for name in Settings.model_fields}


class ComposeSettings(Settings):
    """Settings from the given values and the defaults only: this machine's environment is ignored."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


DEFAULTS = ComposeSettings()


def env(service: str) -> dict[str, str]:
    raw = SERVICES[service].get("environment") or {}
    if isinstance(raw, list):  # the "NAME=value" form
        raw = dict(item.split("=", 1) for item in raw)
    return {str(k): str(v) for k, v in raw.items()}


def settings_of(service: str) -> Settings:
    """The settings a service runs with: its compose environment over the defaults."""
    return ComposeSettings.model_validate({k.lower(): v for k, v in env(service).items()})


def listen_port(service: str) -> int:
    s = settings_of(service)
    return s.ingest_port if service == "ingest" else s.worker_port


def published(service: str) -> list[tuple[int, int]]:
    """(host, container) port pairs of a service's short-syntax ``ports``."""
    pairs = []
    for entry in SERVICES[service].get("ports", []):
        parts = str(entry).split("/")[0].split(":")
        pairs.append((int(parts[-2]), int(parts[-1])))
    return pairs


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` -> {NAME: (host, port)} (an empty host binds every interface)."""
    out = {}
    for item in value.split(","):
        name, address = item.strip().split("://")
        host, port = address.rsplit(":", 1)
        out[name] = (host, int(port))
    return out


# --- services --------------------------------------------------------------------------------------


def test_the_services_exist() -> None:
    assert {"kafka", "ingest", *WORKERS, "prometheus"} <= set(SERVICES)


def test_the_app_services_build_this_repo_and_wait_for_a_healthy_broker() -> None:
    assert "healthcheck" in SERVICES["kafka"]
    for service in APP_SERVICES:
        assert SERVICES[service]["build"] in (".", {"context": "."})
        assert SERVICES[service]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_commands() -> None:
    assert SERVICES["ingest"]["command"][:3] == ["python", "-m", "pipeline.api.ingest"]
    for service in WORKERS:
        command = SERVICES[service]["command"]
        if isinstance(command, str):
            command = shlex.split(command)
        assert command[:4] == ["python", "-m", "pipeline.stream.worker", "worker"]


@pytest.mark.parametrize("service", APP_SERVICES)
def test_app_environment_is_settings(service: str) -> None:
    unknown = set(env(service)) - FIELDS
    assert not unknown, f"{service}: {sorted(unknown)} are not fields of pipeline.settings.Settings"
    settings_of(service)  # and every value parses


def test_every_stage_runs_in_a_worker_process_of_its_own() -> None:
    stages = [settings_of(s).worker_stages for s in WORKERS]
    assert sorted(stages) == sorted((stage,) for stage in ALL_STAGES)


def test_the_workers_are_one_consumer_group_and_the_ingests_unique_transactional_ids() -> None:
    assert len({settings_of(s).worker_id for s in WORKERS}) == 1
    ingests = [s for s in SERVICES if s == "ingest" or s.startswith("ingest-")]
    assert len({env(s).get("INGEST_INSTANCE") for s in ingests}) == len(ingests)
    assert all(env(s).get("INGEST_INSTANCE") for s in ingests)  # not the container's random hostname


@pytest.mark.parametrize("service", APP_SERVICES)
def test_the_tenants_file_is_in_the_image(service: str) -> None:
    path = env(service)["TENANTS_FILE"]
    assert path in image_files()


# --- ports -----------------------------------------------------------------------------------------


def test_settings_defaults_are_the_documented_ports() -> None:
    assert DEFAULTS.ingest_port == 8080
    assert DEFAULTS.worker_port == 6066


@pytest.mark.parametrize("service", APP_SERVICES)
def test_published_ports_reach_the_port_the_service_listens_on(service: str) -> None:
    port = listen_port(service)
    assert [c for _, c in published(service)] == [port]
    # and on every interface of the container, or nothing outside it can connect
    s = settings_of(service)
    assert (s.ingest_host if service == "ingest" else s.worker_host) == "0.0.0.0"


def test_host_ports_are_the_settings_defaults() -> None:
    assert published("ingest") == [(DEFAULTS.ingest_port, int(env("ingest")["INGEST_PORT"]))]
    assert published("worker-expand") == [(DEFAULTS.worker_port, int(env("worker-expand")["WORKER_PORT"]))]
    hosts = [h for s in SERVICES for h, _ in published(s)]
    assert len(hosts) == len(set(hosts)), "two services publish the same host port"


def test_the_image_exposes_the_service_ports() -> None:
    exposed = {int(p) for line in instructions("EXPOSE") for p in line.split()}
    assert {DEFAULTS.ingest_port, DEFAULTS.worker_port} <= exposed


# --- kafka -----------------------------------------------------------------------------------------


KAFKA = env("kafka")


def test_the_app_services_bootstrap_from_the_internal_listener() -> None:
    advertised = listeners(KAFKA["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(KAFKA["KAFKA_LISTENERS"])
    internal = KAFKA["KAFKA_INTER_BROKER_LISTENER_NAME"]
    host, port = advertised[internal]
    assert host == "kafka" and "kafka" in SERVICES  # reachable by service name on the compose network
    assert bound[internal][1] == port
    for service in APP_SERVICES:
        assert env(service)["KAFKA_BOOTSTRAP_SERVERS"] == f"{host}:{port}"
    protocols = dict(item.split(":") for item in KAFKA["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(bound) <= set(protocols)
    assert set(advertised) <= set(bound)


def test_kafka_is_a_single_kraft_node_where_transactions_work() -> None:
    assert set(KAFKA["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "KAFKA_ZOOKEEPER_CONNECT" not in KAFKA
    controller = KAFKA["KAFKA_CONTROLLER_LISTENER_NAMES"]
    voter_id, voter = KAFKA["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")
    assert voter_id == KAFKA["KAFKA_NODE_ID"]
    assert voter == f"kafka:{listeners(KAFKA['KAFKA_LISTENERS'])[controller][1]}"
    factors = {k: v for k, v in KAFKA.items() if k.endswith("_REPLICATION_FACTOR")}
    assert {
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
    } <= set(factors)
    assert set(factors.values()) == {"1"}
    assert KAFKA["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert KAFKA["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # every topic is declared in topics.py
    for service in APP_SERVICES:
        assert settings_of(service).topic_replication == 1  # one broker


def test_only_the_kafka_service_has_broker_image_variables() -> None:
    for service in APP_SERVICES:
        assert {k for k in env(service) if k.startswith("KAFKA_")} <= {"KAFKA_BOOTSTRAP_SERVERS"}


# --- prometheus ------------------------------------------------------------------------------------


def test_prometheus_mounts_the_repo_config_and_its_alert_rules() -> None:
    volumes = SERVICES["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes
    mounted = {Path(v.split(":")[1]).name: v.split(":")[0] for v in volumes}
    for rules in PROMETHEUS["rule_files"]:  # relative to the config's directory in the container
        assert (REPO_ROOT / mounted[rules]).is_file(), rules


# --- grafana ---------------------------------------------------------------------------------------


def test_grafana_provisions_prometheus_and_the_dashboard() -> None:
    grafana = SERVICES["grafana"]
    mounts = {v.split(":")[1]: REPO_ROOT / v.split(":")[0] for v in grafana["volumes"]}
    provisioning = mounts["/etc/grafana/provisioning"]
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and "9090:9090" in SERVICES["prometheus"]["ports"]
    [provider] = yaml.safe_load((provisioning / "dashboards" / "feedstream.yml").read_text())["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert (dashboards / "feedstream.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"]) and (dashboards / Path(home).name).is_file()
    assert "prometheus" in grafana["depends_on"]


def test_prometheus_scrapes_every_app_service_where_it_listens() -> None:
    targets = [
        target
        for job in PROMETHEUS["scrape_configs"]
        for group in job.get("static_configs", [])
        for target in group["targets"]
    ]
    scraped = set()
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert host in SERVICES, f"{target}: no compose service {host}"
        assert int(port) == listen_port(host), f"{target}: {host} listens on {listen_port(host)}"
        scraped.add(host)
    assert scraped == set(APP_SERVICES)
    for job in PROMETHEUS["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"


# --- Dockerfile ------------------------------------------------------------------------------------


def instructions(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.splitlines() if line.upper().startswith(name + " ")]


def copies() -> list[tuple[list[str], str]]:
    out = []
    for args in instructions("COPY"):
        parts = [p for p in args.split() if not p.startswith("--")]
        out.append((parts[:-1], parts[-1]))
    return out


def workdir() -> Path:
    return Path(instructions("WORKDIR")[-1])


def image_files() -> set[str]:
    """Absolute paths of the repo files the Dockerfile copies into the image."""
    files = set()
    for sources, dest in copies():
        target = workdir() / dest
        for source in sources:
            path = REPO_ROOT / source
            inside = target / path.name if dest.endswith("/") or len(sources) > 1 else target
            if path.is_dir():
                files |= {str(inside / p.relative_to(path)) for p in path.rglob("*") if p.is_file()}
            else:
                files.add(str(inside))
    return files


def test_the_dockerfile_copies_what_the_image_needs() -> None:
    sources = [s for srcs, _ in copies() for s in srcs]
    for needed in ("pyproject.toml", "README.md", "pipeline", "deploy/tenants.dev.yaml"):
        assert needed in sources, f"the Dockerfile does not copy {needed}"
    ignored = {line.strip().rstrip("/") for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert source not in ignored, f"COPY {source}: excluded by .dockerignore"
    assert str(workdir() / "pipeline" / "stream" / "worker.py") in image_files()
    assert any("pip install ." in line for line in instructions("RUN"))
