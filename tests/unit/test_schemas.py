"""The committed topic schemas: in sync with the models, one per topic, and true of real messages.

Sample messages are made the way the services make them: the seed examples of the contracts go
through the intake (as the ingest does), the pure stage rules (as the worker does), and the same
encoders, so a model change that the committed schemas do not describe fails here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from pipeline.api import intake
from pipeline.api.contracts import (
    CorrectionRequest,
    InferenceFeedbackEvent,
    RankingOutcomeRequest,
    ScoredOutputRequest,
    SearchEventRequest,
)
from pipeline.api.intake import erasure_record
from pipeline.contracts import expand_event
from pipeline.kafka import topics
from pipeline.rules.counters import DomainCounter, count_units, force_trigger
from pipeline.rules.triplets import Limits, SeekerHistory
from pipeline.tenants import TenantRegistry, load_tenants
from pipeline.wire import envelope, schemas
from pipeline.wire.records import (
    DlqReplay,
    StageResult,
    TrainingResult,
    TrainRequest,
    dead_letter,
    to_json,
    training_id,
)

TENANTS = Path(__file__).resolve().parent.parent / "data" / "tenants.test.yaml"
AT = datetime(2024, 1, 15, 10, 35, tzinfo=UTC)
LIMITS = Limits(max_items=200, max_age_seconds=30 * 86_400.0)
TOPIC_NAMES = [t.name for t in topics.TOPICS]


# --- the committed files ---------------------------------------------------------------------------


def test_committed_schemas_match_the_models() -> None:
    drifted = schemas.drift(schemas.SCHEMA_DIR)
    assert not drifted, f"schemas/ drifted from the models, run `make schemas`: {drifted}"


def test_every_declared_topic_has_exactly_one_schema() -> None:
    declared = [s.topic for s in schemas.TOPIC_SCHEMAS]
    assert sorted(declared) == sorted(TOPIC_NAMES)
    assert len(set(declared)) == len(declared)
    on_disk = sorted(p.name for p in schemas.SCHEMA_DIR.glob("*.schema.json"))
    assert on_disk == sorted(schemas.file_name(t) for t in TOPIC_NAMES)


def test_the_readme_names_every_topic_and_its_schema() -> None:
    readme = (schemas.SCHEMA_DIR / "README.md").read_text(encoding="utf-8")
    for name in TOPIC_NAMES:
        assert f"| `{name}` |" in readme
        assert f"({schemas.file_name(name)})" in readme
    assert "inclusive" in readme and "unit_id" in readme


@pytest.mark.parametrize("topic", TOPIC_NAMES)
def test_schema_identity_and_description(topic: str) -> None:
    text = (schemas.SCHEMA_DIR / schemas.file_name(topic)).read_text(encoding="utf-8")
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://feedstream.dev/schemas/{topic}.schema.json"
    assert topic in schema["title"]
    doc = next(t.doc for t in topics.TOPICS if t.name == topic)
    assert schema["description"].startswith(doc)
    assert "Key: " in schema["description"]
    # byte-stable: sorted keys, 2-space indent, one trailing newline
    assert text == json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert not text.endswith("\n\n")


def test_generation_is_deterministic() -> None:
    assert schemas.generate() == schemas.generate()


def test_write_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schemas.main(["check", "--dir", str(tmp_path)]) == 1
    assert "feedback.raw.schema.json" in capsys.readouterr().err
    assert schemas.main(["write", "--dir", str(tmp_path)]) == 0
    assert schemas.main(["check", "--dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(schemas.generate())

    (tmp_path / "train.triggers.schema.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "feedback.gone.schema.json").write_text("{}\n", encoding="utf-8")
    capsys.readouterr()
    assert schemas.main(["check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "train.triggers.schema.json" in err and "feedback.gone.schema.json" in err
    assert "feedback.raw.schema.json" not in err

    assert schemas.main(["write", "--dir", str(tmp_path)]) == 0
    assert not (tmp_path / "feedback.gone.schema.json").exists()
    assert schemas.drift(tmp_path) == []


# --- real messages against the committed schemas ----------------------------------------------------


def _examples(model: type[BaseModel]) -> list[dict[str, Any]]:
    extra = model.model_config.get("json_schema_extra")
    assert isinstance(extra, dict)
    examples = extra["examples"]
    assert isinstance(examples, list)
    return [dict(e) for e in examples]  # type: ignore[arg-type]


def _ids() -> Iterator[str]:
    n = 0
    while True:
        n += 1
        yield f"01900000-0000-7000-8000-{n:012d}"


def _raw_events(registry: TenantRegistry) -> list[envelope.Envelope]:
    ids = _ids()

    def ctx(tenant_id: str, origin: intake.Origin = "http") -> intake.Context:
        tenant = registry.tenant(tenant_id)
        assert tenant is not None
        return intake.Context(tenant, "req-1", "corr-1", AT, origin, new_id=lambda: next(ids))

    events: list[envelope.Envelope] = []
    for body in _examples(RankingOutcomeRequest):
        events += intake.ranking_outcomes(ctx("dev"), RankingOutcomeRequest.model_validate(body)).events
    for tenant_id in ("dev", "mode_shared", "mode_audit", "mode_off"):
        for body in _examples(CorrectionRequest):
            req = CorrectionRequest.model_validate(body)
            events += intake.correction(ctx(tenant_id, "publisher"), req).events
    inference = intake.inference_feedback(ctx("dev"), _examples(InferenceFeedbackEvent))
    events += inference.events
    for body in _examples(ScoredOutputRequest):
        events += intake.scored_output(ctx("dev"), ScoredOutputRequest.model_validate(body)).events
    for body in _examples(SearchEventRequest):
        search = SearchEventRequest.model_validate(body)
        events += intake.search_event(ctx("dev"), search, None).events
        bare = SearchEventRequest(event_type=search.event_type, doc_id=search.doc_id)
        events += intake.search_event(ctx("dev"), bare, "5a1d3c2e-0000-4000-8000-000000000001").events
    return events


def _messages() -> dict[str, list[bytes]]:
    """Every topic's messages, encoded as the services encode them."""
    registry = load_tenants(TENANTS)
    out: dict[str, list[bytes]] = {name: [] for name in TOPIC_NAMES}
    raw = _raw_events(registry)
    assert {str(e.contract) for e in raw} == {
        "ranking_outcome",
        "correction",
        "inference_feedback",
        "scored_output",
        "search_event",
    }
    history: dict[bytes, SeekerHistory] = {}
    counters: dict[str, DomainCounter] = {}
    offset = 0
    for event in raw:
        out[topics.RAW].append(envelope.encode(event))
        expansion = expand_event(event, history, limits=LIMITS, shared_pool="__shared__")
        out[topics.SIGNALS] += expansion.signals
        if expansion.state_key is not None and expansion.history is not None:
            history[expansion.state_key] = expansion.history
            out[topics.EXPAND_STATE].append(to_json(expansion.history))
        for batch in expansion.batches:
            out[topics.UNITS].append(to_json(batch))
            offsets = []
            for unit in batch.units:
                out[topics.TRIPLETS].append(to_json(unit))
                offsets.append((offset, unit.counts))
                offset += 1
            counter, triggers = count_units(
                counters.get(batch.domain, DomainCounter()),
                domain=batch.domain,
                threshold=1,
                partition=0,
                offsets_and_counts=offsets,
                at=batch.received_at,
            )
            counters[batch.domain] = counter
            out[topics.COUNT_STATE].append(to_json(counter))
            out[topics.TRIGGERS] += [to_json(t) for t in triggers]
            result = StageResult(
                request_id=batch.request_id,
                event_id=batch.event_id,
                domain=batch.domain,
                kind="units",
                units_generated=len(batch.units),
                units_counted=sum(u.counts for u in batch.units),
                pending=counter.pending,
                threshold=1,
                triggers=triggers,
            )
            out[topics.RESULTS].append(to_json(result))

    # a manual trigger over a pending unit that does not count against the threshold
    pending = DomainCounter(pending=2, total=7, sequence=3, range_start=5, range_partition=1, last_offset=9)
    counter, trigger = force_trigger(pending, domain="dating", threshold=10, at=AT, last_offset=None)
    assert trigger is not None
    out[topics.TRIGGERS].append(to_json(trigger))
    out[topics.COUNT_STATE].append(to_json(counter))
    request = TrainRequest(request_id="req-2", tenant="dev", domain="dating", requested_at=AT)
    out[topics.UNITS].append(to_json(request))
    out[topics.RESULTS].append(
        to_json(
            StageResult(
                request_id="req-2",
                domain="dating",
                kind="train",
                units_generated=0,
                units_counted=0,
                pending=0,
                threshold=10,
                triggers=[trigger],
            )
        )
    )
    for key in (b"dating/u_alice", None):
        letter = dead_letter(
            stage="expand",
            reason="schema_violation",
            error=ValueError("bad"),
            original=b"\xff not json",
            topic=topics.RAW,
            partition=2,
            offset=41,
            key=key,
            failed_at=AT,
        )
        out[topics.DLQ].append(to_json(letter))
    scored = next(e for e in raw if str(e.contract) == "scored_output")
    erasure = erasure_record(
        topics.ERASURES,
        tenant=scored.tenant,
        entry_id=scored.event_id,
        task_id=scored.domain,
        request_id="req-3",
        correlation_id="c-3",
    )
    out[topics.ERASURES].append(erasure.value)
    out[topics.DLQ_REPLAYS].append(
        to_json(
            DlqReplay(
                dlq_partition=0,
                dlq_offset=41,
                stage="expand",
                reason="schema_violation",
                to_topic=topics.RAW,
                to_partition=2,
                replayed_at=AT,
            )
        )
    )
    out[topics.TRAININGS].append(
        to_json(
            TrainingResult(
                training_id=training_id("dating", trigger.trigger_id, "v7"),
                domain="dating",
                trigger_id=trigger.trigger_id,
                sequence=trigger.sequence,
                model_version="v7",
                metrics={"ndcg@10": 0.41},
                tenant="dev",
                completed_at=AT,
                reported_at=AT,
            )
        )
    )
    return out


MESSAGES = _messages()


def _validator(topic: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((schemas.SCHEMA_DIR / schemas.file_name(topic)).read_text(encoding="utf-8"))
    checker = jsonschema.FormatChecker()

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        return not isinstance(value, str) or datetime.fromisoformat(value).tzinfo is not None

    return jsonschema.Draft202012Validator(schema, format_checker=checker)


@pytest.mark.parametrize("topic", TOPIC_NAMES)
def test_real_messages_validate_against_the_committed_schema(topic: str) -> None:
    messages = MESSAGES[topic]
    assert messages, f"no sample message for {topic}"
    validator = _validator(topic)
    for data in messages:
        value = json.loads(data)
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)]
        assert not errors, f"{topic}: {value}\n" + "\n".join(errors)


def test_samples_cover_every_variant() -> None:
    kinds = {json.loads(m)["kind"] for m in MESSAGES[topics.TRIPLETS]}
    assert kinds == {"triplet", "preference", "scored"}
    assert {json.loads(m)["kind"] for m in MESSAGES[topics.UNITS]} == {"units", "train"}
    assert {json.loads(m)["reason"] for m in MESSAGES[topics.TRIGGERS]} == {"threshold", "manual"}
    pooled = [json.loads(m) for m in MESSAGES[topics.UNITS] if json.loads(m).get("reply") is False]
    assert pooled and all(m["tenant"] is None for m in pooled)


def _first(topic: str) -> dict[str, Any]:
    value = json.loads(MESSAGES[topic][0])
    assert isinstance(value, dict)
    return value


def _invalid(topic: str, value: Mapping[str, Any]) -> bool:
    return not _validator(topic).is_valid(dict(value))


def test_the_schemas_reject_what_the_models_reject() -> None:
    raw = _first(topics.RAW)
    assert _invalid(topics.RAW, {**raw, "contract": "telepathy"})
    assert _invalid(topics.RAW, {**raw, "unexpected": 1})
    assert _invalid(topics.RAW, {**raw, "received_at": "yesterday"})
    raw_schema = _validator(topics.RAW)  # one request's envelopes as one record: a non-empty array
    assert raw_schema.is_valid([raw, raw])
    assert not raw_schema.is_valid([])
    assert not raw_schema.is_valid([raw, {**raw, "contract": "telepathy"}])
    unit = next(json.loads(m) for m in MESSAGES[topics.TRIPLETS] if json.loads(m)["kind"] == "triplet")
    assert _invalid(topics.TRIPLETS, {**unit, "kind": "quadruplet"})
    assert _invalid(topics.TRIPLETS, {**unit, "weight": -1})
    assert _invalid(topics.TRIPLETS, {k: v for k, v in unit.items() if k != "unit_id"})
    trigger = _first(topics.TRIGGERS)
    assert _invalid(topics.TRIGGERS, {**trigger, "range": {**trigger["range"], "start_offset": -1}})
    assert _invalid(topics.TRIGGERS, {**trigger, "emitted_at": "2024-01-15T10:35:00"})  # naive
    assert _invalid(topics.COUNT_STATE, {"pending": -1})
    assert _invalid(topics.EXPAND_STATE, {"observations": [{"candidate_id": "c"}]})


# --- the same messages as the pydantic records wrote --------------------------------------------

WIRE = Path(__file__).resolve().parent.parent / "data" / "wire"
#: Topics whose units moved their ``kind`` tag to the front (msgspec writes a tag first): the same
#: JSON value, another key order. Every other topic's messages are the same bytes.
TAG_FIRST = {topics.TRIPLETS, topics.UNITS}


@pytest.mark.parametrize("topic", [t for t in TOPIC_NAMES if t != topics.RAW])
def test_the_messages_are_those_the_pydantic_records_wrote(topic: str) -> None:
    """``sample-<nn>.json`` were written from the same inputs by the code before msgspec (README)."""
    stored = sorted((WIRE / topic / "v1").glob("sample-*.json"))
    assert len(stored) == len(MESSAGES[topic])
    for path, new in zip(stored, MESSAGES[topic], strict=True):
        old = path.read_bytes()
        if topic == topics.ERASURES:  # stamped with the wall clock when made
            assert {**json.loads(new), "requested_at": None} == {**json.loads(old), "requested_at": None}
        elif topic in TAG_FIRST:
            assert json.loads(new) == json.loads(old), path.name
        elif topic == topics.COUNT_STATE:  # pending_since was added later (test_wire_compat.ADDED_FIELDS)
            assert {**json.loads(new), "pending_since": None} == json.loads(old) | {"pending_since": None}
            assert new.replace(b',"pending_since":null', b"") == old, path.name
        else:
            assert new == old, path.name
