"""Every knob of feedstream, read once from the environment into one typed object."""

from __future__ import annotations

import os
import socket
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent

#: the stages a worker process can run (``WORKER_STAGES``), in data-flow order
WorkerStage = Literal["expand", "count", "store"]
ALL_STAGES: tuple[WorkerStage, ...] = ("expand", "count", "store")


class Settings(BaseSettings):
    """Environment variables use the field name in upper case (e.g. ``INGEST_PORT``)."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # Kafka
    kafka_bootstrap_servers: str | None = Field(
        default=None, description="Existing cluster; unset means find or start one (pipeline.kafka.broker)."
    )
    topic_prefix: str = Field(default="", description="Prefix of every topic name (isolates test runs).")
    topic_partitions: int = Field(default=4, ge=1, description="Partitions of every feedstream topic.")
    topic_replication: int = Field(default=1, ge=1)
    ingest_writer_lanes: int = Field(default=4, ge=1, description="Kafka transactions in flight at once.")
    produce_timeout_s: float = Field(default=5.0, gt=0, description="Bound on waiting for broker acks.")
    gc_tuned: bool = Field(
        default=True,
        description="Ingest and workers: freeze startup objects, young GC every 20,000 allocations "
        "(pipeline.gcpolicy); false keeps Python's defaults.",
    )

    # Ingest HTTP service
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8080
    ingest_instance: str = Field(
        default_factory=lambda: f"ingest-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
        description="Transactional id of this ingest. The default is unique per process; set it to a "
        "stable name per instance so a restart fences its own unfinished transactions.",
    )
    tenants_file: Path = REPO_ROOT / "deploy" / "tenants.dev.yaml"
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_items_per_request: int = Field(default=1000, ge=1)
    result_wait_s: float = Field(default=5.0, ge=0, description="How long seed 000 waits for true counts.")
    idempotency_ttl_s: float = Field(default=86_400.0, gt=0)
    idempotency_max_bytes_per_tenant: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Remembered answers per tenant, in bytes."
    )
    view_max_bytes_per_tenant: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Stream results kept per tenant by the ingest."
    )
    body_read_timeout_s: float = Field(default=10.0, gt=0, description="Bound on reading one body.")
    keepalive_timeout_s: float = Field(default=15.0, gt=0, description="Idle keep-alive connections.")
    max_connections_per_client: int = Field(default=256, ge=1, description="Open connections per address.")
    auth_failures_per_s: int = Field(default=20, ge=1, description="401 answers per client address/s.")
    drain_timeout_s: float = Field(default=10.0, gt=0, description="SIGTERM: finish in-flight requests.")

    # Stream worker (faust)
    worker_id: str = "feedstream"
    worker_host: str = "127.0.0.1"
    worker_port: int = 6066
    worker_data_dir: Path = REPO_ROOT / ".local" / "worker"
    worker_stages: Annotated[tuple[WorkerStage, ...], NoDecode] = Field(
        default=ALL_STAGES,
        description="Stages this worker process runs, comma-separated (expand,count,store). Processes "
        "running the same stage share its partitions through the stage's consumer group.",
    )
    stage_batch: int = Field(default=500, ge=1, description="Records per partition and transaction.")
    seeker_max_items: int = Field(default=200, ge=1)
    seeker_max_age_s: float = Field(default=30 * 86_400.0, gt=0)
    shared_pool_domain: str = "__shared__"
    shared_pool_threshold: int = Field(default=1000, ge=1, description="Threshold of the shared pool.")

    # Feedback store (GET /api/v1/feedback): SQLite file by default, PostgreSQL for several machines
    database_url: str | None = Field(
        default=None, description="postgresql://user@host:port/db; unset: the SQLite file STORE_PATH."
    )
    store_path: Path = Field(
        default=REPO_ROOT / ".local" / "feedstream.sqlite3", description="SQLite file of the store."
    )

    @field_validator("worker_stages", mode="before")
    @classmethod
    def _split_stages(cls, value: object) -> object:
        """``expand,count`` from the environment (a comma list, not JSON); blanks ignored."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("worker_stages")
    @classmethod
    def _some_stages_once(cls, value: tuple[WorkerStage, ...]) -> tuple[WorkerStage, ...]:
        """At least one stage; each once, in data-flow order (so ``/ready`` and logs read the same)."""
        if not value:
            raise ValueError(f"name at least one of {', '.join(ALL_STAGES)}")
        return tuple(stage for stage in ALL_STAGES if stage in value)

    def stage_group(self, stage: str) -> str:
        """The consumer group of a stage's processes (``<WORKER_ID>-<stage>``): the worker joins it,
        the operators' tools read its offsets."""
        return f"{self.worker_id}-{stage}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests build their own ``Settings``)."""
    return Settings()
