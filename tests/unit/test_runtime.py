"""The stage runtime on an in-memory Kafka (tests/fakekafka.py): transactions, the table view,
dead letters, error classes, offset continuity, restore in the loop. Failure paths included.

Each test drives the runner's loop by hand (:meth:`StageRunner.step`), so every turn is visible.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, RequestTimedOutError

from pipeline.metrics import CONSUMER_LAG
from pipeline.stream.partitions import OFFSET_GAPS, Backoff
from pipeline.stream.runtime import (
    STAGE_ERRORS,
    Record,
    StageRunner,
    Table,
    Tx,
    fenced,
    record_size,
    transient,
)
from pipeline.wire.records import (
    DeadLetter,
    InputOffset,
    from_json,
    input_offset_key,
    original_headers,
    to_json,
)
from tests.fakekafka import Cluster, FakeClients, FakeConsumer, FakeProducer

IN, OUT, LOG, DLQ = "in", "out", "changelog", "dlq"
TP = TopicPartition(IN, 0)
GROUP = "g"


class Counting:
    """Echoes each input to ``out``; counts inputs (``n``) and per key. ``bad*`` inputs do not decode,
    ``boom*`` inputs break the rule; ``seen`` keeps the committed count each batch started from."""

    name = "counting"

    def __init__(self) -> None:
        self.seen: list[int | None] = []
        self.raise_in_process: BaseException | None = None
        self.gates: dict[int, asyncio.Event] = {}  # a partition's batches wait for its gate

    def decode_state(self, value: bytes) -> int:
        return int(value)

    def encode_state(self, state: int) -> bytes:
        return str(state).encode()

    async def process(self, records: Sequence[Record], table: Table[int], tx: Tx) -> None:
        gate = self.gates.get(records[0].partition)
        if gate is not None:
            await gate.wait()
        self.seen.append(table.get(b"n"))
        for rec in records:
            value = await tx.decode(rec, decode)
            if value is None:
                continue
            if await tx.attempt(rec, rule, value) is None:
                continue
            await tx.send(OUT, value, key=rec.key)
            table[b"n"] = table.get(b"n", 0) + 1
            table[rec.key or b""] = table.get(rec.key or b"", 0) + 1
        if self.raise_in_process is not None:
            error, self.raise_in_process = self.raise_in_process, None
            raise error


def decode(value: bytes) -> bytes:
    if value.startswith(b"bad"):
        raise ValueError("not ours")
    return value


def rule(value: bytes) -> bytes:
    if value.startswith(b"boom"):
        raise ArithmeticError("the rule refuses it")
    return value


def setup(
    *, limits: dict[str, int] | None = None, backoff: Backoff | None = None, grace: float = 10.0
) -> tuple[Cluster, FakeClients, StageRunner[int], FakeConsumer, Counting]:
    cluster = Cluster()
    clients = FakeClients(cluster)
    stage = Counting()
    runner = runner_of(stage, clients, limits=limits, backoff=backoff, grace=grace)
    consumer = cast(FakeConsumer, runner.attach())
    return cluster, clients, runner, consumer, stage


def runner_of(
    stage: Any,
    clients: FakeClients,
    *,
    limits: dict[str, int] | None = None,
    backoff: Backoff | None = None,
    grace: float = 10.0,
) -> StageRunner[int]:
    """The runner every test here drives: no retry delays, ``in`` -> ``out``, ``changelog``, ``dlq``."""
    return StageRunner(
        stage,
        group_id=GROUP,
        input_topic=IN,
        changelog_topic=LOG,
        dlq_topic=DLQ,
        limits=limits,
        clients=clients,
        backoff=backoff or Backoff(base=0.0, cap=0.0, attempts=3),
        fence_grace_s=grace,
        retake_delay_s=0.0,
        advise_every_s=0.0,
    )


async def turn(runner: StageRunner[Any], n: int = 6) -> None:
    """``n`` turns of the loop, letting open tasks run in between."""
    for _ in range(n):
        await runner.step()
        await runner.drain()
        for _ in range(3):
            await asyncio.sleep(0)


async def owning(runner: StageRunner[Any], consumer: FakeConsumer) -> None:
    await consumer.rebalance({TP})
    await turn(runner, 3)
    assert runner.partitions == [0]


def errors(kind: str) -> float:
    value = STAGE_ERRORS.labels("counting", kind)._value.get()
    return float(value)


def gaps() -> float:
    return float(OFFSET_GAPS.labels("counting")._value.get())


def changelog(cluster: Cluster) -> list[tuple[bytes | None, bytes | None]]:
    return [(r.key, r.value) for r in cluster.records(LOG)]


def input_offset(cluster: Cluster) -> int | None:
    """The input offset the changelog holds (committed with the outputs), None before any batch."""
    held = [from_json(InputOffset, v) for k, v in changelog(cluster) if k == input_offset_key(IN) and v]
    return held[-1].next_offset if held else None


# --- the table view --------------------------------------------------------------------------------


def test_the_table_reads_its_own_writes_over_the_committed_state_and_changes_nothing_itself() -> None:
    committed = {b"a": 1, b"b": 2}
    table: Table[int] = Table(committed)
    table[b"a"] = 10
    table[b"c"] = 3
    del table[b"b"]
    table.delete(b"never-there")
    assert table[b"a"] == 10 and table.get(b"b") is None and b"b" not in table and b"c" in table
    assert sorted(table) == [b"a", b"c"] and len(table) == 2 and dict(table.items()) == {b"a": 10, b"c": 3}
    with pytest.raises(KeyError):
        del table[b"b"]
    with pytest.raises(KeyError):
        table[b"b"]
    assert table.changes == {b"a": 10, b"c": 3, b"b": None, b"never-there": None}
    assert committed == {b"a": 1, b"b": 2}  # applied by the runtime, only after a commit


# --- a batch: all or nothing -------------------------------------------------------------------------


async def test_a_batch_commits_outputs_changelog_and_offsets_together_once_per_changed_key() -> None:
    cluster, _, runner, consumer, stage = setup()
    cluster.produce(IN, [b"x1", b"x2", b"x3"], key=b"k")
    await owning(runner, consumer)
    await turn(runner)
    assert cluster.values(OUT) == [b"x1", b"x2", b"x3"]
    # once per key, the batch's last value; the input offset is a record of the same transaction
    assert changelog(cluster) == [(b"n", b"3"), (b"k", b"3"), (b"\x00offset/in", b'{"next_offset":3}')]
    assert "offsets" not in {op for _, op in cluster.calls}  # no round trips to the group coordinator
    assert cluster.offsets[GROUP, TP] == 3  # the group's offset follows, for lag monitoring
    assert runner.state(0) == {b"n": 3, b"k": 3}
    assert stage.seen == [None]  # one transaction
    assert runner.batches == 1


async def test_changes_are_applied_only_after_the_commit_and_an_abort_leaves_the_state_untouched() -> None:
    cluster, _, runner, consumer, stage = setup()
    cluster.produce(IN, [b"x1"])
    await owning(runner, consumer)
    await turn(runner)
    assert runner.state(0) == {b"n": 1, b"k": 1}
    cluster.produce(IN, [b"x2", b"x3"])
    cluster.faults["send"].append(RequestTimedOutError())  # the batch's outputs are refused
    await runner.step()
    await runner.drain()
    assert runner.state(0) == {b"n": 1, b"k": 1}  # the failed batch changed nothing
    assert cluster.values(OUT) == [b"x1"] and input_offset(cluster) == 1
    assert [op for _, op in cluster.calls][-2:] == ["send", "abort"]
    await turn(runner)
    assert cluster.values(OUT) == [b"x1", b"x2", b"x3"]  # retried once, exactly
    assert runner.state(0) == {b"n": 3, b"k": 3}
    assert stage.seen == [None, 1, 1]  # the retry started from the committed table again


async def test_undecodable_inputs_and_rule_failures_are_dead_lettered_by_the_runtime() -> None:
    cluster, _, runner, consumer, _ = setup()
    cluster.produce(IN, [b"bad json", b"ok", b"boom"])
    await owning(runner, consumer)
    await turn(runner)
    letters = [from_json(DeadLetter, v or b"") for v in cluster.values(DLQ)]
    assert [(d.offset, d.reason, d.stage) for d in letters] == [
        (0, "schema_violation", "counting"),
        (2, "processing_failure", "counting"),
    ]
    assert letters[1].error == "the rule refuses it" and letters[0].original_bytes() == b"bad json"
    assert cluster.values(OUT) == [b"ok"] and cluster.offsets[GROUP, TP] == 3


async def test_a_refused_output_goes_careful_and_dead_letters_only_its_input() -> None:
    cluster, _, runner, consumer, _ = setup(limits={OUT: 1000, DLQ: 1 << 20, LOG: 1 << 20})
    cluster.produce(IN, [b"a", b"b", b"x" * 2000, b"c"])
    await owning(runner, consumer)
    await turn(runner, 12)
    assert cluster.values(OUT) == [b"a", b"b", b"c"]
    [letter] = [from_json(DeadLetter, v or b"") for v in cluster.values(DLQ)]
    assert (letter.reason, letter.offset) == ("size_violation", 2)
    assert runner.state(0) == {b"n": 3, b"k": 3}
    assert cluster.offsets[GROUP, TP] >= 4 and not runner._careful


async def test_a_broker_refusal_re_takes_the_partition_and_still_dead_letters_only_its_input() -> None:
    cluster, clients, runner, consumer, _ = setup()
    await owning(runner, consumer)
    cluster.faults["commit"] += [MessageSizeTooLargeError(), MessageSizeTooLargeError()]  # batch, then "a"
    cluster.produce(IN, [b"a", b"b"])
    await turn(runner, 12)
    assert len(clients.producers) >= 2  # re-taken with a fresh, fencing producer
    [letter] = [from_json(DeadLetter, v or b"") for v in cluster.values(DLQ)]
    assert (letter.reason, letter.offset) == ("size_violation", 0)
    assert cluster.values(OUT) == [b"b"] and runner.state(0) == {b"n": 1, b"k": 1}


# --- error classes ----------------------------------------------------------------------------------


def test_errors_are_classified_through_their_causes() -> None:
    from aiokafka.errors import InvalidProducerEpoch, NotLeaderForPartitionError, ProducerFenced

    try:
        try:
            raise InvalidProducerEpoch()
        except InvalidProducerEpoch as inner:
            raise RuntimeError("send failed") from inner
    except RuntimeError as outer:
        assert fenced(outer) and not transient(outer)
    assert fenced(ProducerFenced()) and not fenced(RequestTimedOutError())
    assert transient(RequestTimedOutError()) and transient(NotLeaderForPartitionError())
    assert transient(KafkaTimeoutError()) and not transient(ValueError("a bug"))


async def test_fenced_drops_the_partition_at_once_without_retrying() -> None:
    cluster, clients, runner, consumer, _ = setup(grace=60.0)
    cluster.produce(IN, [b"x1"])
    await owning(runner, consumer)
    await turn(runner)
    before = errors("fenced")
    usurper = FakeProducer(cluster, clients.producers[0].tid)
    await usurper.start()  # another owner's init_transactions
    cluster.produce(IN, [b"x2"])
    calls = len(cluster.calls)
    await turn(runner, 6)
    assert errors("fenced") == before + 1
    assert runner.partitions == [] and clients.producers[0].stopped
    assert TP in consumer.paused  # nothing fetched for it while the rebalance is pending
    assert [op for _, op in cluster.calls[calls:]] == ["begin"]  # one attempt: no abort, no retry
    assert len(clients.producers) == 1  # and no re-take within the grace
    await consumer.rebalance(set())  # the rebalance takes it away: nothing left behind
    assert not runner._opening and runner.partitions == []
    assert cluster.values(OUT) == [b"x1"]


async def test_fenced_by_a_timeout_re_takes_the_partition_after_the_grace_if_still_ours() -> None:
    cluster, clients, runner, consumer, _ = setup(grace=0.0)
    await owning(runner, consumer)
    cluster.epochs[clients.producers[0].tid] += 1  # the broker bumped the epoch (transaction timeout)
    cluster.produce(IN, [b"x1"])
    await turn(runner, 10)
    assert len(clients.producers) == 2 and runner.partitions == [0]
    assert cluster.values(OUT) == [b"x1"] and cluster.offsets[GROUP, TP] == 1


async def test_a_transient_error_aborts_and_retries_from_the_committed_offset_with_backoff() -> None:
    cluster, clients, runner, consumer, _ = setup(backoff=Backoff(base=0.05, cap=0.05, attempts=3))
    await owning(runner, consumer)
    before = errors("transient")
    cluster.faults["send"].append(RequestTimedOutError())
    cluster.produce(IN, [b"x1", b"x2"])
    await runner.step()
    await runner.drain()
    assert errors("transient") == before + 1
    assert consumer.positions[TP] == 0 and TP in consumer.paused  # back at the committed offset, waiting
    assert ("counting", "abort") in [(tid.split("-")[1], op) for tid, op in cluster.calls]
    await turn(runner, 2)
    assert cluster.values(OUT) == []  # still backing off
    await asyncio.sleep(0.06)
    await turn(runner, 3)
    assert cluster.values(OUT) == [b"x1", b"x2"] and len(clients.producers) == 1  # same producer


async def test_transient_errors_past_the_attempts_re_take_the_partition() -> None:
    cluster, clients, runner, consumer, _ = setup(backoff=Backoff(base=0.0, cap=0.0, attempts=2))
    await owning(runner, consumer)
    cluster.faults["send"] += [RequestTimedOutError()] * 3
    cluster.produce(IN, [b"x1"])
    await turn(runner, 12)
    assert len(clients.producers) == 2  # bounded: the third failure re-took the partition
    assert cluster.values(OUT) == [b"x1"]


async def test_an_unknown_commit_outcome_re_takes_the_partition_and_restores_what_landed() -> None:
    cluster, clients, runner, consumer, stage = setup()
    await owning(runner, consumer)
    before = errors("unknown_outcome")
    cluster.faults["commit_landed"].append(KafkaTimeoutError())  # committed, but we cannot know
    cluster.produce(IN, [b"x1", b"x2"])
    await runner.step()
    await runner.drain()
    assert errors("unknown_outcome") == before + 1 and runner.partitions == []
    await turn(runner, 8)
    assert len(clients.producers) == 2 and runner.partitions == [0]
    assert runner.state(0) == {b"n": 2, b"k": 2}  # restored from the changelog that landed
    cluster.produce(IN, [b"x3"])
    await turn(runner)
    assert cluster.values(OUT) == [b"x1", b"x2", b"x3"]  # nothing done twice
    assert stage.seen == [None, 2]


# --- offset continuity ---------------------------------------------------------------------------------


async def test_markers_between_transactions_are_not_gaps() -> None:
    cluster, _, runner, consumer, _ = setup()
    await owning(runner, consumer)
    before = gaps()
    for i in range(4):
        cluster.produce(IN, [b"x%d" % i, b"y%d" % i])
        await turn(runner, 2)
    assert gaps() == before
    assert len(cluster.values(OUT)) == 8 and cluster.offsets[GROUP, TP] == 11


@pytest.mark.parametrize("moved_to", [0, 7], ids=["replayed", "skipped"])
async def test_a_fetch_from_elsewhere_is_not_processed_and_the_partition_seeks_back(moved_to: int) -> None:
    cluster, _, runner, consumer, _ = setup()
    cluster.produce(IN, [b"a", b"b"])
    await owning(runner, consumer)
    await turn(runner)
    cluster.produce(IN, [b"c", b"d"])
    cluster.produce(IN, [b"e", b"f"])
    before = gaps()
    consumer.positions[TP] = moved_to  # an offset reset, a stray seek
    await runner.step()
    await runner.drain()
    assert gaps() == before + 1
    assert consumer.positions[TP] == 2 and cluster.values(OUT) == [b"a", b"b"]  # nothing processed
    await turn(runner)
    assert cluster.values(OUT) == [b"a", b"b", b"c", b"d", b"e", b"f"]  # each once, none skipped


# --- assignment, restore, revocation ---------------------------------------------------------------


async def test_assignment_pauses_restores_in_the_loop_then_resumes() -> None:
    cluster, _, runner, consumer, _ = setup()
    cluster.append(TopicPartition(LOG, 0), b"n", b"5")
    cluster.append(TopicPartition(LOG, 0), b"gone", b"1")
    cluster.append(TopicPartition(LOG, 0), b"gone", None)
    cluster.offsets[GROUP, TP] = 2
    cluster.produce(IN, [b"old", b"older", b"new"])
    await consumer.rebalance({TP})
    assert TP in consumer.paused and runner.partitions == [] and not runner.ready.is_set()
    await turn(runner, 3)
    assert TP not in consumer.paused and runner.ready.is_set()
    await turn(runner)
    assert runner.state(0) == {b"n": 6, b"k": 1}  # restored (tombstone applied), then one more
    assert cluster.values(OUT) == [b"new"]  # from the committed offset


async def test_a_re_taken_partition_starts_from_the_offset_its_changelog_holds_not_the_groups() -> None:
    cluster, _, runner, consumer, _ = setup()
    cluster.produce(IN, [b"a", b"b", b"c"])
    await owning(runner, consumer)
    await turn(runner)
    cluster.offsets[GROUP, TP] = 1  # the group's offset behind (an advisory commit lost, a reset)
    await consumer.rebalance(set())
    await consumer.rebalance({TP})
    await turn(runner)
    cluster.produce(IN, [b"d"])
    await turn(runner)
    assert cluster.values(OUT) == [b"a", b"b", b"c", b"d"]  # none again: the changelog's offset wins
    assert runner.state(0) == {b"n": 4, b"k": 4}  # the offset record is not a table key
    assert cluster.offsets[GROUP, TP] == 5


async def test_group_offset_commits_are_coalesced_to_one_per_interval() -> None:
    cluster, _, runner, consumer, _ = setup()
    runner.advise_every_s = 0.05
    commits: list[dict[TopicPartition, int]] = []
    commit = consumer.commit

    async def counted(offsets: Mapping[TopicPartition, int]) -> None:
        commits.append(dict(offsets))
        await commit(offsets)

    consumer.commit = counted  # type: ignore[method-assign]
    await owning(runner, consumer)
    for value in (b"a", b"b", b"c", b"d"):  # four transactions within one interval
        cluster.produce(IN, [value])
        await turn(runner)
    assert input_offset(cluster) == 7 and len(commits) <= 2  # the open's, then at most one more
    await asyncio.sleep(0.12)
    assert commits[-1] == {TP: 7} and cluster.offsets[GROUP, TP] == 7  # the last one, coalesced
    await runner.stop()


async def test_a_failed_group_commit_changes_nothing_of_the_stream_and_the_next_one_lands() -> None:
    cluster, _, runner, consumer, _ = setup()
    await owning(runner, consumer)
    cluster.faults["group_commit"].append(RequestTimedOutError())
    cluster.produce(IN, [b"a"])
    await turn(runner)
    assert cluster.values(OUT) == [b"a"] and input_offset(cluster) == 1  # committed all the same
    assert cluster.offsets[GROUP, TP] == 0  # the open's commit stands; the batch's was lost
    cluster.produce(IN, [b"b"])
    await turn(runner)
    assert cluster.values(OUT) == [b"a", b"b"] and cluster.offsets[GROUP, TP] == 3


async def test_a_revoked_partition_leaves_the_groups_offset_exactly_where_it_stands() -> None:
    cluster, _, runner, consumer, _ = setup()
    runner.advise_every_s = 60.0  # the coalesced commits would wait a minute
    cluster.produce(IN, [b"a", b"b"])
    await owning(runner, consumer)
    await turn(runner)
    assert input_offset(cluster) == 2 and cluster.offsets.get((GROUP, TP), 0) == 0  # still waiting
    await consumer.rebalance(set())
    assert cluster.offsets[GROUP, TP] == 2  # committed in the revocation, before the group moves on
    await consumer.rebalance({TP})
    await turn(runner)
    cluster.produce(IN, [b"c"])
    await turn(runner)
    assert input_offset(cluster) == 4 and cluster.offsets[GROUP, TP] == 2  # still waiting
    await runner.stop()
    assert cluster.offsets[GROUP, TP] == 4  # a clean stop commits them too


async def test_a_revocation_during_restore_cancels_it_cleanly() -> None:
    cluster, clients, runner, consumer, _ = setup()
    cluster.changelog_gate = asyncio.Event()  # restores wait
    cluster.produce(IN, [b"x"])
    await consumer.rebalance({TP})
    await turn(runner, 3)
    assert runner.partitions == [] and TP in runner._opening  # restoring
    await consumer.rebalance(set())
    assert not runner._opening and runner.partitions == []
    assert clients.producers[0].stopped  # its fencing producer closed
    cluster.changelog_gate.set()
    await turn(runner, 3)
    assert runner.partitions == [] and cluster.values(OUT) == []
    await consumer.rebalance({TP})  # handed back later: taken afresh
    await turn(runner, 6)
    assert runner.partitions == [0] and cluster.values(OUT) == [b"x"]


async def test_a_failing_restore_is_tried_again() -> None:
    cluster, clients, runner, consumer, _ = setup()
    cluster.produce(IN, [b"x"])
    original = clients.changelog
    failures = [RequestTimedOutError()]

    async def flaky(tp: TopicPartition) -> Any:
        if failures:
            raise failures.pop()
        async for batch in original(tp):
            yield batch

    clients.changelog = flaky  # type: ignore[method-assign]
    await consumer.rebalance({TP})
    await turn(runner, 3)
    assert runner.partitions == [] and clients.producers[0].stopped  # the failed open let go of it
    runner._not_before.clear()  # skip the 1 s wait
    await turn(runner, 6)
    assert runner.partitions == [0] and cluster.values(OUT) == [b"x"]


async def test_a_partition_does_not_wait_for_another_partitions_batch() -> None:
    cluster, _, runner, consumer, stage = setup()
    cluster.partitions[IN] = 2
    tp1 = TopicPartition(IN, 1)
    await consumer.rebalance({TP, tp1})
    await turn(runner, 3)
    assert runner.partitions == [0, 1]
    stage.gates[1] = asyncio.Event()  # partition 1's batch stays in flight
    cluster.produce(IN, [b"slow"], partition=1)
    cluster.produce(IN, [b"a"])
    for _ in range(4):
        await runner.step()
        await asyncio.sleep(0)
    assert tp1 in runner._inflight
    cluster.produce(IN, [b"b"])
    for _ in range(4):
        await runner.step()
        await asyncio.sleep(0)
    assert cluster.values(OUT) == [b"a", b"b"]  # two batches of partition 0 committed meanwhile
    stage.gates[1].set()
    await runner.drain()
    assert cluster.values(OUT) == [b"a", b"b", b"slow"] and cluster.offsets[GROUP, tp1] == 1


async def test_a_revocation_waits_for_the_batch_in_flight_to_commit() -> None:
    cluster, clients, runner, consumer, stage = setup()
    await owning(runner, consumer)
    stage.gates[0] = asyncio.Event()
    cluster.produce(IN, [b"x"])
    for _ in range(3):
        await runner.step()
        await asyncio.sleep(0)
    assert TP in runner._inflight
    revoking = asyncio.create_task(consumer.rebalance(set()))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not revoking.done() and not clients.producers[0].stopped  # waits for the batch
    stage.gates[0].set()
    await revoking
    assert cluster.values(OUT) == [b"x"] and input_offset(cluster) == 1  # committed, then let go
    assert clients.producers[0].stopped and runner.partitions == []


async def test_stop_closes_every_producer() -> None:
    _, clients, runner, consumer, _ = setup()
    await owning(runner, consumer)
    await runner.stop()
    assert all(p.stopped for p in clients.producers) and runner.partitions == []


def test_dead_letters_through_the_real_tx_carry_the_reason() -> None:
    async def go() -> list[DeadLetter]:
        cluster = Cluster()
        producer = FakeProducer(cluster, "t")
        await producer.start()
        await producer.begin_transaction()
        tx = Tx(producer, stage="s", dlq=DLQ)
        cluster.produce(IN, [b"bad", b"boom"])
        bad, boom = cluster.records(IN)
        assert await tx.decode(bad, decode) is None
        assert await tx.attempt(boom, rule, b"boom") is None
        assert await tx.attempt(boom, rule, b"fine") == b"fine"
        await tx.flush()
        await producer.commit_transaction()
        return [from_json(DeadLetter, v or b"") for v in cluster.values(DLQ)]

    letters = asyncio.run(go())
    assert [(d.reason, d.offset, d.error_type) for d in letters] == [
        ("schema_violation", 0, "ValueError"),
        ("processing_failure", 1, "ArithmeticError"),
    ]
    assert orjson.loads(to_json(letters[0]))["stage"] == "s"


async def test_a_turn_while_every_partition_is_being_revoked_waits_without_failing() -> None:
    _, _, runner, consumer, _ = setup()
    await owning(runner, consumer)
    runner._revoking.add(TP)  # a revocation under way, no batch in flight: nothing to poll
    await runner.step()  # must neither raise nor poll the partition
    runner._revoking.discard(TP)
    assert runner.partitions == [0]


async def test_dead_letters_carry_typed_headers_and_the_originals_own() -> None:
    """Kafka Connect style: stage, reason class, where the original was and the exception, as headers
    (so tools filter without decoding the body); the original's headers ride along for a replay."""
    cluster, _, runner, consumer, _ = setup()
    cluster.produce(IN, [b"bad json"], headers=[("traceparent", b"00-abc-def-01")])
    await owning(runner, consumer)
    await turn(runner)
    [letter] = cluster.records(DLQ)
    headers = dict(letter.headers)
    assert headers == {
        "feedstream.dlq.stage": b"counting",
        "feedstream.dlq.reason": b"schema_violation",
        "feedstream.dlq.topic": IN.encode(),
        "feedstream.dlq.partition": b"0",
        "feedstream.dlq.offset": b"0",
        "feedstream.dlq.exception.class": headers["feedstream.dlq.exception.class"],
        "feedstream.dlq.exception.message": headers["feedstream.dlq.exception.message"],
        "traceparent": b"00-abc-def-01",
    }
    assert headers["feedstream.dlq.exception.class"] in (b"ValueError", b"DecodeError", b"JSONDecodeError")
    assert original_headers(letter.headers) == [("traceparent", b"00-abc-def-01")]


async def test_consumer_lag_is_the_end_minus_where_the_stage_stands_and_goes_with_the_partition() -> None:
    """``feedstream_consumer_lag{stage,topic,partition}``: offsets between the read_committed end and
    the stage's position (0 once caught up: markers passed), updated per batch and when idle."""
    cluster, _, runner, consumer, _ = setup()
    cluster.produce(IN, [b"a", b"b", b"c"])
    await owning(runner, consumer)
    await turn(runner)
    assert lag() == 0
    consumer.pause(TP)  # behind: records arrive, the stage does not take them
    cluster.produce(IN, [b"d", b"e"])
    await turn(runner, 2)
    assert lag() == 3  # two records and their transaction's marker
    consumer.resume(TP)
    await turn(runner)
    assert lag() == 0 and cluster.values(OUT)[-2:] == [b"d", b"e"]
    await consumer.rebalance(set())
    await turn(runner, 2)
    assert ("counting", IN, "0") not in lags()  # a partition no longer ours has no lag here


def lag() -> float:
    return float(CONSUMER_LAG.labels("counting", IN, "0")._value.get())


def lags() -> set[tuple[str, ...]]:
    return {tuple(s.labels.values()) for m in CONSUMER_LAG.collect() for s in m.samples}


class Ticker(Counting):
    """A Ticking stage: when ``want`` says so, a tick writes ``tick`` and counts itself in the table."""

    want = False

    def due(self, state: Mapping[bytes, int], now: datetime) -> bool:
        return self.want

    async def tick(self, table: Table[int], tx: Tx, now: datetime) -> None:
        await tx.send(OUT, b"tick", key=b"t")
        table[b"ticks"] = (table.get(b"ticks") or 0) + 1
        self.want = False


async def ticking() -> tuple[Cluster, FakeClients, Ticker, StageRunner[int]]:
    """A runner of a Ticker asked at every turn, owning partition 0."""
    cluster = Cluster()
    clients = FakeClients(cluster)
    stage = Ticker()
    runner = StageRunner(
        stage, group_id=GROUP, input_topic=IN, changelog_topic=LOG, dlq_topic=DLQ, clients=clients, tick_s=0.0
    )
    await owning(runner, cast(FakeConsumer, runner.attach()))
    return cluster, clients, stage, runner


async def test_a_due_tick_commits_its_outputs_and_table_change_together_without_input() -> None:
    cluster, _, stage, runner = await ticking()
    await turn(runner)
    assert cluster.values(OUT) == []  # not due: nothing
    stage.want = True
    await turn(runner)
    assert cluster.values(OUT) == [b"tick"] and runner.state(0) == {b"ticks": 1}
    assert changelog(cluster)[-1] == (b"ticks", b"1")
    assert cluster.offsets.get((GROUP, TP), 0) == 0  # no input offsets moved
    cluster.produce(IN, [b"a"])  # input still flows around ticks
    await turn(runner)
    assert cluster.values(OUT)[-1] == b"a"


async def test_a_fenced_zombie_cannot_commit_a_tick() -> None:
    cluster, clients, stage, zombie = await ticking()
    fencer = FakeProducer(cluster, clients.producers[0].tid)
    await fencer.start()  # the partition's new owner (same transactional id) fences it
    stage.want = True
    before = errors("fenced")
    await turn(zombie)
    assert cluster.values(OUT) == [] and changelog(cluster) == []
    assert errors("fenced") == before + 1


def test_a_dead_letter_counts_its_headers_and_still_fits_its_topic() -> None:
    """The typed headers and the original's headers take room in the letter: a big original with
    big headers is cut to fit with them; headers over a quarter of the room are left out instead."""
    limit = 64 * 1024

    async def go(headers: list[tuple[str, bytes]]) -> Record:
        cluster = Cluster()
        producer = FakeProducer(cluster, "t")
        await producer.start()
        await producer.begin_transaction()
        tx = Tx(producer, stage="s", dlq=DLQ, limits={DLQ: limit})
        cluster.produce(IN, [b"\x00" * 100_000], key=b"k", headers=headers)
        [rec] = cluster.records(IN)
        await tx.dead_letter(rec, ValueError("x" * 10_000), "size_violation")
        await tx.flush()
        await producer.commit_transaction()
        [letter] = cluster.records(DLQ)
        return letter

    some = [(f"h{i}", b"v" * 1000) for i in range(12)]  # 12 KB: under a quarter, kept
    letter = asyncio.run(go(some))
    body = from_json(DeadLetter, letter.value or b"")
    assert original_headers(letter.headers) == some
    assert record_size(letter.key, letter.value, letter.headers) <= limit
    assert body.original_truncated and len(body.original_bytes()) > 20_000  # cut, not emptied
    # without counting the headers the same original would have kept more of its bytes
    bare = asyncio.run(go([]))
    assert len(from_json(DeadLetter, bare.value or b"").original_bytes()) > len(body.original_bytes())

    many = [(f"h{i}", b"v" * 1000) for i in range(20)]  # 20 KB: over a quarter, left out
    letter = asyncio.run(go(many))
    assert original_headers(letter.headers) == []
    assert dict(letter.headers)["feedstream.dlq.reason"] == b"size_violation"
    assert record_size(letter.key, letter.value, letter.headers) <= limit


async def test_the_lag_of_a_partition_whose_batch_is_stuck_counts_from_its_committed_offset() -> None:
    """A batch that hangs (or keeps failing) must show as lag, or the "lag growing" alert stays quiet."""
    cluster, _, runner, consumer, stage = setup()
    await owning(runner, consumer)
    await turn(runner)
    assert lag() == 0
    stage.gates[0] = asyncio.Event()  # the next batch stays in flight
    cluster.produce(IN, [b"a", b"b", b"c"])
    await runner.step()  # fetched: the batch is under way
    for _ in range(3):
        await runner.step()  # more turns while it hangs
        await asyncio.sleep(0)
    assert lag() == 4  # three records and their marker, none committed
    stage.gates[0].set()
    await turn(runner)
    assert lag() == 0


# -- predicted offsets: a partition only this producer writes needs no round trip to learn them ---------

NOTE = "note"


class Noting:
    """Echoes each input to ``out`` (a topic it alone writes), then notes on ``note`` the offset it was
    told each echo has: the way the count stage puts its triplets' offsets into triggers."""

    name = "counting"
    predict_offsets = frozenset({OUT})

    def __init__(self) -> None:
        self.predicted: list[bool] = []  # per batch: were its echoes' offsets known without a flush

    def decode_state(self, value: bytes) -> int:
        return int(value)

    def encode_state(self, state: int) -> bytes:
        return str(state).encode()

    async def process(self, records: Sequence[Record], table: Table[int], tx: Tx) -> None:
        echoes = [(rec.value or b"", await tx.send(OUT, rec.value, key=rec.key)) for rec in records]
        await tx.offsets()
        self.predicted.append(all(sent._batch.sent is None for _, sent in echoes))
        for value, sent in echoes:
            await tx.send(NOTE, value + b"@" + str(sent.result().offset).encode())


def noting() -> tuple[Cluster, StageRunner[int], FakeConsumer, Noting]:
    cluster = Cluster()
    stage = Noting()
    runner = runner_of(stage, FakeClients(cluster))
    return cluster, runner, cast(FakeConsumer, runner.attach()), stage


def notes_hold(cluster: Cluster) -> list[bytes]:
    """Every committed note names the offset its echo really has; returns the echoes in order."""
    log = cluster.logs[TopicPartition(OUT, 0)]
    for note in cluster.values(NOTE):
        value, _, offset = (note or b"").rpartition(b"@")
        record = log[int(offset)]
        assert record is not None and record.value == value, (note, record)
    return [v or b"" for v in cluster.values(OUT)]


async def test_offsets_of_a_partition_only_this_producer_writes_are_known_after_its_first_commit() -> None:
    cluster, runner, consumer, stage = noting()
    await owning(runner, consumer)
    for batch in ([b"a", b"b"], [b"c"], [b"d", b"e", b"f"]):
        cluster.produce(IN, batch)
        await turn(runner, 2)
    # the first batch learns the partition's offsets from the broker; the next ones know them at once
    # (each commit marker counted), and every note names the echo's true offset
    assert stage.predicted == [False, True, True]
    assert notes_hold(cluster) == [b"a", b"b", b"c", b"d", b"e", b"f"]
    assert errors("mispredicted") == 0


async def test_a_wrong_prediction_aborts_the_batch_and_takes_it_again_with_true_offsets() -> None:
    cluster, runner, consumer, stage = noting()
    await owning(runner, consumer)
    cluster.produce(IN, [b"a"])
    await turn(runner, 2)
    before = errors("mispredicted")
    cluster.produce(OUT, [b"someone else"])  # another writer moves the partition's end
    cluster.produce(IN, [b"b", b"c"])
    await turn(runner, 4)
    assert errors("mispredicted") == before + 1
    # nothing of the mispredicted transaction was committed; the batch came again, offsets learnt
    assert notes_hold(cluster) == [b"a", b"someone else", b"b", b"c"]
    assert cluster.values(NOTE) == [b"a@0", b"b@4", b"c@5"]  # its marker and ours in between
    # a partition found written by someone else is not predicted again until it is re-taken
    cluster.produce(IN, [b"d"])
    await turn(runner, 2)
    assert stage.predicted[-1] is False and notes_hold(cluster)[-1] == b"d"
