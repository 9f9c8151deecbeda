"""Bounds of the stream, without a broker: sizes of every output, chunks, the size pre-check, dead
letters that always fit, finite weights, age expiry by stream time, and the ingest's bounded view."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec
import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError, RequestTimedOutError
from aiokafka.structs import ConsumerRecord, RecordMetadata

from pipeline.api.stream_view import REQUEST_OVERHEAD_BYTES, RESULT_OVERHEAD_BYTES, StreamView
from pipeline.contracts import expand_event
from pipeline.kafka import topics
from pipeline.kafka.topics import TopicNames, topic_names
from pipeline.limits import MAX_ID_CHARS, MAX_LABEL_CHARS, MAX_WEIGHT
from pipeline.rules.expansion import ExpandState
from pipeline.rules.triplets import Limits, Observation, SeekerHistory, StreamClock, expand_outcomes
from pipeline.settings import Settings
from pipeline.stream.count import CountStage
from pipeline.stream.expand import CLOCK_KEY, ExpandStage, chunk_batch
from pipeline.stream.runtime import OutputRefused, Record, Table, Tx, record_size, refusal
from pipeline.tenants import FeedbackMode
from pipeline.wire.envelope import (
    CorrectionEnvelope,
    CorrectionPayload,
    RankingOutcomeEnvelope,
    RankingOutcomePayload,
    ResolvedOutcome,
    encode,
)
from pipeline.wire.records import (
    MAX_RESULT_TRIGGERS,
    DeadLetter,
    DeadLetterReason,
    StageResult,
    TrainTrigger,
    TriggerRange,
    TripletUnit,
    UnitsBatch,
    from_json,
    to_json,
)
from tests.fakekafka import FakeBatch

T0 = datetime(2024, 1, 15, 10, 35, tzinfo=UTC)
LIMITS = Limits(max_items=200, max_age_seconds=30 * 86_400.0)
SETTINGS = Settings(topic_prefix="")
NAMES: TopicNames = topic_names(SETTINGS)
SIZES = topics.message_limits(SETTINGS)


# --- fakes: what a stage sees of the runtime ------------------------------------------------------


class FakeTx(Tx):
    """Collects what a stage sends, with offsets per topic; checks sizes and dead-letters like Tx."""

    def __init__(self, limits: Mapping[str, int] = SIZES) -> None:
        super().__init__(cast(Any, None), stage="test", dlq="dlq", limits=limits)
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []
        self.letters: list[tuple[Record, str]] = []
        self.limits = limits
        self._offsets: dict[str, int] = {}

    async def send(  # type: ignore[override]
        self, topic: str, value: bytes | None, key: bytes | None = None, **_: Any
    ) -> asyncio.Future[RecordMetadata]:
        if record_size(key, value) > self.limits.get(topic, 1 << 20):
            raise OutputRefused(f"too big for {topic}")
        self.sent.append((topic, key, value))
        offset = self._offsets.get(topic, 0)
        self._offsets[topic] = offset + 1
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        fut.set_result(RecordMetadata(topic, 0, None, offset, -1, -1, -1))
        return fut

    async def partitions(self, topic: str) -> int:
        return 1

    async def flush(self) -> None:
        return None

    async def dead_letter(self, rec: Record, error: BaseException, reason: DeadLetterReason) -> None:
        self.letters.append((rec, reason))

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(v) for t, _, v in self.sent if t == topic and v is not None]


def record(value: bytes, key: bytes = b"k", offset: int = 0, topic: str = "feedback.raw") -> Record:
    return ConsumerRecord(topic, 0, offset, 0, 0, key, value, None, len(key), len(value), [])


def ranking(
    seeker: str, items: Sequence[tuple[str, str, float, bool]], *, at: datetime = T0, event_id: str = "e1"
) -> RankingOutcomeEnvelope:
    return RankingOutcomeEnvelope(
        event_id=event_id,
        tenant="acme",
        domain="dating",
        received_at=at,
        correlation_id="c",
        request_id=f"req-{event_id}",
        origin="http",
        payload=RankingOutcomePayload(
            seeker_id=seeker,
            items=[
                ResolvedOutcome(index=i, candidate_id=c, outcome=label, grade=g, positive=p, weight=1.0)
                for i, (c, label, g, p) in enumerate(items)
            ],
        ),
    )


def outcomes(n: int, prefix: str = "c") -> list[tuple[str, str, float, bool]]:
    grades = [(3.0, True), (2.0, True), (1.0, False), (0.0, False)]
    return [(f"{prefix}{i:04d}", "x", *grades[i % 4]) for i in range(n)]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- chunks ---------------------------------------------------------------------------------------


def test_a_batch_under_the_budget_is_one_message_as_before() -> None:
    out = expand_event(ranking("s", outcomes(4)), {}, limits=LIMITS, shared_pool="__shared__")
    batch = out.batches[0]
    assert chunk_batch(batch, 1 << 20) == [to_json(batch)]
    assert orjson.loads(to_json(batch))["chunks"] == 1


def test_a_big_batch_is_chunked_under_the_budget_in_order() -> None:
    out = expand_event(ranking("s", outcomes(120)), {}, limits=LIMITS, shared_pool="__shared__")
    batch = out.batches[0]
    assert len(batch.units) == 90 * 30 + 30 * 60  # converted over 90, accepted over 60
    budget = 64 * 1024
    messages = [orjson.loads(m) for m in chunk_batch(batch, budget)]
    assert len(messages) > 1
    assert [m["chunk"] for m in messages] == list(range(len(messages)))
    assert {m["chunks"] for m in messages} == {len(messages)}
    assert all(len(orjson.dumps(m["units"])) <= budget for m in messages)
    units = [u["unit_id"] for m in messages for u in m["units"]]
    assert units == [u.unit_id for u in batch.units]
    assert all(m["event_id"] == batch.event_id and m["request_id"] == batch.request_id for m in messages)
    for m in messages:
        from_json(UnitsBatch, orjson.dumps(m))


def test_a_unit_bigger_than_the_budget_is_a_chunk_of_its_own() -> None:
    out = expand_event(ranking("s", outcomes(3)), {}, limits=LIMITS, shared_pool="__shared__")
    units = out.batches[0].units
    big = msgspec.structs.replace(cast(TripletUnit, units[0]), anchor="a" * 5000)
    batch = msgspec.structs.replace(out.batches[0], units=[units[1], big, units[2]])
    messages = [orjson.loads(m) for m in chunk_batch(batch, 2000)]
    assert [len(m["units"]) for m in messages] == [1, 1, 1]
    assert messages[1]["units"][0]["anchor"] == "a" * 5000


def test_the_count_stage_answers_per_chunk_and_caps_triggers() -> None:
    out = expand_event(ranking("s", outcomes(120)), {}, limits=LIMITS, shared_pool="__shared__")
    messages = chunk_batch(out.batches[0], 64 * 1024)
    stage = CountStage(NAMES, lambda domain: 1)  # a trigger per unit
    tx = FakeTx()
    recs = [record(m, b"dating", i, NAMES.units) for i, m in enumerate(messages)]
    run(stage.process(recs, Table({}), cast(Tx, tx)))
    results = [from_json(StageResult, orjson.dumps(r)) for r in tx.on(NAMES.results)]
    assert [(r.chunk, r.chunks) for r in results] == [(i, len(messages)) for i in range(len(messages))]
    assert sum(r.units_generated for r in results) == len(out.batches[0].units)
    assert all(len(r.triggers) == MAX_RESULT_TRIGGERS for r in results)
    assert sum(r.triggers_total for r in results) == len(out.batches[0].units) == len(tx.on(NAMES.triggers))
    assert results[-1].triggers[-1].sequence == len(out.batches[0].units)  # the last ones are kept
    assert results[-1].pending == 0


# --- the size pre-check and dead letters ----------------------------------------------------------


@dataclass
class FakeProducer:
    sent: list[tuple[str, bytes | None]] = field(default_factory=list)

    class _Meta:
        def partitions_for_topic(self, topic: str) -> set[int]:
            return {0, 1, 2, 3}

    _metadata: Any = field(default_factory=_Meta)

    class _Client:
        async def _wait_on_metadata(self, topic: str) -> None:
            return None

    client: Any = field(default_factory=_Client)

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        self.sent.extend((topic, value) for _, value, _ in batch.records)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def test_a_record_over_its_topics_limit_is_refused_before_sending() -> None:
    producer = FakeProducer()
    tx = Tx(cast(Any, producer), stage="expand", dlq="dlq", limits={"small": 1000})

    async def go() -> None:
        await tx.send("small", b"x" * (1000 - record_size(b"k", b"")), key=b"k")  # exactly at the limit
        with pytest.raises(OutputRefused, match="over its 1000-byte limit") as refused:
            await tx.send("small", b"x" * 1000, key=b"k")
        assert refused.value.reason == "size_violation" and not refused.value.by_broker
        await tx.flush()

    run(go())
    assert len(producer.sent) == 1


def test_broker_refusals_are_recognised_even_when_wrapped() -> None:
    try:
        try:
            raise MessageSizeTooLargeError()
        except MessageSizeTooLargeError as inner:
            raise RuntimeError("commit failed") from inner
    except RuntimeError as outer:
        found = refusal(outer)
    assert found is not None and found.by_broker and found.reason == "size_violation"
    assert refusal(RequestTimedOutError()) is None  # retriable: re-take and retry, never dead-letter
    assert refusal(ValueError("x")) is None


def test_a_dead_letter_always_fits_the_dead_letter_topic() -> None:
    producer = FakeProducer()
    limit = 64 * 1024
    tx = Tx(cast(Any, producer), stage="expand", dlq="dlq", limits={"dlq": limit})
    big = b"\x00\xff" * 100_000
    small = b"tiny"
    run(tx.dead_letter(record(big, b"k" * 40_000, 7), OutputRefused("too big"), "size_violation"))
    run(tx.dead_letter(record(small), ValueError("bad"), "schema_violation"))
    run(tx.flush())
    (_, v1), (_, v2) = producer.sent
    assert v1 is not None and v2 is not None
    letter, whole = from_json(DeadLetter, v1), from_json(DeadLetter, v2)
    assert record_size(b"k" * 16 * 1024, v1) <= limit
    assert letter.original_truncated and letter.original_size == len(big)
    assert big.startswith(letter.original_bytes()) and len(letter.original_bytes()) > 20_000
    assert letter.reason == "size_violation" and letter.stage == "expand" and letter.offset == 7
    assert not whole.original_truncated and whole.original_bytes() == small
    assert whole.reason == "schema_violation" and whole.error == "bad"


def test_expand_dead_letters_by_reason_class() -> None:
    stage = ExpandStage(NAMES, LIMITS, "__shared__")
    tx = FakeTx()
    huge = ranking("s", [("a", "x", 3.0, True), ("b", "x", 0.0, False)], event_id="w")
    heavy = orjson.loads(encode(huge))
    for item in heavy["payload"]["items"]:
        item["weight"] = 1e308  # off the edge's bounds: the product overflows
    recs = [record(b"{not json", offset=0), record(orjson.dumps(heavy), offset=1)]
    run(stage.process(recs, Table({}), cast(Tx, tx)))
    assert [(r.offset, reason) for r, reason in tx.letters] == [
        (0, "schema_violation"),
        (1, "processing_failure"),
    ]
    assert tx.on(NAMES.units) == []


# --- finite weights -------------------------------------------------------------------------------


def test_a_non_finite_triplet_weight_is_refused_never_written_as_null() -> None:
    def o(c: str, grade: float, positive: bool, weight: float) -> Observation:
        return Observation(
            candidate_id=c,
            label="x",
            grade=grade,
            positive=positive,
            weight=weight,
            event_id="e",
            observed_at=T0,
        )

    with pytest.raises(ValueError, match="not finite"):
        expand_outcomes(
            SeekerHistory(),
            [o("p", 3.0, True, 1e308), o("n", 0.0, False, 1e308)],
            domain="d",
            anchor="a",
            tenant="t",
            now=T0,
            limits=LIMITS,
        )
    _, units = expand_outcomes(
        SeekerHistory(),
        [o("p", 3.0, True, MAX_WEIGHT), o("n", 0.0, False, MAX_WEIGHT)],
        domain="d",
        anchor="a",
        tenant="t",
        now=T0,
        limits=LIMITS,
    )
    assert units[0].weight == MAX_WEIGHT * MAX_WEIGHT
    assert orjson.loads(to_json(units[0]))["weight"] == MAX_WEIGHT * MAX_WEIGHT


# --- worst cases against the declared limits ------------------------------------------------------


def test_every_topic_declares_a_limit_no_smaller_than_a_producer_batch() -> None:
    assert set(SIZES) == {SETTINGS.topic_prefix + t.name for t in topics.TOPICS}
    assert min(SIZES.values()) >= 512 * 1024 > 256 * 1024  # stage producers batch up to 256 KiB
    assert topics.expand_state_bytes(10_000) > topics.expand_state_bytes(200) == 512 * 1024


def test_the_worst_history_the_edge_allows_fits_the_expand_changelog() -> None:
    worst_id = "\x01" * MAX_ID_CHARS  # every character escaped: 6 bytes in JSON
    history = SeekerHistory(
        observations=tuple(
            [
                Observation(
                    candidate_id=worst_id[:-4] + f"{i:04d}",
                    label="\x01" * MAX_LABEL_CHARS,
                    grade=2.2250738585072014e-308,
                    positive=False,
                    weight=1.2345678901234567e-300,
                    event_id="0190a8f4-8f0e-7c4e-9a6c-1234567890ab",
                    observed_at=T0,
                )
                for i in range(LIMITS.max_items)
            ]
        )
    )
    value = to_json(history)
    key = ("d" * 128 + "/" + "\U0010ffff" * MAX_ID_CHARS).encode()
    assert len(value) / LIMITS.max_items <= topics.OBSERVATION_MAX_BYTES
    assert record_size(key, value) <= topics.expand_state_bytes(LIMITS.max_items)


def test_the_biggest_result_fits_the_results_topic() -> None:
    domain = "d" * 128
    trigger = TrainTrigger(
        trigger_id="0190a8f4-8f0e-7c4e-9a6c-1234567890ab",
        domain=domain,
        reason="repartition",
        count=2**62,
        threshold=2**62,
        sequence=2**62,
        range=TriggerRange(
            topic="p" * 249 + ".feedback.triplets", partition=2**31, start_offset=2**62, end_offset=2**62
        ),
        emitted_at=T0,
    )
    result = StageResult(
        request_id="r" * 64,
        event_id="0190a8f4-8f0e-7c4e-9a6c-1234567890ab",
        domain=domain,
        kind="units",
        units_generated=2**62,
        units_counted=2**62,
        pending=2**62,
        threshold=2**62,
        triggers=[trigger] * MAX_RESULT_TRIGGERS,
        triggers_total=2**62,
        chunk=2**31,
        chunks=2**31 + 1,
        request_events=2**31,
    )
    assert record_size(b"r" * 64, to_json(result)) < 32 * 1024 < SIZES[NAMES.results]


# --- expiry by stream time ------------------------------------------------------------------------


def test_histories_expire_by_stream_time_with_tombstones_and_outputs_do_not_change() -> None:
    stage = ExpandStage(NAMES, Limits(max_items=200, max_age_seconds=3600.0), "__shared__")
    state: dict[bytes, ExpandState] = {}

    def step(event: RankingOutcomeEnvelope, offset: int) -> tuple[dict[bytes, ExpandState | None], FakeTx]:
        tx = FakeTx()
        table: Table[ExpandState] = Table(state)
        run(stage.process([record(encode(event), offset=offset)], table, cast(Tx, tx)))
        changes = dict(table.changes)
        for k, v in changes.items():
            if v is None:
                state.pop(k, None)
            else:
                state[k] = v
        return changes, tx

    changes, _ = step(ranking("old", outcomes(2), at=T0, event_id="e1"), 0)
    assert set(changes) == {b"dating/old", CLOCK_KEY}
    clock = state[CLOCK_KEY]
    assert isinstance(clock, StreamClock) and clock.stream_time == T0 and clock.swept_at == T0
    # 30 min later: no sweep yet (every max_age/10 = 6 min of stream time, but "old" is still young)
    changes, _ = step(ranking("mid", outcomes(2), at=T0 + timedelta(minutes=30), event_id="e2"), 1)
    assert b"dating/old" in state and changes.get(b"dating/old", "kept") == "kept"
    # 61 min after "old": swept (a tombstone), "mid" kept
    changes, _ = step(ranking("new", outcomes(2), at=T0 + timedelta(minutes=61), event_id="e3"), 2)
    assert changes[b"dating/old"] is None and b"dating/old" not in state and b"dating/mid" in state
    # an event arriving late (older received_at) cannot revive what expired: the rules cut at
    # stream time, so its outputs are those it would have had without the sweep
    late = ranking("old", [("z", "x", 3.0, True)], at=T0 + timedelta(minutes=1), event_id="e4")
    _, tx = step(late, 3)
    assert tx.on(NAMES.units)[0]["units"] == []
    clock = state[CLOCK_KEY]
    assert isinstance(clock, StreamClock) and clock.stream_time == T0 + timedelta(minutes=61)


def test_the_clock_and_histories_round_trip_through_the_changelog_codec() -> None:
    stage = ExpandStage(NAMES, LIMITS, "__shared__")
    clock = StreamClock(stream_time=T0, swept_at=T0)
    history = SeekerHistory(observations=())
    assert stage.decode_state(stage.encode_state(clock)) == clock
    assert stage.decode_state(stage.encode_state(history)) == history


# --- the shared pool's copy -----------------------------------------------------------------------


def test_the_shared_pool_copy_has_no_tenant_event_or_case_id() -> None:
    event = CorrectionEnvelope(
        event_id="0190a8f4-8f0e-7c4e-9a6c-1234567890ab",
        tenant="acme",
        domain="support",
        received_at=T0,
        correlation_id="c",
        request_id="r",
        origin="http",
        payload=CorrectionPayload(
            case_id="case-secret-42",
            module="intent",
            original_output={"intent": "refund"},
            corrected_output={"intent": "cancel"},
            actor={"id": "rep"},
            feedback_mode=FeedbackMode.SHARED_IMPROVEMENT,
        ),
    )
    out = expand_event(event, {}, limits=LIMITS, shared_pool="__shared__")
    own, pooled = (b.units[0] for b in out.batches)
    text = to_json(out.batches[1]).decode()
    assert "case-secret-42" not in text and "acme" not in text and event.event_id not in text
    assert pooled.tenant is None and pooled.domain == "__shared__"
    assert pooled.anchor == "intent" and pooled.event_id != event.event_id  # type: ignore[union-attr]
    assert pooled.unit_id != own.unit_id
    assert (pooled.chosen, pooled.rejected) == ({"intent": "cancel"}, {"intent": "refund"})  # type: ignore[union-attr]
    again = expand_event(event, {}, limits=LIMITS, shared_pool="__shared__")
    assert again.batches[1].units[0] == pooled  # deterministic: a replay writes the same copy


# --- the ingest's view ----------------------------------------------------------------------------


def result(request_id: str, event_id: str, domain: str, chunk: int = 0, chunks: int = 1, **kw: Any) -> bytes:
    return to_json(
        StageResult(
            request_id=request_id,
            event_id=event_id,
            domain=domain,
            kind="units",
            units_generated=1,
            units_counted=1,
            pending=chunk,
            threshold=10,
            chunk=chunk,
            chunks=chunks,
            **kw,
        )
    )


def test_the_view_waits_for_every_chunk_of_every_event() -> None:
    async def go() -> None:
        view = StreamView("unused:9092", NAMES, max_bytes_per_tenant=1 << 20)
        fut = view.expect("r1", 2)
        view._apply(NAMES.results, b"r1", result("r1", "e1", "d", 0, 2))
        view._apply(NAMES.results, b"r1", result("r1", "e2", "d"))
        assert not fut.done()  # e1 has one chunk of two
        status = view.request_status("r1")
        assert status is not None and status.events_done == 1 and not status.complete
        view._apply(NAMES.results, b"r1", result("r1", "e1", "d", 1, 2))
        assert fut.done() and [r.pending for r in fut.result()] == [0, 0, 1]
        status = view.request_status("r1")
        assert status is not None and status.complete and status.events_expected == 2

    asyncio.run(go())


def test_completeness_is_known_from_the_results_or_a_timed_out_wait() -> None:
    async def go() -> None:
        view = StreamView("unused:9092", NAMES, max_bytes_per_tenant=1 << 20)
        view._apply(NAMES.results, b"a", result("a", "e1", "d", request_events=2))
        view._apply(NAMES.results, b"a", result("a", "e2", "d", request_events=2))
        status = view.request_status("a")
        assert status is not None and status.complete
        fut = view.expect("b", 2)
        assert await view.wait("b", fut, 0.01) is None  # the ingest answered 202
        view._apply(NAMES.results, b"b", result("b", "e1", "d"))
        status = view.request_status("b")
        assert status is not None and not status.complete
        view._apply(NAMES.results, b"b", result("b", "e2", "d"))
        status = view.request_status("b")
        assert status is not None and status.complete
        view._apply(NAMES.results, b"c", result("c", "e1", "d"))  # another instance's request
        status = view.request_status("c")
        assert status is not None and status.events_expected is None and not status.complete

    asyncio.run(go())


def test_the_view_is_bounded_in_bytes_per_tenant_and_evicts_only_that_tenants_oldest() -> None:
    one = len(result("q-000", "e", "quiet")) + RESULT_OVERHEAD_BYTES + REQUEST_OVERHEAD_BYTES
    budget = 10 * one
    view = StreamView(
        "unused:9092", NAMES, owner_of={"loud": "t1", "quiet": "t2"}.get, max_bytes_per_tenant=budget
    )
    view._apply(NAMES.results, b"q", result("q-000", "e", "quiet"))
    for i in range(100):
        view._apply(NAMES.results, b"r", result(f"r-{i:03d}", "e", "loud"))
        assert view.kept_bytes("t1") <= budget
    assert view.request_status("r-099") is not None and view.request_status("r-090") is not None
    assert view.request_status("r-089") is None and view.request_status("r-000") is None
    assert view.request_status("q-000") is not None
    assert view.kept_bytes("t2") == one


def test_results_on_the_wire_decode_with_their_chunks() -> None:
    raw = orjson.loads(result("r", "e", "d", 2, 3))
    assert (raw["chunk"], raw["chunks"], raw["triggers_total"]) == (2, 3, 0)
