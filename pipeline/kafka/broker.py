"""One way to find a Kafka broker, used by ``make run``, the tests and the benchmarks alike.

Order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else testcontainers' Kafka (KRaft, Confluent image)
when a Docker engine answers; else the local Apache Kafka started by ``deploy/kafka/broker.sh``.
When that broker's port is already held by a Kafka broker this checkout did not start (another
checkout's), that one is used, and said so; anything else on the port is an error naming the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.settings import REPO_ROOT

log = logging.getLogger(__name__)

BROKER_SCRIPT = REPO_ROOT / "deploy" / "kafka" / "broker.sh"
CP_KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"


class BrokerUnavailable(RuntimeError):
    """No broker could be found or started; the message says what to install."""


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    kind: str  # "env", "testcontainers", "local" or "existing" (someone else's on the local port)


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


# --- what holds a port -----------------------------------------------------------------------------


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 1.0) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def speaks_kafka(port: int, host: str = "127.0.0.1", timeout_s: float = 3.0) -> bool:
    """True when ``host:port`` answers a Kafka ApiVersions request (v0) with our correlation id.

    The bare protocol, so it needs no client library and cannot hang: one request, one bounded read.
    """
    correlation = 0x46530001
    client = b"feedstream-probe"
    header = struct.pack(">hhih", 18, 0, correlation, len(client)) + client  # ApiVersions v0
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            conn.settimeout(timeout_s)
            conn.sendall(struct.pack(">i", len(header)) + header)
            head = b""
            while len(head) < 10:  # size, correlation id, error code
                chunk = conn.recv(10 - len(head))
                if not chunk:
                    return False
                head += chunk
    except OSError:
        return False
    size, got, error = struct.unpack(">iih", head)
    return got == correlation and 6 <= size <= 1 << 20 and error in (0, 35)  # 35: unsupported version


def _command_of(pid: int) -> str | None:
    try:
        raw = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    if not words:
        return None
    # a JVM's class path is long and says nothing: keep the program and its main class/arguments
    words = [w for i, w in enumerate(words) if not (i and words[i - 1] in ("-cp", "-classpath"))]
    words = [w for w in words if w not in ("-cp", "-classpath") and not w.startswith(("-X", "-D"))]
    text = " ".join(" ".join(words).split())
    return text if len(text) <= 160 else text[:157] + "..."


def _listener_pid_ss(port: int) -> int | None:
    try:
        out = subprocess.run(
            ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"pid=(\d+)", out)
    return int(found.group(1)) if found else None


def _listener_pid_proc(port: int) -> int | None:
    """The pid owning a listening socket on ``port``, from /proc/net/tcp{,6} and /proc/*/fd."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def port_owner(port: int) -> str:
    """Who listens on ``port``: "pid N (command)" when visible (ss, else /proc), else "another process"."""
    pid = _listener_pid_ss(port) or _listener_pid_proc(port)
    if pid is None:
        return "another process"
    command = _command_of(pid)
    return f"pid {pid} ({command})" if command else f"pid {pid}"


def foreign_broker(port: int) -> Broker | None:
    """A listener on the local broker's port that this checkout did not start.

    A Kafka broker there (e.g. another checkout's) is used, and said so; anything else is an error
    that names the process, instead of a failed start blamed on a missing JDK.
    """
    if not port_open(port):
        return None
    owner = port_owner(port)
    if speaks_kafka(port):
        log.warning("127.0.0.1:%d is taken by %s, a Kafka broker: using it", port, owner)
        print(
            f"[kafka] 127.0.0.1:{port} is held by {owner}, which answers as a Kafka broker "
            "(not this checkout's): using it, and leaving it running. Our topics carry their own prefix.",
            flush=True,
        )
        return Broker(f"127.0.0.1:{port}", "existing")
    raise BrokerUnavailable(
        f"127.0.0.1:{port} is taken by {owner}, which does not answer as a Kafka broker. Stop it, or run "
        "the local broker on another port (LOCAL_KAFKA_PORT=9192 LOCAL_KAFKA_CONTROLLER_PORT=9193), or set "
        "KAFKA_BOOTSTRAP_SERVERS to an existing cluster."
    )


def start_local() -> str:
    """Start (or reuse) the local KRaft broker; blocks until it accepts connections."""
    try:
        subprocess.run(["bash", str(BROKER_SCRIPT), "start"], check=True)
    except FileNotFoundError as exc:
        raise BrokerUnavailable("bash is needed to run deploy/kafka/broker.sh") from exc
    except subprocess.CalledProcessError as exc:
        if exc.returncode == 4:  # the script found the port taken (it said by what)
            raise BrokerUnavailable(
                f"127.0.0.1:{local_port()} is taken by {port_owner(local_port())}; stop it or set "
                "LOCAL_KAFKA_PORT (see deploy/kafka/broker.sh)."
            ) from exc
        if exc.returncode == 3:  # java or mvn missing
            raise BrokerUnavailable(
                "Could not start the local Kafka broker: install a JDK 17+ and Maven (apt-get install "
                "openjdk-17-jre-headless maven), or a Docker engine, or set KAFKA_BOOTSTRAP_SERVERS to "
                "an existing cluster."
            ) from exc
        raise BrokerUnavailable(
            f"The local Kafka broker did not start (deploy/kafka/broker.sh start exited {exc.returncode}); "
            f"see its messages above and the log in .local/kafka/broker.log."
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
    if not was_running:
        existing = foreign_broker(local_port())
        if existing is not None:  # not ours: never stopped by us
            yield existing
            return
    bootstrap = start_local()
    try:
        yield Broker(bootstrap, "local")
    finally:
        if stop_on_exit or (stop_on_exit is None and not was_running and os.environ.get("CI")):
            stop_local()


if __name__ == "__main__":
    with find_broker(stop_on_exit=False) as broker:
        print(broker.bootstrap)
