"""The stream's rules through both stages on the runtime, in process (tests/fakekafka.py's Kafka):
pairing one outcome at a time, triplet weights, threshold ranges, scored entries, feedback modes.

These were broker tests (tests/integration/test_stream_rules.py); what each asserts is kept. Events
are planned by the publisher library exactly as it would publish them.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Sequence
from typing import Any, cast

import orjson
import pytest
from aiokafka import TopicPartition

from pipeline import contracts
from pipeline.api.contracts import Contract
from pipeline.api.publisher import FeedbackPublisher
from pipeline.kafka.partitioner import default_partition
from pipeline.kafka.topics import TopicNames, topic_names
from pipeline.rules.counters import DomainCounter
from pipeline.settings import Settings
from pipeline.stream.runtime import StageRunner
from pipeline.stream.worker import build_runners
from pipeline.tenants import load_tenants
from pipeline.wire.records import deterministic_id
from tests.conftest import TEST_TENANTS
from tests.fakekafka import Cluster, FakeClients, FakeConsumer

SETTINGS = Settings(topic_prefix="", tenants_file=TEST_TENANTS, shared_pool_threshold=2, worker_id="w")
NAMES: TopicNames = topic_names(SETTINGS)
TENANTS = load_tenants(TEST_TENANTS)


class Stream:
    """Both stages on one in-memory cluster (one partition per topic), driven turn by turn."""

    def __init__(self) -> None:
        self.cluster = Cluster()
        clients = FakeClients(self.cluster)
        self.runners: tuple[StageRunner[Any], StageRunner[Any]] = build_runners(SETTINGS, "", clients)
        for runner in self.runners:
            runner.retake_delay_s = 0.0
        self.publishers = {
            t: FeedbackPublisher("unused:9092", TENANTS, t, settings=SETTINGS)
            for t in ("stream", "mode_off", "mode_audit", "mode_shared")
        }

    async def __aenter__(self) -> Stream:
        for runner in self.runners:
            consumer = cast(FakeConsumer, runner.attach())
            await consumer.rebalance({TopicPartition(runner.input_topic, 0)})
        await self.run()
        return self

    async def __aexit__(self, *_: object) -> None:
        for runner in self.runners:
            await runner.stop()

    async def run(self, turns: int = 4) -> None:
        for _ in range(turns):
            for runner in self.runners:
                await runner.step()
                await runner.drain()
                await runner.step()
                await runner.drain()

    async def publish(
        self, body: Any, *, tenant: str = "stream", contract: Contract | None = None
    ) -> list[str]:
        """Plan ``body`` as the publisher does, write its events in one transaction, run the stages."""
        intake, _ = self.publishers[tenant].plan(body, contract=contract)
        for record in contracts.request_records(NAMES.raw, intake.events):
            self.cluster.produce(NAMES.raw, [record.value], key=record.key or b"", headers=record.headers)
        await self.run()
        return [e.event_id for e in intake.events]

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(v) for v in self.cluster.values(topic) if v is not None]

    def units(self, event_ids: Sequence[str]) -> list[dict[str, Any]]:
        return [u for u in self.on(NAMES.triplets) if u["event_id"] in set(event_ids)]

    def counter(self, domain: str) -> DomainCounter:
        state = self.runners[1].state(0)
        assert state is not None
        return cast(DomainCounter, state[domain.encode()])


def outcome(seeker: str, candidate: str, label: str, weight: float = 1.0) -> dict[str, Any]:
    return {"seeker_id": seeker, "candidate_id": candidate, "outcome": label, "weight": weight}


async def test_seed_000_batch_expands_into_weighted_triplets() -> None:
    async with Stream() as s:
        seeker = "alice"
        ids = await s.publish(
            {
                "domain": "s_five",
                "items": [
                    outcome(seeker, "bob", "accepted"),
                    outcome(seeker, "carl", "rejected"),
                    outcome(seeker, "dan", "converted", 2.0),
                ],
            }
        )
        units = s.units(ids)
    got = {(u["positive"], u["negative"]): round(u["weight"], 4) for u in units}
    assert got == {("dan", "carl"): 2.0, ("dan", "bob"): 0.6667, ("bob", "carl"): 0.6667}
    assert all(u["anchor"] == seeker and u["kind"] == "triplet" and u["counts"] for u in units)
    assert len({u["unit_id"] for u in units}) == 3


async def test_outcomes_one_at_a_time_pair_with_the_seekers_history() -> None:
    async with Stream() as s:
        seeker = "solo"
        ids: list[str] = []
        for cand, label in (
            ("bob", "accepted"),
            ("carl", "rejected"),
            ("dan", "interview_passed"),
            ("erin", "ghosted"),
        ):
            ids += await s.publish({"domain": "s_llm", "items": [outcome(seeker, cand, label)]})
        # bob/carl; dan(2.5) beats bob(2), carl(0); bob and dan beat erin(0.5)
        units = s.units(ids)
        pairs = sorted((u["positive"], u["negative"]) for u in units)
        assert pairs == [("bob", "carl"), ("bob", "erin"), ("dan", "bob"), ("dan", "carl"), ("dan", "erin")]
        weights = {(u["positive"], u["negative"]): u["weight"] for u in units}
        assert weights[("dan", "bob")] == pytest.approx(0.5 / 3)
        assert weights[("bob", "erin")] == pytest.approx(1.5 / 3)
        # a newer outcome for bob supersedes the old one: now a negative, paired under dan only
        new = s.units(await s.publish({"domain": "s_llm", "items": [outcome(seeker, "bob", "rejected")]}))
    assert [(u["positive"], u["negative"]) for u in new] == [("dan", "bob")]
    assert new[0]["weight"] == pytest.approx(2.5 / 3)


async def test_threshold_crossing_emits_one_trigger_with_the_exact_range() -> None:
    async with Stream() as s:
        seeker = "t"
        # 2 + 1 = 3 units reach s_three's threshold 3 exactly once; 1 more stays pending
        first = await s.publish(
            {
                "domain": "s_three",
                "items": [
                    outcome(seeker, "a", "converted"),
                    outcome(seeker, "b", "accepted"),
                    outcome(seeker, "c", "accepted"),
                ],
            }
        )
        second = await s.publish({"domain": "s_three", "items": [outcome(seeker, "d", "expired")]})
        ids = set(first + second)
        units = [
            r for r in s.cluster.records(NAMES.triplets) if orjson.loads(r.value or b"")["event_id"] in ids
        ]
        triggers = [t for t in s.on(NAMES.triggers) if t["domain"] == "s_three"]
        counter = s.counter("s_three")
    assert len(units) == 5  # a>b, a>c (b,c tie); then a>d, b>d, c>d
    assert len(triggers) == 1
    trig = triggers[0]
    assert trig["reason"] == "threshold" and trig["count"] == 3 and trig["threshold"] == 3
    assert trig["sequence"] == 1
    rng = trig["range"]
    assert rng["topic"] == NAMES.triplets
    covered = [
        r
        for r in units
        if r.partition == rng["partition"] and rng["start_offset"] <= r.offset <= rng["end_offset"]
    ]
    assert len(covered) == 3
    assert all(r.partition == rng["partition"] for r in units)
    assert counter.pending == 2 and counter.total == 5
    assert counter.last_trigger is not None and counter.last_trigger.trigger_id == trig["trigger_id"]


async def test_feedback_modes_of_corrections() -> None:
    case = f"case-{uuid.uuid4().hex[:6]}"
    body = {
        "case_id": case,
        "module": "intent",
        "original_output": {"intent": "refund"},
        "corrected_output": {"intent": "cancel"},
        "actor": {"id": "rep-1"},
    }
    async with Stream() as s:
        answers = {
            t: (await s.publish(body, tenant=t))[0]
            for t in ("mode_off", "mode_audit", "mode_shared", "stream")
        }
        # the shared pool's copy is anonymized: an opaque event id (derived, so a replay repeats it)
        pooled_id = deterministic_id("pooled-event", answers["mode_shared"])
        units = s.units([*answers.values(), pooled_id])
        signals = [x for x in s.on(NAMES.signals) if x["subject"] == case]
    by_domain = sorted((u["domain"], u["event_id"]) for u in units)
    assert by_domain == sorted(
        [
            ("m_shared", answers["mode_shared"]),
            ("__shared__", pooled_id),
            ("s_corrections", answers["stream"]),
        ]
    )
    pooled = next(u for u in units if u["domain"] == "__shared__")
    assert pooled["tenant"] is None and pooled["kind"] == "preference"
    assert pooled["anchor"] == "intent" and case not in orjson.dumps(pooled).decode()
    assert pooled["chosen"] == {"intent": "cancel"} and pooled["rejected"] == {"intent": "refund"}
    assert sorted(x["tags"]["feedback_mode"] for x in signals) == [
        "audit_only",
        "shared_improvement",
        "tenant_tuning",
    ]  # off: discarded, no signal


async def test_scored_entries_count_except_seed_source() -> None:
    task = "7d444840-9dc0-11d1-b245-5ffdce74fad2"
    async with Stream() as s:
        ids: list[str] = []
        for source in ("seed", "seed", "sdk", "user_rating"):
            ids += await s.publish(
                {"task_id": task, "score": 0.5, "source": source}, contract=Contract.SCORED_OUTPUT
            )
        units = s.units(ids)
        triggers = [t for t in s.on(NAMES.triggers) if t["domain"] == task]
    assert sorted((u["source"], u["counts"]) for u in units) == [
        ("sdk", True),
        ("seed", False),
        ("seed", False),
        ("user_rating", True),
    ]
    assert len(triggers) == 1 and triggers[0]["count"] == 2


async def test_a_domain_waiting_its_max_wait_gets_one_time_trigger_without_new_input() -> None:
    async with Stream() as s:
        s.runners[1].tick_s = 0.0  # ask at every turn
        items = [outcome("w", "a", "accepted"), outcome("w", "b", "rejected"), outcome("w", "c", "rejected")]
        ids = await s.publish({"domain": "s_wait", "items": items})  # 2 units: min_units reached
        assert s.counter("s_wait").pending == 2 and not s.on(NAMES.triggers)  # not waited 1 s yet
        await asyncio.sleep(1.1)  # no new input: only time passes
        await s.run()
        await asyncio.sleep(1.1)
        await s.run()  # and again: nothing pending any more, nothing due
        [trigger] = [t for t in s.on(NAMES.triggers) if t["domain"] == "s_wait"]
        counter = s.counter("s_wait")
        last_unit = max(r.offset for r in s.cluster.records(NAMES.triplets))
        headers = dict(s.cluster.records(NAMES.triggers)[-1].headers)
    assert (trigger["reason"], trigger["count"], trigger["sequence"]) == ("max_wait", 2, 1)
    assert len(s.units(ids)) == 2 and trigger["range"]["end_offset"] == last_unit
    assert counter.pending == 0 and counter.pending_since is None and counter.total == 2
    assert headers["ce_type"] == b"io.feedstream.train.trigger"
    assert headers["ce_id"] == trigger["trigger_id"].encode()


@pytest.mark.parametrize(("signals_partitions", "expected"), [(4, "raw"), (3, "key")])
async def test_signals_go_to_the_raw_records_partition_when_the_topics_match(
    signals_partitions: int, expected: str
) -> None:
    """A raw event's signals keep its key; with as many signals partitions as raw ones they go to the
    raw record's own partition (per-key order and co-location kept, whatever partitioner wrote the raw
    topic; one signals partition per expand transaction), else to the key's default partition."""
    s = Stream()
    s.cluster.partitions.update({NAMES.raw: 4, NAMES.signals: signals_partitions})
    key = next(k for k in (f"seeker-{i}".encode() for i in range(100)) if default_partition(k, 4) != 2)
    intake, _ = s.publishers["stream"].plan(
        {"domain": "s_five", "items": [outcome("alice", "bob", "accepted")]}
    )
    s.cluster.produce(
        NAMES.raw, [r.value for r in contracts.raw_records(NAMES.raw, intake.events)], partition=2, key=key
    )
    expand = s.runners[0]
    consumer = cast(FakeConsumer, expand.attach())
    await consumer.rebalance({TopicPartition(NAMES.raw, p) for p in range(4)})
    for _ in range(4):
        await expand.step()
        await expand.drain()
    await expand.stop()
    where = 2 if expected == "raw" else default_partition(key, signals_partitions)
    found = {p: s.cluster.records(NAMES.signals, p) for p in range(signals_partitions)}
    assert [p for p, records in found.items() if records] == [where]
    assert {r.key for r in found[where]} == {key}


async def test_results_go_to_the_counting_partition_when_the_topics_match() -> None:
    """Results keep the request id as key but go to the partition of the units they count (the
    ingest reads every results partition): one results partition per count transaction."""
    s = Stream()
    s.cluster.partitions.update({NAMES.units: 4, NAMES.results: 4})
    expand, count = s.runners
    await cast(FakeConsumer, expand.attach()).rebalance({TopicPartition(NAMES.raw, 0)})
    await cast(FakeConsumer, count.attach()).rebalance({TopicPartition(NAMES.units, p) for p in range(4)})
    for domain in ("s_five", "s_llm"):
        for seeker in ("a", "b", "c", "d"):
            await s.publish({"domain": domain, "items": [outcome(seeker, "bob", "accepted")]})
    for runner in (expand, count):
        await runner.stop()
    units = {p: s.cluster.records(NAMES.units, p) for p in range(4)}
    results = {p: s.cluster.records(NAMES.results, p) for p in range(4)}
    assert sum(len(r) for r in results.values()) == 8
    for p in range(4):
        wanted = {orjson.loads(r.value or b"")["request_id"] for r in units[p]}
        assert {(r.key or b"").decode() for r in results[p]} == wanted


def inference(i: int) -> dict[str, Any]:
    return {"id": str(uuid.UUID(int=i + 1)), "feedback": {"helpful": i % 2 == 0, "q": {"a": 0.5 + i}}}


def outputs(s: Stream) -> dict[str, list[tuple[bytes | None, bytes | None]]]:
    return {
        t: [(r.key, r.value) for r in s.cluster.records(t)]
        for t in (NAMES.signals, NAMES.units, NAMES.results)
    }


async def test_a_seed_002_request_is_one_array_record_that_expands_like_its_envelopes_alone() -> None:
    """Several items are written as one record, the array of their envelopes (one acknowledged write,
    no transaction); the stream splits it: the same signals (each keyed by its own inference id),
    units and results as the same envelopes written a record each."""
    body = [inference(i) for i in range(3)]
    intake, _ = Stream().publishers["stream"].plan(body)
    (record,) = contracts.request_records(NAMES.raw, intake.events)
    alone = contracts.raw_records(NAMES.raw, intake.events)
    assert record.key == alone[0].key and record.value == b"[" + b",".join(r.value for r in alone) + b"]"
    assert dict(record.headers)["events"] == b"3" and "event_id" not in dict(record.headers)
    seen = []
    for records in ([record], alone):
        async with Stream() as s:
            for r in records:
                s.cluster.produce(NAMES.raw, [r.value], key=r.key or b"", headers=r.headers)
            await s.run()
            seen.append(outputs(s))
    split, whole = seen
    assert split == whole
    assert {k for k, _ in split[NAMES.signals]} == {item["id"].encode() for item in body}
    assert len(split[NAMES.results]) == 3


async def test_a_bad_envelope_in_an_array_is_dead_lettered_alone_and_replays_as_itself() -> None:
    intake, _ = Stream().publishers["stream"].plan([inference(0), inference(1)])
    good = [r.value for r in contracts.raw_records(NAMES.raw, intake.events)]
    bad = orjson.dumps({**orjson.loads(good[1]), "contract": "telepathy"})
    async with Stream() as s:
        s.cluster.produce(NAMES.raw, [b"[" + b",".join([good[0], bad]) + b"]", b"[]"], key=b"first")
        await s.run()
        letters = [orjson.loads(v) for v in s.cluster.values(NAMES.dlq) if v is not None]
        signals = s.on(NAMES.signals)
    assert [(letter["reason"], letter["offset"]) for letter in letters] == [
        ("schema_violation", 0),
        ("schema_violation", 1),
    ]
    assert base64.b64decode(letters[0]["original"]) == bad  # the envelope alone: a replay is itself
    assert base64.b64decode(letters[1]["original"]) == b"[]"  # an array of nothing: the record
    assert {sig["event_id"] for sig in signals} == {intake.events[0].event_id}
