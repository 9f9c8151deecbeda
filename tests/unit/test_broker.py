"""Finding a broker when the local broker's port is already taken (issue 7, newcomer papercut).

In-process: a dummy listener, and a fake Kafka that answers ApiVersions, on free ports named by
``LOCAL_KAFKA_PORT``; ``LOCAL_KAFKA_DATA`` points at an empty folder so no broker of ours "runs".
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.kafka import broker as broker_mod
from pipeline.kafka.broker import (
    BrokerUnavailable,
    find_broker,
    foreign_broker,
    port_open,
    port_owner,
    speaks_kafka,
)
from pipeline.procs import free_port


class Listener:
    """A TCP listener on 127.0.0.1; ``kafka`` makes it answer ApiVersions like a broker would."""

    def __init__(self, *, kafka: bool) -> None:
        self.kafka = kafka
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    data = conn.recv(4096)
                except OSError:
                    continue
                if self.kafka and len(data) >= 12:
                    correlation = struct.unpack(">i", data[8:12])[0]
                    body = struct.pack(">ihi", correlation, 0, 0)  # no error, no api keys
                    conn.sendall(struct.pack(">i", len(body)) + body)
                elif data:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dummy() -> Iterator[Listener]:
    listener = Listener(kafka=False)
    yield listener
    listener.close()


@pytest.fixture
def fake_kafka() -> Iterator[Listener]:
    listener = Listener(kafka=True)
    yield listener
    listener.close()


@pytest.fixture
def local_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """find_broker's local branch: no cluster set, no Docker, a data folder with no broker of ours."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("LOCAL_KAFKA_DATA", str(tmp_path / "kafka"))
    monkeypatch.setattr(broker_mod, "docker_available", lambda: False)


def test_a_listener_that_is_not_kafka_is_named_with_its_pid(dummy: Listener) -> None:
    assert port_open(dummy.port)
    assert not speaks_kafka(dummy.port)
    owner = port_owner(dummy.port)
    assert owner.startswith(f"pid {os.getpid()} ("), owner
    assert "python" in owner


def test_find_broker_fails_naming_the_process_not_asking_for_a_jdk(
    dummy: Listener, local_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_KAFKA_PORT", str(dummy.port))
    started: list[str] = []

    def start_local() -> str:
        started.append("start")
        return ""

    monkeypatch.setattr(broker_mod, "start_local", start_local)
    with pytest.raises(BrokerUnavailable) as err, find_broker():
        pass
    message = str(err.value)
    assert f"127.0.0.1:{dummy.port} is taken by pid {os.getpid()}" in message
    assert "does not answer as a Kafka broker" in message and "LOCAL_KAFKA_PORT" in message
    assert "JDK" not in message
    assert started == []  # no start attempted: it could only fail


def test_find_broker_uses_a_kafka_broker_it_did_not_start_and_leaves_it_running(
    fake_kafka: Listener, local_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOCAL_KAFKA_PORT", str(fake_kafka.port))
    calls: list[str] = []

    def start_local() -> str:
        calls.append("start")
        return ""

    monkeypatch.setattr(broker_mod, "start_local", start_local)
    monkeypatch.setattr(broker_mod, "stop_local", lambda: calls.append("stop"))
    assert speaks_kafka(fake_kafka.port)
    with find_broker(stop_on_exit=True) as found:
        assert (found.bootstrap, found.kind) == (f"127.0.0.1:{fake_kafka.port}", "existing")
    assert calls == []  # neither started nor stopped: it is not ours
    out = capsys.readouterr().out
    assert f"127.0.0.1:{fake_kafka.port} is held by pid {os.getpid()}" in out
    assert "answers as a Kafka broker" in out and "using it" in out


def test_a_free_port_is_left_to_the_local_broker(local_env: None) -> None:
    port = free_port()
    assert not port_open(port)
    assert not speaks_kafka(port)
    assert foreign_broker(port) is None


def test_the_broker_script_names_the_process_on_its_port(dummy: Listener, tmp_path: Path) -> None:
    env = dict(os.environ, LOCAL_KAFKA_PORT=str(dummy.port), LOCAL_KAFKA_DATA=str(tmp_path / "kafka"))
    done = subprocess.run(
        ["bash", str(broker_mod.BROKER_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 4, done.stderr
    assert f"127.0.0.1:{dummy.port} is taken by pid {os.getpid()} (" in done.stderr
