"""The topics of feedstream, declared once with partitions and configs, created idempotently."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from pipeline.limits import MAX_ID_CHARS, MAX_LABEL_CHARS, MAX_TEXT_CHARS
from pipeline.settings import Settings

log = logging.getLogger(__name__)

RAW = "feedback.raw"
SIGNALS = "feedback.signals"
TRIPLETS = "feedback.triplets"
TRIGGERS = "train.triggers"
DLQ = "feedback.dlq"
UNITS = "feedback.units"
RESULTS = "feedback.results"
ERASURES = "feedback.erasures"
EXPAND_STATE = "feedstream.expand.changelog"
COUNT_STATE = "feedstream.count.changelog"
DLQ_REPLAYS = "feedback.dlq.replays"
TRAININGS = "train.completed"


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
    erasures: str
    count_state: str
    dlq_replays: str
    trainings: str


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
        erasures=p + ERASURES,
        count_state=p + COUNT_STATE,
        dlq_replays=p + DLQ_REPLAYS,
        trainings=p + TRAININGS,
    )


WEEK_MS = 7 * 24 * 3600 * 1000
KiB = 1024
MiB = 1024 * KiB

# --- message sizes ---------------------------------------------------------------------------------
# Every topic declares ``max.message.bytes``, sized for the worst record a stage can write there from
# one input that passed the edge (pipeline.limits, MAX_BODY_BYTES = 1 MiB). The stages check each
# record against these limits before sending (pipeline.stream.runtime), so a record over them is refused at
# once and its input dead-lettered (size_violation) instead of failing the transaction. Kafka applies
# the limit to a record *batch*, and the stage producers batch up to 256 KiB, so no topic goes below
# 1 MiB. The worst cases (docs/design.md, "Hardening: the stream"):
#
# * raw: the envelope of a 1 MiB body (+ per-item fields, floats re-encoded): < 1.2 MiB -> 4 MiB;
# * signals: one signal carries at most the whole body once (value, reason, tags, subject) plus
#   fixed fields: < 1.1 MiB -> 2 MiB;
# * units: a chunk of units under UNITS_CHUNK_BYTES, or one unit alone (a preference carries both
#   outputs of one body): < 1.1 MiB -> 4 MiB; triplets: one unit -> 4 MiB;
# * results: ids, counts and at most 16 triggers (< 20 KiB) -> 1 MiB; triggers (< 2 KiB) -> 1 MiB;
# * count changelog: a counter and its last trigger (< 3 KiB) -> 1 MiB;
# * expand changelog: SEEKER_MAX_ITEMS observations of at most OBSERVATION_MAX_BYTES plus the key:
#   about 420 KiB for 200 items -> 512 KiB (grows with SEEKER_MAX_ITEMS, see expand_state_bytes);
# * erasures: ids, tenant and times (< 2 KiB; the ids are canonical UUIDs) -> 1 MiB;
# * dlq replays: one marker per replayed dead letter (its coordinates and when) -> 1 MiB;
# * train.completed: a training result (trigger, model version, a few metrics, < 64 KiB) -> 1 MiB;
# * dlq: a dead letter carries its original in base64 (4/3) plus the error: 4 MiB inputs -> 8 MiB.
#   A dead letter that would still not fit keeps only the head of its original, and says so.
MESSAGE_BYTES: dict[str, int] = {
    RAW: 4 * MiB,
    SIGNALS: 2 * MiB,
    TRIPLETS: 4 * MiB,
    TRIGGERS: 1 * MiB,
    DLQ: 8 * MiB,
    UNITS: 4 * MiB,
    RESULTS: 1 * MiB,
    ERASURES: 1 * MiB,
    EXPAND_STATE: 512 * KiB,
    COUNT_STATE: 1 * MiB,
    DLQ_REPLAYS: 1 * MiB,
    TRAININGS: 1 * MiB,
}
#: Kafka's default (broker ``message.max.bytes``), for a topic we did not declare.
DEFAULT_MESSAGE_BYTES = 1 * MiB + 12
#: The expand stage splits a raw event's units into ``feedback.units`` messages of at most this many
#: bytes of units (a single unit bigger than this is a message of its own).
UNITS_CHUNK_BYTES = 1 * MiB

#: One observation of a seeker history as JSON, at worst: candidate id and label with every
#: character escaped (\u00XX, 6 bytes), two floats, a UUID event id, a timestamp, field names.
OBSERVATION_MAX_BYTES = 6 * MAX_ID_CHARS + 6 * MAX_LABEL_CHARS + 2 * 24 + 36 + 32 + 128
#: A history's key: domain (128 ASCII) '/' anchor (an id, or ``query:`` + free text, UTF-8).
HISTORY_KEY_MAX_BYTES = 128 + 1 + max(4 * MAX_ID_CHARS, 8 + 4 * MAX_TEXT_CHARS)


def expand_state_bytes(seeker_max_items: int) -> int:
    """The expand changelog's limit: the worst history of ``seeker_max_items`` items and its key,
    rounded up to 64 KiB, never below the declared 512 KiB."""
    worst = seeker_max_items * (OBSERVATION_MAX_BYTES + 1) + HISTORY_KEY_MAX_BYTES + 4 * KiB
    return max(MESSAGE_BYTES[EXPAND_STATE], -(-worst // (64 * KiB)) * 64 * KiB)


def message_bytes(topic: str, settings: Settings) -> int:
    """The ``max.message.bytes`` declared for an (unprefixed) topic name."""
    if topic == EXPAND_STATE:
        return expand_state_bytes(settings.seeker_max_items)
    return MESSAGE_BYTES.get(topic, DEFAULT_MESSAGE_BYTES)


def message_limits(settings: Settings) -> dict[str, int]:
    """Each deployed topic's (prefixed) name and its size limit: what the stages check before sending."""
    return {settings.topic_prefix + t.name: message_bytes(t.name, settings) for t in TOPICS}


@dataclass(frozen=True)
class TopicSpec:
    """A topic as we want it; ``partitions=None`` means the settings' default."""

    name: str
    doc: str
    config: dict[str, str] = field(default_factory=dict)
    partitions: int | None = None


#: The stage changelogs: compacted, and rolled hourly (or at 64 MiB) so the cleaner can compact all
#: but the last hour: every transaction rewrites a few keys (the expand clock, counters, the input
#: offset), and a restore reads whatever is not compacted yet (Kafka's default rolls weekly or at 1 GiB).
CHANGELOG_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": str(3600 * 1000),
    "segment.bytes": str(64 * 1024 * 1024),
}

TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        RAW,
        "Validated feedback envelopes, as accepted (HTTP ingest and publisher library).",
        {"retention.ms": str(4 * WEEK_MS), "min.insync.replicas": "1"},
    ),
    TopicSpec(
        SIGNALS,
        "One typed signal per flattened key or mapped field, for dashboards.",
        {"retention.ms": str(4 * WEEK_MS)},
    ),
    TopicSpec(
        TRIPLETS,
        "Training units (triplets, preferences, scored entries) keyed by domain.",
        {"retention.ms": "-1"},
    ),
    TopicSpec(
        TRIGGERS,
        "Train-trigger events: a domain crossed its threshold or was forced.",
        {"retention.ms": "-1", "cleanup.policy": "delete"},
    ),
    TopicSpec(
        DLQ,
        "What failed in the stream, with original bytes, stage and reason.",
        {"retention.ms": str(4 * WEEK_MS)},
    ),
    TopicSpec(
        UNITS,
        "Internal: units of each raw event (in chunks) and train requests, keyed by domain "
        "(counting stage input).",
        {"retention.ms": str(WEEK_MS)},
    ),
    TopicSpec(
        RESULTS,
        "Internal: per-request results of the counting stage, read by the ingest (seed 000 answer).",
        {"retention.ms": str(3600 * 1000)},
    ),
    TopicSpec(
        ERASURES,
        "Erasures of feedback entries (DELETE /api/v1/feedback/{id}): the store and trainers drop them.",
        {"retention.ms": "-1"},
    ),
    TopicSpec(
        EXPAND_STATE,
        "Internal changelog: recent outcomes per (domain, seeker), restored on partition assignment.",
        CHANGELOG_CONFIG,
    ),
    TopicSpec(
        COUNT_STATE,
        "Internal changelog: pending/total/last trigger per domain; also read by GET /v1/domains.",
        CHANGELOG_CONFIG,
    ),
    TopicSpec(
        DLQ_REPLAYS,
        "One marker per dead letter replayed (feedstream dlq replay), written in the replay's "
        "transaction: a dead letter is replayed once.",
        {"cleanup.policy": "compact"},
    ),
    TopicSpec(
        TRAININGS,
        "Training results: a trainer says it trained on a trigger (model version, metrics).",
        {"retention.ms": "-1"},
    ),
)


def declared_config(spec: TopicSpec, settings: Settings) -> dict[str, str]:
    """A topic's declared configs, its size limit included."""
    return {**spec.config, "max.message.bytes": str(message_bytes(spec.name, settings))}


def new_topics(settings: Settings) -> list[NewTopic]:
    """The admin-client requests for every declared topic."""
    return [
        NewTopic(
            name=settings.topic_prefix + t.name,
            num_partitions=t.partitions or settings.topic_partitions,
            replication_factor=settings.topic_replication,
            topic_configs=declared_config(t, settings),
        )
        for t in TOPICS
    ]


async def ensure_topics(bootstrap: str, settings: Settings, attempts: int = 30) -> list[str]:
    """Create missing topics and bring existing ones' declared configs (size limits...) up to date.

    Returns the names created. Partition counts of existing topics are left alone (an operator's
    decision; the counting stage copes with a new count of ``feedback.triplets``).
    """
    for attempt in range(attempts):
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [t for t in new_topics(settings) if t.name not in existing]
            created = {t.name for t in wanted}
            if wanted:
                resp = await admin.create_topics(wanted, validate_only=False)
                for name, code, *_ in getattr(resp, "topic_errors", []):
                    if code == TopicAlreadyExistsError.errno:  # listed a moment too early
                        created.discard(name)
                    elif code != 0:
                        raise RuntimeError(f"creating topic {name} failed with Kafka error code {code}")
            declared = {
                settings.topic_prefix + t.name: declared_config(t, settings)
                for t in TOPICS
                if settings.topic_prefix + t.name not in created
            }
            altered = await update_topic_configs(admin, declared)
            if altered:
                log.info("topic configs updated: %s", ", ".join(altered))
            return [t.name for t in wanted if t.name in created]
        except KafkaConnectionError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(1.0)
        finally:
            await admin.close()
    return []


_DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs v1+ config_source of a per-topic override


async def update_topic_configs(admin: AIOKafkaAdminClient, declared: dict[str, dict[str, str]]) -> list[str]:
    """Set each topic's declared configs where they differ; other per-topic overrides are kept.

    aiokafka speaks the (non-incremental) AlterConfigs API, which replaces a topic's whole set of
    overrides: so the current overrides are read first and sent back along with ours.
    """
    if not declared:
        return []
    changes = [
        ConfigResource(ConfigResourceType.TOPIC, name, {**overrides, **declared[name]})
        for name, (current, overrides) in (await _describe(admin, list(declared))).items()
        if any(current.get(k) != v for k, v in declared[name].items())
    ]
    if not changes:
        return []
    for response in await admin.alter_configs(changes):
        for code, message, _type, name in response.resources:
            if code != 0:
                raise RuntimeError(f"altering topic {name} failed with Kafka error {code}: {message}")
    # the answer comes before the brokers apply it: return once every change is visible
    names = [c.name for c in changes]
    for _ in range(100):
        seen = await _describe(admin, names)
        if all(seen[n][0].get(k) == v for n in names for k, v in declared[n].items()):
            break
        await asyncio.sleep(0.1)
    else:
        raise RuntimeError(f"topic config changes not visible after 10 s: {', '.join(names)}")
    return sorted(names)


#: How long a topic another client just created may stay unknown to the broker answering us.
UNKNOWN_TOPIC_WAIT_S = 10.0
_UNKNOWN_TOPIC = 3  # UNKNOWN_TOPIC_OR_PARTITION


async def _describe(
    admin: AIOKafkaAdminClient, names: list[str]
) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """Each topic's current configs, and those of them that are per-topic overrides.

    A topic created a moment ago (by another worker starting beside us, or by us) can be unknown to
    the broker that answers until its metadata arrives there: asked again until it is known.
    """
    out: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    deadline = asyncio.get_running_loop().time() + UNKNOWN_TOPIC_WAIT_S
    pending = list(names)
    while pending:
        unknown: list[str] = []
        resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in pending]
        for response in await admin.describe_configs(resources):
            v0 = response.API_VERSION == 0
            for code, message, _type, name, entries in response.resources:
                if code == _UNKNOWN_TOPIC and asyncio.get_running_loop().time() < deadline:
                    unknown.append(name)
                    continue
                if code != 0:
                    raise RuntimeError(f"describing topic {name} failed with Kafka error {code}: {message}")
                current = {entry[0]: entry[1] for entry in entries}
                overrides = {
                    entry[0]: entry[1]
                    for entry in entries
                    if (not entry[3] if v0 else entry[3] == _DYNAMIC_TOPIC_CONFIG) and not entry[4]
                }
                out[name] = (current, overrides)
        pending = unknown
        if pending:
            await asyncio.sleep(0.1)
    return out


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
