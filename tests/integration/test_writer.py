"""The ingest's writer on the real broker: one record is an idempotent acks=all send (no
transaction), several records are one transaction; both are read back by a read_committed reader."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.kafka.broker import Broker
from pipeline.kafka.io import AckedWriter, OutRecord
from pipeline.kafka.partitioner import default_partition
from tests.kafka_helpers import read_until


async def _topic(bootstrap: str, partitions: int) -> str:
    name = f"writer{uuid.uuid4().hex[:8]}.raw"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


async def _end_offsets(bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def test_one_record_is_an_acknowledged_send_without_a_transaction(broker: Broker) -> None:
    topic = await _topic(broker.bootstrap, 2)
    writer = AckedWriter(broker.bootstrap, transactional_id=f"w-{uuid.uuid4().hex[:8]}", timeout_s=5)
    await writer.start()
    try:
        record = OutRecord(topic, b"dating/u_1", b'{"v":1}', [("request_id", b"req_1")])
        (written,) = await writer.write([record])
    finally:
        await writer.stop()
    assert written.topic == topic
    tp = TopicPartition(topic, written.partition)
    # no commit marker after it: a transaction would have added one (end = offset + 2)
    assert (await _end_offsets(broker.bootstrap, [tp]))[tp] == written.offset + 1
    (got,) = await read_until(broker.bootstrap, topic, lambda r: True, settle_s=0.5)
    assert (got.key, got.value, list(got.headers)) == (record.key, record.value, record.headers)
    assert (got.partition, got.offset) == (written.partition, written.offset)


async def test_several_records_are_one_transaction(broker: Broker) -> None:
    topic = await _topic(broker.bootstrap, 4)
    writer = AckedWriter(broker.bootstrap, transactional_id=f"w-{uuid.uuid4().hex[:8]}", timeout_s=5)
    await writer.start()
    try:
        records = [OutRecord(topic, f"k{i}".encode(), f'{{"i":{i}}}'.encode(), []) for i in range(8)]
        written = await writer.write(records)
    finally:
        await writer.stop()
    assert len(written) == 8 and {w.topic for w in written} == {topic}
    assert len({w.partition for w in written}) > 1  # the atomicity spans partitions
    tps = sorted({TopicPartition(topic, w.partition) for w in written})
    ends = await _end_offsets(broker.bootstrap, tps)
    for tp in tps:  # each partition's last record is followed by the transaction's commit marker
        last = max(w.offset for w in written if w.partition == tp.partition)
        assert ends[tp] == last + 2
    got = await read_until(broker.bootstrap, topic, lambda r: True, count=8, settle_s=0.5)
    assert sorted((r.key, r.value) for r in got) == sorted((r.key, r.value) for r in records)


async def test_a_large_group_fills_several_record_batches_and_says_where_each_record_landed(
    broker: Broker,
) -> None:
    """The group commit appends to record batches per partition and hands a full one over at once:
    every record is where its ``Written`` says, in Kafka's partition of its key, in request order."""
    topic = await _topic(broker.bootstrap, 4)
    writer = AckedWriter(broker.bootstrap, transactional_id=f"w-{uuid.uuid4().hex[:8]}", timeout_s=10)
    await writer.start()
    try:
        # 400 records of ~1 KB: about 100 KB a partition, several of the producer's 16 KB batches
        records = [
            OutRecord(topic, f"seeker-{i % 37}".encode(), b'{"i":%d,"pad":"%s"}' % (i, b"x" * 1000), [])
            for i in range(400)
        ]
        written = await writer.write(records)
    finally:
        await writer.stop()
    assert [w.partition for w in written] == [default_partition(r.key or b"", 4) for r in records]
    got = await read_until(broker.bootstrap, topic, lambda r: True, count=400, settle_s=0.5)
    at = {(r.partition, r.offset): r.value for r in got}
    assert [at[w.partition, w.offset] for w in written] == [r.value for r in records]
