"""The exactly-once runner on the real broker when an output is refused for its size.

A stage echoes each input to a topic that takes 200 KB records at most. One input of a batch is
300 KB. Whether the runner's own size check catches it (it knows the topic's limit) or only the
broker refuses it (the runner was told a bigger limit), the outcome is the same: the batch is
redone one input per transaction, the refused input is dead-lettered with reason size_violation,
every other input's output is written exactly once, the state counts exactly those, and the
partition's committed offset is past the whole batch.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Sequence

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import delete_prefixed_topics
from pipeline.stream.runtime import Record, StageRunner, Table, Tx
from tests.kafka_helpers import read_until

OUT_LIMIT = 200_000


class Echo:
    name = "echo"

    def __init__(self, out: str) -> None:
        self.out = out

    def decode_state(self, value: bytes) -> int:
        return int(value)

    def encode_state(self, state: int) -> bytes:
        return str(state).encode()

    async def process(self, records: Sequence[Record], table: Table[int], tx: Tx) -> None:
        for rec in records:
            await tx.send(self.out, rec.value, key=rec.key)
            table[b"n"] = table.get(b"n", 0) + 1


@pytest.mark.parametrize("told", [True, False], ids=["checked-before-sending", "refused-by-the-broker"])
async def test_a_refused_output_dead_letters_its_input_and_the_partition_moves_on(
    broker: Broker, told: bool
) -> None:
    prefix = f"ref{uuid.uuid4().hex[:8]}."
    inp, out, log, dlq = (prefix + n for n in ("in", "out", "changelog", "dlq"))
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(inp, 1, 1, topic_configs={"max.message.bytes": str(1 << 20)}),
                NewTopic(out, 1, 1, topic_configs={"max.message.bytes": str(OUT_LIMIT)}),
                NewTopic(log, 1, 1, topic_configs={"cleanup.policy": "compact"}),
                NewTopic(dlq, 1, 1, topic_configs={"max.message.bytes": str(1 << 20)}),
            ]
        )
    finally:
        await admin.close()
    values = [b"a", b"b", b"x" * 300_000, b"c", b"d"]
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap, transactional_id=f"{prefix}load", max_request_size=1 << 20
    )
    await producer.start()
    try:  # one transaction, so the runner's first fetch takes them as one batch
        async with producer.transaction():
            for i, value in enumerate(values):
                await producer.send(inp, value, key=f"k{i}".encode())
    finally:
        await producer.stop()

    runner: StageRunner[int] = StageRunner(
        Echo(out),
        bootstrap=broker.bootstrap,
        group_id=f"{prefix}group",
        input_topic=inp,
        changelog_topic=log,
        dlq_topic=dlq,
        limits={out: OUT_LIMIT if told else 8 << 20, dlq: 1 << 20, log: 1 << 20},
    )
    await runner.start()
    try:
        letters = await read_until(broker.bootstrap, dlq, lambda r: True, count=1, timeout_s=60)
        echoed = await read_until(broker.bootstrap, out, lambda r: True, count=4, timeout_s=60, settle_s=1.0)
        assert sorted(r.value for r in echoed) == [b"a", b"b", b"c", b"d"]
        [letter] = [orjson.loads(r.value) for r in letters]
        assert letter["reason"] == "size_violation" and letter["stage"] == "echo"
        assert (letter["topic"], letter["offset"], letter["key"]) == (inp, 2, "k2")
        assert base64.b64decode(letter["original"]) == values[2]
        for _ in range(100):  # the state's committed value follows the last transaction
            if (runner.state(0) or {}).get(b"n") == 4:
                break
            await asyncio.sleep(0.1)
        assert runner.state(0) == {b"n": 4}
    finally:
        await runner.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=f"{prefix}group")
    await consumer.start()
    try:
        committed = await consumer.committed(TopicPartition(inp, 0))
    finally:
        await consumer.stop()
    assert committed is not None and committed >= len(values)
    await delete_prefixed_topics(broker.bootstrap, prefix)
