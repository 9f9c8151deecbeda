"""``ensure_topics`` on the real broker: existing topics get the declared limits, other overrides stay."""

from __future__ import annotations

import uuid

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import TOPICS, delete_prefixed_topics, ensure_topics, message_bytes
from pipeline.settings import Settings
from tests.conftest import TEST_TENANTS


async def _configs(bootstrap: str, name: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        [(_code, _msg, _type, _name, entries)] = response.resources
        return {e[0]: e[1] for e in entries}
    finally:
        await admin.close()


async def test_existing_topics_get_the_declared_limits_and_keep_other_overrides(broker: Broker) -> None:
    prefix = f"cfg{uuid.uuid4().hex[:8]}."
    settings = Settings(
        kafka_bootstrap_servers=broker.bootstrap, topic_prefix=prefix, tenants_file=TEST_TENANTS
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:  # as an older release created them: Kafka's default size, and an operator's own override
        await admin.create_topics(
            [
                NewTopic(prefix + t.name, 1, 1, topic_configs={"segment.ms": "3600000"})
                for t in TOPICS
                if t.name in ("feedback.signals", "feedstream.expand.changelog")
            ]
            + [
                NewTopic(
                    prefix + "feedstream.count.changelog", 1, 1, topic_configs={"cleanup.policy": "compact"}
                )
            ]
        )
    finally:
        await admin.close()
    try:
        created = await ensure_topics(broker.bootstrap, settings)
        assert prefix + "feedback.signals" not in created and prefix + "feedback.raw" in created
        for t in TOPICS:
            got = await _configs(broker.bootstrap, prefix + t.name)
            assert got["max.message.bytes"] == str(message_bytes(t.name, settings)), t.name
        counts = await _configs(broker.bootstrap, prefix + "feedstream.count.changelog")
        assert (counts["segment.ms"], counts["segment.bytes"]) == ("3600000", str(64 << 20))  # rolled hourly
        signals = await _configs(broker.bootstrap, prefix + "feedback.signals")
        assert signals["segment.ms"] == "3600000"
        assert signals["retention.ms"] == str(4 * 7 * 24 * 3600 * 1000)
        # a second run finds nothing to do and changes nothing
        assert await ensure_topics(broker.bootstrap, settings) == []
        assert (await _configs(broker.bootstrap, prefix + "feedback.signals")) == signals
    finally:
        await delete_prefixed_topics(broker.bootstrap, prefix)
