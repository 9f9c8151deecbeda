"""One way to find a Kafka broker, used by ``make run``, the tests and the benchmarks alike.

Order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else testcontainers' Kafka (KRaft, Confluent image)
when a Docker engine answers; else the local Apache Kafka started by ``deploy/kafka/broker.sh``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.settings import REPO_ROOT

log = logging.getLogger(__name__)

BROKER_SCRIPT = REPO_ROOT / "deploy" / "kafka" / "broker.sh"
CP_KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"


class BrokerUnavailable(RuntimeError):
    """No broker could be found or started; the message says what to install."""


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    kind: str  # "env", "testcontainers" or "local"


def docker_available() -> bool:
    """True when a Docker engine answers (the client alone is not enough)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def local_port() -> int:
    return int(os.environ.get("LOCAL_KAFKA_PORT", "9092"))


def start_local() -> str:
    """Start (or reuse) the local KRaft broker; blocks until it accepts connections."""
    try:
        subprocess.run(["bash", str(BROKER_SCRIPT), "start"], check=True)
    except FileNotFoundError as exc:
        raise BrokerUnavailable("bash is needed to run deploy/kafka/broker.sh") from exc
    except subprocess.CalledProcessError as exc:
        raise BrokerUnavailable(
            "Could not start the local Kafka broker (deploy/kafka/broker.sh start failed). Install a JDK 17+ "
            "and Maven (apt-get install openjdk-17-jre-headless maven), or a Docker engine, or set "
            "KAFKA_BOOTSTRAP_SERVERS to an existing cluster."
        ) from exc
    return f"127.0.0.1:{local_port()}"


def stop_local() -> None:
    subprocess.run(["bash", str(BROKER_SCRIPT), "stop"], check=False)


def local_running() -> bool:
    return subprocess.run(["bash", str(BROKER_SCRIPT), "status"], check=False).returncode == 0


@contextlib.contextmanager
def find_broker(*, stop_on_exit: bool | None = None) -> Iterator[Broker]:
    """Yield a reachable broker; clean up what we started (a local broker only if ``stop_on_exit``)."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield Broker(env, "env")
        return
    if docker_available():
        try:  # testcontainers >= 4.13 moved it; the old path still works with a deprecation warning
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:
            from testcontainers.kafka import KafkaContainer

        with KafkaContainer(CP_KAFKA_IMAGE).with_kraft() as kafka:
            yield Broker(kafka.get_bootstrap_server(), "testcontainers")
        return
    was_running = local_running()
    bootstrap = start_local()
    try:
        yield Broker(bootstrap, "local")
    finally:
        if stop_on_exit or (stop_on_exit is None and not was_running and os.environ.get("CI")):
            stop_local()


if __name__ == "__main__":
    with find_broker(stop_on_exit=False) as broker:
        print(broker.bootstrap)
