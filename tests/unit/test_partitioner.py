"""Our murmur2 gives Kafka's partitions: the same hashes as aiokafka's (the Java client's port)."""

from __future__ import annotations

import random

from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from pipeline.kafka.partitioner import default_partition, murmur2


def test_murmur2_equals_aiokafkas_for_keys_of_every_length() -> None:
    rng = random.Random(20241126)
    for length in range(0, 130):
        for _ in range(40):
            key = rng.randbytes(length)
            assert murmur2(key) == aiokafka_murmur2(key), key


def test_known_partitions_of_the_java_client() -> None:
    # values from Kafka's own DefaultPartitionerTest / Utils.murmur2 test vectors
    assert murmur2(b"21") == (-973932308) & 0xFFFFFFFF
    assert murmur2(b"foobar") == (-790332482) & 0xFFFFFFFF
    assert murmur2(b"a-little-bit-long-string") == (-985981536) & 0xFFFFFFFF
    assert murmur2(b"a-little-bit-longer-string") == (-1486304829) & 0xFFFFFFFF
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == (-58897971) & 0xFFFFFFFF
    assert [default_partition(k, 4) for k in (b"dating", b"u_alice", b"")] == [
        (aiokafka_murmur2(k) & 0x7FFFFFFF) % 4 for k in (b"dating", b"u_alice", b"")
    ]


def test_the_producers_hook_partitions_as_aiokafka_does() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    from pipeline.kafka.partitioner import partitioner

    rng = random.Random(7)
    for _ in range(500):
        key = rng.randbytes(rng.randrange(1, 60))
        parts = list(range(rng.randrange(1, 12)))
        assert partitioner(key, parts, parts) == DefaultPartitioner()(key, parts, parts)
    assert partitioner(None, [0, 1, 2], [1]) == 1
