"""Start and stop the pipeline's processes (ingest, workers) as users run them: used by
``make run``, the integration tests and the benchmark, so all three drive the same thing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    """A child process with a health URL; its output goes to ``log_path``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    health_url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def wait_ready(self, timeout_s: float = 90.0, path_ok: str = "") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as resp:
                    body = resp.read().decode()
                    if resp.status == 200 and path_ok in body:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} not ready after {timeout_s} s; see {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._log:
            self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, no goodbye: what a crash looks like to Kafka."""
        self.stop(signal.SIGKILL)


def child_env(base: Mapping[str, str], **overrides: object) -> dict[str, str]:
    env = dict(base)
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def ingest_service(env: dict[str, str], port: int, log_dir: Path, name: str = "ingest") -> Service:
    env = child_env(env, ingest_port=port)
    return Service(
        name,
        [sys.executable, "-m", "pipeline.api.ingest"],
        env,
        f"http://127.0.0.1:{port}/healthz",
        log_dir / f"{name}.log",
    )


def worker_service(
    env: dict[str, str],
    port: int,
    log_dir: Path,
    name: str = "worker",
    stages: Sequence[str] | None = None,
) -> Service:
    """A worker process; ``stages`` (``WORKER_STAGES``): the stages it runs, all three when None
    (unless ``env`` names them)."""
    overrides: dict[str, object] = {"worker_port": port, "worker_data_dir": log_dir / f"{name}-data"}
    if stages is not None:
        overrides["worker_stages"] = ",".join(stages)
    env = child_env(env, **overrides)
    return Service(
        name,
        [sys.executable, "-m", "pipeline.stream.worker", "worker", "-l", "info"],
        env,
        f"http://127.0.0.1:{port}/ready",
        log_dir / f"{name}.log",
    )
