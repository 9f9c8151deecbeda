"""``POST /v1/domains/{domain}/trainings`` in process: a trainer's report of a trigger it trained on,
its checks and errors, and ``GET /v1/domains/{domain}`` showing the last one."""

from __future__ import annotations

import orjson

from pipeline.rules.counters import DomainCounter, trigger_id
from pipeline.wire.records import TrainingResult, from_json, training_id
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
