"""Every stored ``feedback.raw`` message of every schema version still decodes, to the same values.

The files under ``tests/data/wire/feedback.raw/v<N>/`` are bytes as earlier code wrote them to Kafka
(see the README there); they are never regenerated. Decoding goes through the registry, as the
stream decodes. The ``legacy-*`` ones are what an older, laxer ingest could have written: today's API
refuses each, and the wire types must still read them (an API rule is policy at the edge, not a
condition of replay).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from msgspec import Struct
from pydantic import BaseModel, ValidationError

from pipeline import contracts
from pipeline.api.contracts import (
    CorrectionRequest,
    InferenceFeedbackEvent,
    RankingOutcomeRequest,
    ScoredOutputRequest,
    SearchEventRequest,
)
from pipeline.kafka import topics
from pipeline.kafka.topics import topic_names
from pipeline.rules.triplets import Limits, SeekerHistory, StreamClock
from pipeline.settings import Settings
from pipeline.stream.count import CountStage, parse
from pipeline.stream.expand import ExpandStage
from pipeline.tenants import FeedbackMode
from pipeline.wire import envelope
from pipeline.wire.envelope import (
    SCHEMA_VERSION,
    CorrectionEnvelope,
    InferenceFeedbackEnvelope,
    RankingOutcomeEnvelope,
    ScoredOutputEnvelope,
    SearchEventEnvelope,
    SearchEventType,
)
from pipeline.wire.records import (
    TRAINING_UNIT,
    UNITS_MESSAGE,
    DeadLetter,
    DlqReplay,
    Erasure,
    InputOffset,
    RawUnitsBatch,
    Signal,
    StageResult,
    TrainingResult,
    TrainTrigger,
    from_json,
    input_offset_key,
    input_offset_topic,
    to_json,
)

WIRE = Path(__file__).resolve().parent.parent / "data" / "wire" / "feedback.raw"
STORED = sorted(WIRE.glob("v*/*.json"))
AT = datetime(2024, 1, 15, 10, 35, tzinfo=UTC)
LIMITS = Limits(max_items=200, max_age_seconds=30 * 86_400.0)


def _load(name: str, version: int = 1) -> tuple[bytes, envelope.Envelope]:
    data = (WIRE / f"v{version}" / name).read_bytes()
    return data, contracts.decode(data)


def test_every_schema_version_and_every_contract_has_stored_examples() -> None:
    versions = sorted(int(p.name[1:]) for p in WIRE.iterdir() if p.is_dir())
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    for version in versions:
        names = {p.name.removeprefix("legacy-").split("-")[0] for p in (WIRE / f"v{version}").glob("*.json")}
        assert names >= {str(c) for c in envelope.Contract}, version


@pytest.mark.parametrize("path", STORED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_stored_message_decodes_and_re_encodes_to_the_same_values(path: Path) -> None:
    data = path.read_bytes()
    event = contracts.decode(data)
    assert event.schema_version == int(path.parent.name[1:])
    assert event.contract == orjson.loads(data)["contract"]
    assert path.name.removeprefix("legacy-").startswith(event.contract)
    assert event.received_at == AT and event.received_at.tzinfo is not None
    again = envelope.encode(event)
    assert orjson.loads(again) == orjson.loads(data)  # nothing lost, nothing added
    assert envelope.encode(contracts.decode(again)) == again  # stable
    assert contracts.decode(again) == event


@pytest.mark.parametrize("path", STORED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_stored_message_keeps_its_key_and_signals(path: Path) -> None:
    event = contracts.decode(path.read_bytes())
    key = contracts.kafka_key(event).decode()
    assert key and (event.contract == "inference_feedback" or key.startswith(f"{event.domain}/"))
    for signal in contracts.signal_records(event):
        assert signal["event_id"] == event.event_id and signal["contract"] == event.contract


def test_field_values_of_the_seed_examples() -> None:
    _, ranking = _load("ranking_outcome-1.json")
    assert isinstance(ranking, RankingOutcomeEnvelope)
    assert (ranking.tenant, ranking.domain, ranking.origin, ranking.request_events) == (
        "dev",
        "dating",
        "http",
        1,
    )
    assert ranking.payload.seeker_id == "u_alice"
    assert [(i.index, i.candidate_id, i.outcome, i.positive, i.weight) for i in ranking.payload.items] == [
        (0, "u_bob", "accepted", True, 1.0),
        (1, "u_carl", "rejected", False, 1.0),
        (2, "u_dan", "converted", True, 2.0),
    ]
    assert contracts.kafka_key(ranking) == b"dating/u_alice"

    for mode in FeedbackMode:
        _, corr = _load(f"correction-{mode.value}-1.json")
        assert isinstance(corr, CorrectionEnvelope)
        assert corr.payload.feedback_mode is mode  # decoded to the enum, as the rules compare it
        assert (corr.payload.case_id, corr.payload.module, corr.origin) == (
            "string",
            "intent_classifier",
            "publisher",
        )
        assert corr.payload.original_output == {} and corr.payload.actor == {}

    _, inference = _load("inference_feedback-2.json")
    assert isinstance(inference, InferenceFeedbackEnvelope)
    assert inference.payload.id == "019503a2-d4e5-7f60-a1b2-c3d4e5f60718"
    assert inference.payload.tags == {"evaluator": "human", "task": "question-answering"}
    assert inference.payload.feedback["accuracy"] == {
        "score": 4,
        "reason": "Correct but could include more detail",
    }
    assert inference.payload.optimize == "max"
    assert contracts.kafka_key(inference) == inference.payload.id.encode()

    _, scored = _load("scored_output-1.json")
    assert isinstance(scored, ScoredOutputEnvelope)
    assert scored.payload.entry_id == scored.event_id
    assert scored.domain == scored.payload.task_id == "550e8400-e29b-41d4-a716-446655440000"
    assert (scored.payload.score, scored.payload.source) == (0.9, "sdk")
    assert scored.payload.metadata == {"model": "gpt-4o", "latency_ms": 450}

    _, search = _load("search_event-2.json")
    assert isinstance(search, SearchEventEnvelope)
    assert search.payload.event_type is SearchEventType.PASSAGE_USED
    assert search.payload.session_id == "5a1d3c2e-0000-4000-8000-000000000001"
    assert search.payload.search_id is None and search.payload.query is None
    assert contracts.kafka_key(search) == b"search/session:5a1d3c2e-0000-4000-8000-000000000001"


def _refused(model: type[BaseModel], body: Any) -> bool:
    try:
        model.model_validate(body)
    except ValidationError:
        return True
    return False


def test_events_todays_api_refuses_still_decode_and_expand() -> None:
    _, ranking = _load("legacy-ranking_outcome-long-ids-heavy-weight.json")
    assert isinstance(ranking, RankingOutcomeEnvelope)
    assert ranking.payload.seeker_id == "s" * 300 and ranking.payload.items[0].weight == 5000.0
    assert ranking.request_events is None
    item = {"seeker_id": "s" * 300, "candidate_id": "c", "outcome": "accepted", "weight": 5000.0}
    assert _refused(RankingOutcomeRequest, {"domain": "dating", "items": [item]})

    _, corr = _load("legacy-correction-long-ids.json")
    assert isinstance(corr, CorrectionEnvelope)
    assert corr.payload.case_id == "k" * 300 and corr.payload.module == "m" * 300
    body = {"case_id": "k" * 300, "module": "m", "original_output": {}, "corrected_output": {}, "actor": {}}
    assert _refused(CorrectionRequest, body)

    _, inference = _load("legacy-inference_feedback-deep-long-tags.json")
    assert isinstance(inference, InferenceFeedbackEnvelope)
    assert inference.payload.id == "019503A2D4E57F60A1B2C3D4E5F60718"  # kept as written, not canonicalised
    assert inference.payload.tags == {"l" * 100: "v" * 300}
    depth, node = 0, inference.payload.feedback["deep"]
    while isinstance(node, dict) and "leaf" not in node:
        depth, node = depth + 1, next(iter(node.values()))
    assert depth == 40
    assert _refused(
        InferenceFeedbackEvent, {"id": inference.payload.id, "feedback": {"a": 1}, "tags": {"l" * 100: "v"}}
    )

    _, scored = _load("legacy-scored_output-uncanonical-task-score.json")
    assert isinstance(scored, ScoredOutputEnvelope)
    assert scored.payload.task_id == "{550E8400-E29B-41D4-A716-446655440000}"
    assert (scored.payload.score, scored.payload.source) == (1.5, "seed")
    assert _refused(ScoredOutputRequest, {"task_id": scored.payload.task_id, "score": 1.5})
    assert [s["value"] for s in contracts.signal_records(scored)] == [1.5]

    _, search = _load("legacy-search_event-rank0-long-notes.json")
    assert isinstance(search, SearchEventEnvelope)
    assert (search.payload.rank, len(search.payload.notes or "")) == (0, 3000)
    assert search.payload.doc_id == "8D6E2F4A1B3C4D5E8F90A1B2C3D4E5F6"
    assert _refused(SearchEventRequest, {"event_type": "passage_used", "rank": 0})

    # the stream's rules still take them (the scored one's unit is refused by feedback.triplets'
    # own record type, which keeps score in [0, 1]: a rule of that topic, not of decoding)
    for event in (ranking, corr, inference, search):
        out = contracts.expand_event(event, {}, limits=LIMITS, shared_pool="__shared__")
        assert out.batches and out.batches[0].event_id == event.event_id
    assert len(contracts.expand_event(ranking, {}, limits=LIMITS, shared_pool="__shared__").signals) == 3
    # the scored one's unit is refused by its rule (so the stage dead-letters the event, as when
    # pydantic refused to build the unit): feedback.triplets' consumers never see a score of 1.5
    with pytest.raises(ValueError, match=r"within \[0, 1\], got 1.5"):
        contracts.expand_event(scored, {}, limits=LIMITS, shared_pool="__shared__")


def test_what_decoding_still_refuses() -> None:
    """Types and required fields are checked: a stream cannot process these."""
    data = orjson.loads((WIRE / "v1" / "ranking_outcome-1.json").read_bytes())
    broken = [
        {**data, "contract": "telepathy"},
        {k: v for k, v in data.items() if k != "contract"},
        {k: v for k, v in data.items() if k != "event_id"},
        {**data, "unexpected": 1},
        {**data, "received_at": "yesterday"},
        {**data, "payload": {**data["payload"], "items": []}},
        {**data, "payload": {**data["payload"], "seeker_id": 7}},
        {**data, "contract": "inference_feedback"},  # the payload is not this contract's
    ]
    for value in broken:
        with pytest.raises(ValueError):
            contracts.decode(orjson.dumps(value))
    with pytest.raises(ValueError):
        contracts.decode(b"\xff not json")


# --- every other topic, and the changelogs a worker restores after an upgrade ----------------------

DATA = WIRE.parent
NAMES = topic_names(Settings(topic_prefix=""))
_EXPAND = ExpandStage(NAMES, LIMITS, "__shared__")
_COUNT = CountStage(NAMES, lambda domain: 1)
#: How each topic's values are read back (the changelogs as the stages restore them).
DECODERS: dict[str, Callable[[bytes], Struct]] = {
    topics.SIGNALS: lambda b: from_json(Signal, b),
    topics.TRIPLETS: TRAINING_UNIT.decode,
    topics.TRIGGERS: lambda b: from_json(TrainTrigger, b),
    topics.DLQ: lambda b: from_json(DeadLetter, b),
    topics.UNITS: UNITS_MESSAGE.decode,
    topics.RESULTS: lambda b: from_json(StageResult, b),
    topics.ERASURES: lambda b: from_json(Erasure, b),
    topics.DLQ_REPLAYS: lambda b: from_json(DlqReplay, b),
    topics.TRAININGS: lambda b: from_json(TrainingResult, b),
    topics.EXPAND_STATE: _EXPAND.decode_state,
    topics.COUNT_STATE: _COUNT.decode_state,
}
#: Fields added to a topic's records after its stored examples were written: decoding an old record
#: gives the default, and re-encoding writes it (nothing else may change).
ADDED_FIELDS: dict[str, dict[str, object]] = {topics.COUNT_STATE: {"pending_since": None}}
RECORDS = sorted(p for p in DATA.glob("*/v1/*.json") if p.parent.parent.name != topics.RAW)


def test_every_topic_has_stored_records() -> None:
    assert {p.parent.parent.name for p in RECORDS} == set(DECODERS)


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_a_stored_record_decodes_and_re_encodes_to_the_same_values(path: Path) -> None:
    data = path.read_bytes()
    record = DECODERS[path.parent.parent.name](data)
    again = to_json(record)
    added = ADDED_FIELDS.get(path.parent.parent.name, {})
    assert orjson.loads(again) == {**orjson.loads(data), **added}  # nothing lost, nothing else added
    assert DECODERS[path.parent.parent.name](again) == record
    assert to_json(DECODERS[path.parent.parent.name](again)) == again  # stable


def test_stored_changelog_values_restore_to_their_state() -> None:
    state = DATA / topics.EXPAND_STATE / "v1"
    history = _EXPAND.decode_state((state / "history-mixed-offsets.json").read_bytes())
    assert isinstance(history, SeekerHistory)
    eve = history.observations[1]
    assert (eve.candidate_id, eve.grade, eve.weight) == ("u_eve", 2.5, 0.25)
    assert eve.observed_at == datetime(2024, 1, 15, 10, 35, 1, 250000, tzinfo=UTC)  # +02:00 kept as such
    assert eve.observed_at.utcoffset() == timedelta(hours=2)
    clock = _EXPAND.decode_state((state / "clock-unswept.json").read_bytes())
    assert isinstance(clock, StreamClock) and (clock.stream_time, clock.swept_at) == (AT, None)
    counter = _COUNT.decode_state(
        (DATA / topics.COUNT_STATE / "v1" / "counter-open-range-with-last-trigger.json").read_bytes()
    )
    assert (counter.pending, counter.total, counter.sequence, counter.range_start) == (3, 120, 9, 11)
    assert counter.last_trigger is not None and counter.last_trigger.reason == "repartition"
    assert counter.last_trigger.range.topic == "p.feedback.triplets"


def test_a_stored_units_message_counts_with_its_units_passed_through_as_written() -> None:
    for path in sorted((DATA / topics.UNITS / "v1").glob("*.json")):
        data = path.read_bytes()
        msg, heads = parse(data)
        value = orjson.loads(data)
        if heads is None:
            assert value["kind"] == "train"
            continue
        assert isinstance(msg, RawUnitsBatch)
        assert [orjson.loads(bytes(u)) for u in msg.units] == value["units"]
        assert [(h.kind, h.counts) for h in heads] == [(u["kind"], u["counts"]) for u in value["units"]]


def test_what_the_stage_decoders_refuse() -> None:
    with pytest.raises(ValueError, match="neither a seeker history"):
        _EXPAND.decode_state(b'{"observations": [], "stream_time": "2024-01-15T10:35:00Z"}')
    with pytest.raises(ValueError):
        _COUNT.decode_state(b'{"pending": -1}')
    unit = (DATA / topics.TRIPLETS / "v1" / "sample-00.json").read_bytes()
    batch = orjson.loads((DATA / topics.UNITS / "v1" / "sample-00.json").read_bytes())
    for broken in (
        {**batch, "chunk": 1},  # chunk 1 of 1
        {**batch, "received_at": "2024-01-15T10:35:00"},  # naive
        {**batch, "request_events": 0},
        {**batch, "units": [{"kind": "triplet"}]},  # a unit without counts
        {**batch, "units": [1]},
        {**batch, "kind": "unitz"},
    ):
        with pytest.raises(ValueError):
            parse(orjson.dumps(broken))
    assert TRAINING_UNIT.decode(unit).kind == "triplet"


def test_the_input_offset_record_of_a_changelog_keeps_its_bytes() -> None:
    """A stage restores where it stands from this record (``InputOffset``): its key and value must
    read back after an upgrade, and a table key can never be mistaken for it."""
    stored = b'{"next_offset":42}'
    assert from_json(InputOffset, stored).next_offset == 42
    assert to_json(InputOffset(next_offset=42)) == stored
    assert input_offset_key("p.feedback.raw") == b"\x00offset/p.feedback.raw"
    assert input_offset_topic(b"\x00offset/p.feedback.raw") == "p.feedback.raw"
    assert input_offset_topic(b"\x00clock") is None and input_offset_topic(b"dating/u1") is None
