"""examples/trainer.py's range reader on the real broker: a range that is no longer all on the topic
(records deleted by retention or by an operator) is an error, never a shorter snapshot."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from aiokafka.errors import OffsetOutOfRangeError

from pipeline.kafka.broker import Broker
from tests.unit.test_recipes import trainer_module


@pytest.fixture
async def topic(broker: Broker, prefix: str) -> AsyncIterator[str]:
    """A topic of its own with five records at offsets 0-4 (deleting records must not touch others')."""
    name = f"{prefix}trainer-range-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(name, f'{{"n": {i}}}'.encode(), partition=0)
        finally:
            await producer.stop()
        yield name
    finally:
        await admin.delete_topics([name])
        await admin.close()


def trigger(topic: str, start: int, end: int) -> dict[str, object]:
    return {"range": {"topic": topic, "partition": 0, "start_offset": start, "end_offset": end}}


async def test_a_range_partly_deleted_is_an_error_not_a_shorter_snapshot(broker: Broker, topic: str) -> None:
    read_range = trainer_module().read_range
    assert [o for o, _ in await read_range(broker.bootstrap, trigger(topic, 1, 3))] == [1, 2, 3]
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before_offset=2)})
    finally:
        await admin.close()
    with pytest.raises(OffsetOutOfRangeError):
        await read_range(broker.bootstrap, trigger(topic, 1, 3))
    assert [o for o, _ in await read_range(broker.bootstrap, trigger(topic, 2, 4))] == [2, 3, 4]
