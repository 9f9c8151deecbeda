"""Finding a PostgreSQL server for the feedback store, the way :mod:`pipeline.kafka.broker` finds Kafka.

Order: ``DATABASE_URL`` if it is a ``postgresql://`` URL; else testcontainers' Postgres when a
Docker engine answers; else a throwaway server from Debian's ``postgresql`` package
(``/usr/lib/postgresql/<v>/bin`` or ``initdb`` on the PATH), initialised in a temporary directory
with ``initdb`` and run with ``pg_ctl`` on a free 127.0.0.1 port (trust auth, no fsync: test data).
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user. Used by the
tests and the store benchmark; ``.ci/run`` installs the package when ``initdb`` is missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.kafka.broker import docker_available
from pipeline.procs import free_port

POSTGRES_IMAGE = "postgres:16-alpine"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be found or started; the message says what to install."""


@dataclass(frozen=True)
class PostgresServer:
    url: str
    kind: str  # "env", "testcontainers" or "local"


def pg_bindir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: the PATH's, else the newest Debian version's."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3].split(".")[0])
    )
    return Path(versions[-1]).parent if versions else None


def _as_user() -> dict[str, Any]:
    """subprocess arguments that run a command as ``postgres`` when we are root."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


@contextlib.contextmanager
def local_postgres() -> Iterator[PostgresServer]:
    """A throwaway server in a temporary directory, stopped and removed on exit."""
    bindir = pg_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "No PostgreSQL found: install it (apt-get install postgresql), or a Docker engine, "
            "or set DATABASE_URL=postgresql://..."
        )
    as_user = _as_user()
    tmp = Path(tempfile.mkdtemp(prefix="feedstream-pg-"))
    data, log_file = tmp / "data", tmp / "server.log"
    if as_user:
        shutil.chown(tmp, "postgres", "postgres")
    port = free_port()
    started = False
    try:
        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=tmp,
            **as_user,
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={tmp} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        subprocess.run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(log_file),
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            capture_output=True,
            cwd=tmp,
            **as_user,
        )
        started = True
        yield PostgresServer(f"postgresql://postgres@127.0.0.1:{port}/postgres", "local")
    except subprocess.CalledProcessError as exc:
        log = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
        raise PostgresUnavailable(
            f"{Path(exc.cmd[0]).name} failed ({exc.returncode}): {exc.stderr.decode(errors='replace')}{log}"
        ) from exc
    finally:
        if started:
            subprocess.run(
                [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                check=False,
                capture_output=True,
                cwd=tmp,
                **as_user,
            )
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def find_postgres() -> Iterator[PostgresServer]:
    """Yield a reachable PostgreSQL server; what we started is stopped on exit."""
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgresql://", "postgres://")):
        yield PostgresServer(url, "env")
        return
    if docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(POSTGRES_IMAGE, driver=None) as pg:
            yield PostgresServer(pg.get_connection_url(), "testcontainers")
        return
    with local_postgres() as server:
        yield server


if __name__ == "__main__":
    import signal

    with find_postgres() as server:
        print(server.url, f"({server.kind}); Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
