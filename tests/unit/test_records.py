"""The output records: JSON round-trips, deterministic ids, the discriminated training unit."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel, ValidationError

from pipeline.wire.records import (
    RECORD_NAMESPACE,
    TRAINING_UNIT,
    DeadLetter,
    PreferenceUnit,
    ScoredUnit,
    Signal,
    TrainTrigger,
    TriggerRange,
    TripletUnit,
    dead_letter,
    deterministic_id,
    record_json_schemas,
    signal_id,
)

AT = datetime(2024, 1, 15, 10, 35, tzinfo=UTC)
COMMON = {"domain": "dating", "tenant": "acme", "event_id": "e1", "received_at": AT, "counts": True}

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
def test_records_round_trip(record: BaseModel) -> None:
    raw = record.model_dump_json()
    assert type(record).model_validate_json(raw) == record


@pytest.mark.parametrize("unit", [TRIPLET, PREFERENCE, SCORED], ids=["triplet", "preference", "scored"])
def test_training_units_round_trip_through_the_union(unit: TripletUnit | PreferenceUnit | ScoredUnit) -> None:
    raw = TRAINING_UNIT.dump_json(unit)
    back = TRAINING_UNIT.validate_json(raw)
    assert type(back) is type(unit)
    assert back == unit
    assert json.loads(raw)["kind"] == unit.kind


def test_signal_values_keep_their_type() -> None:
    assert Signal.model_validate_json(_signal(True).model_dump_json()).value is True
    assert Signal.model_validate_json(_signal("4").model_dump_json()).value == "4"
    number = Signal.model_validate_json(_signal(4).model_dump_json()).value
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
    back = DeadLetter.model_validate_json(letter.model_dump_json())
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
    assert DeadLetter.model_validate_json(letter.model_dump_json()) == letter


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
        DeadLetter.model_validate({**letter.model_dump(), "reason": "it broke"})


def test_records_reject_unknown_fields_and_naive_times() -> None:
    with pytest.raises(ValidationError):
        TrainTrigger.model_validate({**TRIGGER.model_dump(), "extra": 1})
    with pytest.raises(ValidationError):
        TrainTrigger.model_validate({**TRIGGER.model_dump(), "emitted_at": datetime(2024, 1, 1)})
    with pytest.raises(ValidationError):
        TRAINING_UNIT.validate_python({**TRIPLET.model_dump(), "kind": "pair"})
    with pytest.raises(ValidationError):
        TRAINING_UNIT.validate_python({**TRIPLET.model_dump(), "weight": -1.0})


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
    }
    assert schemas["feedback.triplets"]["discriminator"]["propertyName"] == "kind"
    assert schemas["train.triggers"]["properties"]["emitted_at"]["format"] == "date-time"
    assert schemas["feedback.units"]["discriminator"]["propertyName"] == "kind"
    assert schemas["feedback.results"]["properties"]["triggers"]["items"]["$ref"] == "#/$defs/TrainTrigger"
    json.dumps(schemas)
