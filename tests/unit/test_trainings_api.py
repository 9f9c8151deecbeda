"""``POST /v1/domains/{domain}/trainings`` in process: a trainer's report of a trigger it trained on,
its checks and errors, and ``GET /v1/domains/{domain}`` showing the last one."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from pipeline.api import stream_view
from pipeline.api.stream_view import StreamView
from pipeline.kafka.topics import topic_names
from pipeline.rules.counters import DomainCounter, trigger_id
from pipeline.settings import Settings
from pipeline.wire.records import TrainingResult, from_json, latest_training, to_json, training_id
from tests.inprocess import Edge, edge  # noqa: F401 (fixture)

PATH = "/v1/domains/dating/trainings"


async def test_a_report_of_a_known_trigger_is_written_once_and_shown(edge: Edge) -> None:  # noqa: F811
    edge.view.domains["dating"] = DomainCounter(sequence=2, total=2000)
    body = {"sequence": 2, "model_version": "m-7", "metrics": {"ndcg@10": 0.41, "loss": 0.2}}
    status, answer, _ = await edge.post(PATH, body)
    assert status == 201, answer
    tid = trigger_id("dating", 2)
    assert answer["trigger_id"] == tid and answer["training_id"] == training_id("dating", tid, "m-7")
    assert answer["metrics"] == {"ndcg@10": 0.41, "loss": 0.2} and answer["tenant"] == "dev"
    [record] = [r for r in edge.writer.records if r.topic.endswith("train.completed")]
    assert record.key == b"dating" and from_json(TrainingResult, record.value).model_version == "m-7"
    again = await edge.post(PATH, {**body, "trigger_id": tid})
    assert again[0] == 201 and again[1]["training_id"] == answer["training_id"]  # the same training

    edge.view.trainings["dating"] = from_json(TrainingResult, record.value)  # as the view reads it back
    status, state, _ = await edge.call("GET", "/v1/domains/dating")
    assert status == 200 and state["last_training"] == orjson.loads(record.value)


async def test_a_report_of_no_such_trigger_or_the_wrong_id_is_refused(edge: Edge) -> None:  # noqa: F811
    edge.view.domains["dating"] = DomainCounter(sequence=1)
    status, err, _ = await edge.post(PATH, {"sequence": 2, "model_version": "m"})
    assert status == 404 and err["error"]["code"] == "TRIGGER_NOT_FOUND"
    status, err, _ = await edge.post(PATH, {"sequence": 1, "model_version": "m", "trigger_id": "nope"})
    assert status == 422 and err["error"]["code"] == "TRIGGER_MISMATCH"
    status, err, _ = await edge.post(PATH, {"sequence": 0, "model_version": ""})
    assert status == 400 and err["error"]["code"] == "INVALID_REQUEST"
    assert "sequence" in err["error"]["message"] and "model_version" in err["error"]["message"]
    status, err, _ = await edge.post(PATH, {"sequence": 1, "model_version": "m", "extra": 1})
    assert status == 400 and "extra" in err["error"]["message"]
    status, err, _ = await edge.post("/v1/domains/jobs/trainings", {"sequence": 1, "model_version": "m"})
    assert status == 403 and err["error"]["code"] == "SCOPE_INSUFFICIENT"
    assert not [r for r in edge.writer.records if r.topic.endswith("train.completed")]
    status, state, _ = await edge.call("GET", "/v1/domains/dating")
    assert state["last_training"] is None


# --- the last training of a domain ---------------------------------------------------------------------


def training(domain: str, sequence: int, day: int) -> TrainingResult:
    tid = trigger_id(domain, sequence)
    at = datetime(2026, 11, day, tzinfo=UTC)
    return TrainingResult(
        training_id=training_id(domain, tid, f"m-{sequence}"),
        domain=domain,
        trigger_id=tid,
        sequence=sequence,
        model_version=f"m-{sequence}",
        tenant="dev",
        completed_at=at,
        reported_at=at,
    )


def test_the_last_training_is_the_newest_trigger_then_the_latest_report() -> None:
    assert latest_training(None, training("d", 1, 1)).sequence == 1
    assert latest_training(training("d", 1, 2), training("d", 2, 1)).sequence == 2
    kept = training("d", 2, 1)
    assert latest_training(kept, training("d", 1, 3)) is kept  # a late report of an older trigger
    assert latest_training(kept, training("d", 2, 3)).reported_at.day == 3  # trained again


def test_the_view_keeps_the_newest_training_per_domain_within_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = topic_names(Settings(topic_prefix="p."))
    view = StreamView("unused:9092", names, max_bytes_per_tenant=1 << 20)
    view._apply(names.trainings, b"d", to_json(training("d", 2, 1)))
    view._apply(names.trainings, b"d", to_json(training("d", 1, 2)))  # reported late: d stays at #2
    assert view.trainings["d"].sequence == 2
    monkeypatch.setattr(stream_view, "MAX_TRAINING_DOMAINS", 2)
    view._apply(names.trainings, b"a", to_json(training("a", 1, 1)))
    view._apply(names.trainings, b"b", to_json(training("b", 1, 1)))
    assert list(view.trainings) == ["a", "b"]  # the least recently reported domain is dropped


async def test_hostile_reports_are_refused_and_write_nothing(edge: Edge) -> None:  # noqa: F811
    edge.view.domains["dating"] = DomainCounter(sequence=1)
    cases = [
        {"sequence": 1, "model_version": "m", "metrics": {"auc": "high"}},  # wrong type
        {"sequence": 1, "model_version": "m", "metrics": {f"m{i}": 0.1 for i in range(65)}},  # too many
        {"sequence": 1, "model_version": "m" * 257},  # too long
        {"sequence": 1, "model_version": "m", "metrics": {"x" * 129: 1.0}},  # name too long
        {"sequence": [1], "model_version": "m"},
        "not an object",
    ]
    for body in cases:
        status, err, _ = await edge.post(PATH, body)
        assert status == 400 and err["error"]["code"] == "INVALID_REQUEST", (body, err)
    deep: object = 1
    for _ in range(200):
        deep = [deep]
    status, err, _ = await edge.post(PATH, {"sequence": 1, "model_version": "m", "metrics": deep})
    assert status == 400 and err["error"]["code"] == "TOO_DEEP"
    status, _, _ = await edge.post(PATH, raw=b'{"sequence": 1, "model_version": "' + b"m" * 2_000_000 + b'"}')
    assert status == 413
    assert not [r for r in edge.writer.records if r.topic.endswith("train.completed")]
