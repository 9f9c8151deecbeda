"""The output records: JSON round-trips, ids, the tagged training unit, what decoding refuses."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
import pytest
from msgspec import ValidationError

from pipeline.wire.records import (
    RECORD_NAMESPACE,
    TRAINING_UNIT,
    UNITS_MESSAGE,
    DeadLetter,
    PreferenceUnit,
    RawUnitsBatch,
    ScoredUnit,
    Signal,
    TrainTrigger,
    TriggerRange,
    TripletUnit,
    UnitsBatch,
    dead_letter,
    deterministic_id,
    from_json,
    record_json_schemas,
    signal_id,
    to_builtins,
    to_json,
)

AT = datetime(2024, 1, 15, 10, 35, tzinfo=UTC)
COMMON: dict[str, Any] = {
    "domain": "dating",
    "tenant": "acme",
    "event_id": "e1",
    "received_at": AT,
    "counts": True,
}

TRIPLET = TripletUnit(
    unit_id="u1",
    anchor="u_alice",
    positive="u_dan",
    negative="u_carl",
    weight=2.0,
    origin="ranking_outcome",
    **COMMON,
)
PREFERENCE = PreferenceUnit(
    unit_id="u2", anchor="m:c", chosen={"intent": "refund"}, rejected=["billing", 1, None], **COMMON
)
SCORED = ScoredUnit(
    unit_id="u3",
    task_id="550e8400-e29b-41d4-a716-446655440000",
    inputs={"ticket_text": "Login fails on Safari"},
    output="Auth issue",
    score=0.9,
    source="seed",
    metadata={"model": "gpt-4o", "latency_ms": 450},
    **{**COMMON, "counts": False, "tenant": None},
)


def _signal(value: bool | float | str) -> Signal:
    return Signal(
        signal_id=signal_id(event_id="e1", subject="019503a1", key="accuracy"),
        event_id="e1",
        tenant="acme",
        domain="qa",
        contract="inference_feedback",
        key="accuracy",
        value=value,
        reason="Correct but could include more detail",
        tags={"evaluator": "human"},
        optimize="max",
        subject="019503a1",
        received_at=AT,
    )


TRIGGER = TrainTrigger(
    trigger_id="t1",
    domain="dating",
    reason="threshold",
    count=1000,
    threshold=1000,
    sequence=1,
    range=TriggerRange(partition=3, start_offset=0, end_offset=1041),
    emitted_at=AT,
)


@pytest.mark.parametrize(
    "record",
    [_signal(True), _signal(4.5), _signal("clear"), TRIGGER],
    ids=["signal-bool", "signal-float", "signal-str", "trigger"],
)
def test_records_round_trip(record: Signal | TrainTrigger) -> None:
    raw = to_json(record)
    assert from_json(type(record), raw) == record
    assert to_json(from_json(type(record), raw)) == raw


@pytest.mark.parametrize("unit", [TRIPLET, PREFERENCE, SCORED], ids=["triplet", "preference", "scored"])
def test_training_units_round_trip_through_the_union(unit: TripletUnit | PreferenceUnit | ScoredUnit) -> None:
    raw = to_json(unit)
    back = TRAINING_UNIT.decode(raw)
    assert type(back) is type(unit)
    assert back == unit
    assert json.loads(raw)["kind"] == unit.kind


def test_signal_values_keep_their_type() -> None:
    assert from_json(Signal, to_json(_signal(True))).value is True
    assert from_json(Signal, to_json(_signal("4"))).value == "4"
    number = from_json(Signal, to_json(_signal(4))).value
    assert number == 4.0 and isinstance(number, float)


def test_dead_letter_keeps_the_original_bytes() -> None:
    original = b"\x00\xffnot json"
    letter = dead_letter(
        stage="expand",
        reason="processing_failure",
        error=ValueError("bad grade"),
        original=original,
        topic="feedback.raw",
        partition=1,
        offset=42,
        key=b"dating/u_alice",
        failed_at=AT,
    )
    assert letter == DeadLetter(
        stage="expand",
        reason="processing_failure",
        error_type="ValueError",
        error="bad grade",
        original=base64.b64encode(original).decode(),
        original_size=len(original),
        original_truncated=False,
        topic="feedback.raw",
        partition=1,
        offset=42,
        key="dating/u_alice",
        failed_at=AT,
    )
    back = from_json(DeadLetter, to_json(letter))
    assert back == letter
    assert back.original_bytes() == original


def test_dead_letter_without_key_or_message() -> None:
    letter = dead_letter(
        stage="s",
        reason="schema_violation",
        error=KeyError(),
        original=b"",
        topic="t",
        partition=0,
        offset=0,
        key=None,
        failed_at=AT,
    )
    assert letter.key is None and letter.error == "KeyError" and letter.original == ""
    assert letter.reason == "schema_violation"
    assert from_json(DeadLetter, to_json(letter)) == letter


def test_dead_letter_keeps_the_head_of_what_does_not_fit_and_says_so() -> None:
    original = bytes(range(256)) * 40
    letter = dead_letter(
        stage="count",
        reason="size_violation",
        error=ValueError("x" * 10_000),
        original=original,
        topic="t",
        partition=0,
        offset=7,
        key=b"k" * 100_000,
        failed_at=AT,
        max_original_bytes=1000,
    )
    assert letter.original_bytes() == original[:1000]
    assert letter.original_truncated and letter.original_size == len(original)
    assert len(letter.error) == 4096 and letter.key == "k" * 16 * 1024
    with pytest.raises(ValidationError):
        from_json(DeadLetter, orjson.dumps({**to_builtins(letter), "reason": "it broke"}))


def test_records_reject_unknown_fields_and_naive_times() -> None:
    trigger, triplet = to_builtins(TRIGGER), to_builtins(TRIPLET)
    with pytest.raises(ValidationError, match="unknown field `extra`"):
        from_json(TrainTrigger, orjson.dumps({**trigger, "extra": 1}))
    with pytest.raises(ValidationError, match="timezone"):
        from_json(TrainTrigger, orjson.dumps({**trigger, "emitted_at": "2024-01-01T00:00:00"}))
    with pytest.raises(ValidationError, match="Invalid value 'pair'"):
        TRAINING_UNIT.decode(orjson.dumps({**triplet, "kind": "pair"}))
    with pytest.raises(ValidationError, match="Expected `float` >= 0"):
        TRAINING_UNIT.decode(orjson.dumps({**triplet, "weight": -1.0}))
    with pytest.raises(ValidationError, match="Number out of range"):  # JSON's way to an infinite weight
        TRAINING_UNIT.decode(orjson.dumps(triplet).replace(b'"weight":2.0', b'"weight":1e400'))
    with pytest.raises(ValidationError, match="Expected `float` <= 1"):
        TRAINING_UNIT.decode(orjson.dumps({**to_builtins(SCORED), "score": 1.5}))
    with pytest.raises(ValidationError, match="required field `unit_id`"):
        TRAINING_UNIT.decode(orjson.dumps({k: v for k, v in triplet.items() if k != "unit_id"}))


def test_times_are_written_as_pydantic_wrote_them() -> None:
    """UTC with ``Z``, other offsets as they are, microseconds only when there are some."""
    from datetime import timedelta, timezone

    plus2 = datetime(2024, 1, 15, 12, 35, 1, 250000, tzinfo=timezone(timedelta(hours=2)))
    assert orjson.loads(to_json(TRIGGER))["emitted_at"] == "2024-01-15T10:35:00Z"
    moved = msgspec.structs.replace(TRIGGER, emitted_at=plus2)
    assert orjson.loads(to_json(moved))["emitted_at"] == "2024-01-15T12:35:01.250000+02:00"
    assert to_builtins(TRIGGER)["emitted_at"] == "2024-01-15T10:35:00Z"


def test_a_units_message_decodes_with_its_units_or_with_their_bytes() -> None:
    batch = UnitsBatch(
        request_id="r",
        event_id="e1",
        tenant="acme",
        domain="dating",
        contract="ranking_outcome",
        received_at=AT,
        units=[TRIPLET, PREFERENCE, SCORED],
        request_events=2,
    )
    data = to_json(batch)
    assert UNITS_MESSAGE.decode(data) == batch
    raw = from_json(RawUnitsBatch, data)
    assert [bytes(u) for u in raw.units] == [to_json(u) for u in batch.units]
    assert to_json(raw) == data  # the same wire format, byte for byte


def test_deterministic_ids() -> None:
    assert uuid.uuid5(uuid.NAMESPACE_DNS, "records.feedstream") == RECORD_NAMESPACE
    assert deterministic_id("k", "a", 1) == deterministic_id("k", "a", 1)
    assert uuid.UUID(deterministic_id("k", "a")).version == 5
    # length prefixes: no two part tuples alias each other
    assert deterministic_id("k", "a|b", "c") != deterministic_id("k", "a", "b|c")
    assert deterministic_id("k", "ab") != deterministic_id("k", "a", "b")
    assert signal_id(event_id="e", subject="s", key="k") != signal_id(event_id="e", subject="t", key="k")


def test_json_schemas_cover_every_output_topic() -> None:
    schemas = record_json_schemas()
    assert set(schemas) == {
        "feedback.signals",
        "feedback.triplets",
        "train.triggers",
        "feedback.dlq",
        "feedback.units",
        "feedback.results",
        "feedback.erasures",
        "feedback.dlq.replays",
        "train.completed",
    }
    assert schemas["feedback.triplets"]["discriminator"]["propertyName"] == "kind"
    assert schemas["train.triggers"]["properties"]["emitted_at"]["format"] == "date-time"
    assert schemas["feedback.units"]["discriminator"]["propertyName"] == "kind"
    assert schemas["feedback.results"]["properties"]["triggers"]["items"]["$ref"] == "#/$defs/TrainTrigger"
    json.dumps(schemas)
