"""The topics of feedstream, declared once with partitions and configs, created idempotently."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from pipeline.settings import Settings

log = logging.getLogger(__name__)

RAW = "feedback.raw"
SIGNALS = "feedback.signals"
TRIPLETS = "feedback.triplets"
TRIGGERS = "train.triggers"
DLQ = "feedback.dlq"
UNITS = "feedback.units"
RESULTS = "feedback.results"
EXPAND_STATE = "feedstream.expand.changelog"
COUNT_STATE = "feedstream.count.changelog"


@dataclass(frozen=True)
class TopicNames:
    """The concrete topic names of one deployment (``TOPIC_PREFIX`` isolates test runs)."""

    raw: str
    signals: str
    triplets: str
    triggers: str
    dlq: str
    units: str
    results: str
    expand_state: str
    count_state: str


def topic_names(settings: Settings) -> TopicNames:
    p = settings.topic_prefix
    return TopicNames(
        raw=p + RAW,
        signals=p + SIGNALS,
        triplets=p + TRIPLETS,
        triggers=p + TRIGGERS,
        dlq=p + DLQ,
        units=p + UNITS,
        results=p + RESULTS,
        expand_state=p + EXPAND_STATE,
        count_state=p + COUNT_STATE,
    )


WEEK_MS = 7 * 24 * 3600 * 1000
# A request body may be up to MAX_BODY_BYTES (1 MiB): its envelope, the units it yields and a
# dead letter carrying it in base64 must all fit, so these topics take more than Kafka's 1 MB.
BIG_MESSAGES = str(4 * 1024 * 1024)
HUGE_MESSAGES = str(8 * 1024 * 1024)


@dataclass(frozen=True)
class TopicSpec:
    """A topic as we want it; ``partitions=None`` means the settings' default."""

    name: str
    doc: str
    config: dict[str, str] = field(default_factory=dict)
    partitions: int | None = None


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        RAW,
        "Validated feedback envelopes, as accepted (HTTP ingest and publisher library).",
        {"retention.ms": str(4 * WEEK_MS), "min.insync.replicas": "1", "max.message.bytes": BIG_MESSAGES},
    ),
    TopicSpec(
        SIGNALS,
        "One typed signal per flattened key or mapped field, for dashboards.",
        {"retention.ms": str(4 * WEEK_MS)},
    ),
    TopicSpec(
        TRIPLETS,
        "Training units (triplets, preferences, scored entries) keyed by domain.",
        {"retention.ms": "-1", "max.message.bytes": BIG_MESSAGES},
    ),
    TopicSpec(
        TRIGGERS,
        "Train-trigger events: a domain crossed its threshold or was forced.",
        {"retention.ms": "-1", "cleanup.policy": "delete"},
    ),
    TopicSpec(
        DLQ,
        "What failed in the stream, with original bytes, stage and reason.",
        {"retention.ms": str(4 * WEEK_MS), "max.message.bytes": HUGE_MESSAGES},
    ),
    TopicSpec(
        UNITS,
        "Internal: units of each raw event and train requests, keyed by domain (counting stage input).",
        {"retention.ms": str(WEEK_MS), "max.message.bytes": BIG_MESSAGES},
    ),
    TopicSpec(
        RESULTS,
        "Internal: per-request results of the counting stage, read by the ingest (seed 000 answer).",
        {"retention.ms": str(3600 * 1000)},
    ),
    TopicSpec(
        EXPAND_STATE,
        "Internal changelog: recent outcomes per (domain, seeker), restored on partition assignment.",
        {"cleanup.policy": "compact"},
    ),
    TopicSpec(
        COUNT_STATE,
        "Internal changelog: pending/total/last trigger per domain; also read by GET /v1/domains.",
        {"cleanup.policy": "compact"},
    ),
)


def new_topics(settings: Settings) -> list[NewTopic]:
    """The admin-client requests for every declared topic."""
    return [
        NewTopic(
            name=settings.topic_prefix + t.name,
            num_partitions=t.partitions or settings.topic_partitions,
            replication_factor=settings.topic_replication,
            topic_configs=dict(t.config),
        )
        for t in TOPICS
    ]


async def ensure_topics(bootstrap: str, settings: Settings, attempts: int = 30) -> list[str]:
    """Create missing topics; existing ones are left as they are. Returns the names created."""
    for attempt in range(attempts):
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [t for t in new_topics(settings) if t.name not in existing]
            if wanted:
                resp = await admin.create_topics(wanted, validate_only=False)
                for name, code, *_ in getattr(resp, "topic_errors", []):
                    if code not in (0, TopicAlreadyExistsError.errno):
                        raise RuntimeError(f"creating topic {name} failed with Kafka error code {code}")
            return [t.name for t in wanted]
        except KafkaConnectionError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(1.0)
        finally:
            await admin.close()
    return []


if __name__ == "__main__":
    import sys

    from pipeline.settings import get_settings

    created = asyncio.run(ensure_topics(sys.argv[1], get_settings()))
    print("created:", ", ".join(created) or "nothing (all exist)")


async def delete_prefixed_topics(bootstrap: str, prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (test and benchmark runs clean up)."""
    if not prefix:
        raise ValueError("refusing to delete topics without a prefix")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if doomed:
            await admin.delete_topics(doomed)
        return doomed
    finally:
        await admin.close()
