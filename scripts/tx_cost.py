"""What one Kafka transaction costs the client (CPU) and takes (wall), with nothing else in it.

Run with ``python -m scripts.tx_cost [--transactions 300] [--producers 1,4,8] [--offsets record,group]``.

Each of N transactional aiokafka producers (configured as the stage runtime's,
``pipeline.stream.partitions.KafkaClients.producer``) in one process and event loop runs the cycle a
stage partition runs per batch, back to back: begin, three small records to three partitions,
the input offset, commit. The offset either as a fourth record of the transaction (``record``: the
stage runtime's way, its changelog's ``InputOffset``) or through ``send_offsets_to_transaction``
(``group``: AddOffsetsToTxn and TxnOffsetCommit, the way before). Reported per transaction: the
process's user and system CPU (from ``os.times``, so other processes do not count) and the wall
time, p50 and p90.

Why it matters: the stream runs one such producer per stage and input partition (the exactly-once
design, ``docs/design.md``). At a few hundred events/s every partition commits small transactions
back to back, so what a stage process spends is mostly this fixed cost, not the records; the
latency of a trigger is about three transaction cycles, and a cycle is as long as the machine's
contention makes it (``docs/design.md``, "Speed (issue 9)").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from typing import cast

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.kafka.broker import find_broker
from pipeline.stream.partitions import KafkaClients


async def cycle_costs(bootstrap: str, producers: int, transactions: int, offsets: str) -> dict[str, float]:
    """``producers`` producers, ``transactions`` each, concurrently; CPU per transaction and wall."""
    topic = f"tx-cost-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 4, 1)])
    finally:
        await admin.close()
    clients = KafkaClients(bootstrap)
    started = [cast(AIOKafkaProducer, clients.producer(f"{topic}-{i}")) for i in range(producers)]
    for producer in started:
        await producer.start()
    walls: list[float] = []

    async def run(p: AIOKafkaProducer, warm: int) -> None:
        for i in range(warm + transactions):
            t0 = time.perf_counter()
            await p.begin_transaction()
            sent = [await p.send(topic, b"x" * 200, partition=(i + k) % 4) for k in range(3)]
            if offsets == "record":  # beside the records, as the stage runtime writes its changelog's
                sent.append(await p.send(topic, b'{"next_offset":%d}' % i, key=b"\x00offset/in", partition=3))
                await asyncio.gather(*sent)
            else:
                await asyncio.gather(*sent)
                await p.send_offsets_to_transaction({TopicPartition(topic, 0): i}, f"{topic}-group")
            await p.commit_transaction()
            if i >= warm:
                walls.append(time.perf_counter() - t0)

    try:
        await asyncio.gather(*(run(p, 20) for p in started))  # warm: metadata, coordinators, topic
        walls.clear()
        before = os.times()
        await asyncio.gather(*(run(p, 0) for p in started))
        after = os.times()
    finally:
        for producer in started:
            await producer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()
    n = producers * transactions
    walls.sort()
    return {
        "user_ms": (after.user - before.user) / n * 1000,
        "system_ms": (after.system - before.system) / n * 1000,
        "wall_p50_ms": statistics.median(walls) * 1000,
        "wall_p90_ms": walls[int(len(walls) * 0.9)] * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.tx_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=300, help="per producer")
    parser.add_argument(
        "--producers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8], help="e.g. 1,4,8"
    )
    parser.add_argument(
        "--offsets", type=lambda s: s.split(","), default=["record", "group"], help="record,group"
    )
    args = parser.parse_args(argv)
    with find_broker(stop_on_exit=False) as broker:
        print(f"broker {broker.bootstrap} ({broker.kind}); {args.transactions} transactions per producer")
        head = ("producers", "offsets", "user ms/tx", "sys ms/tx", "wall p50 ms", "wall p90 ms")
        print("  ".join(f"{h:>11}" for h in head))
        for n in args.producers:
            for offsets in args.offsets:  # side by side, so both see the same minutes of the machine
                r = asyncio.run(cycle_costs(broker.bootstrap, n, args.transactions, offsets))
                cells = (f"{n}", offsets, f"{r['user_ms']:.2f}", f"{r['system_ms']:.2f}")
                print(
                    "  ".join(
                        f"{c:>11}" for c in (*cells, f"{r['wall_p50_ms']:.1f}", f"{r['wall_p90_ms']:.1f}")
                    )
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
