"""The stream on the real broker where it needs Kafka: a seed flow end to end, the ingest's answers
(signal ids, manual train), the DLQ of bad bytes, bodies near the size limits.

Feedback goes in through the publisher library (the Kafka path) and over HTTP (the ingest path);
results are read back from the output topics as trainers and dashboards read them. The rules
themselves (pairing one at a time, threshold ranges, feedback modes, scored entries) are tested in
process on the stage runtime: tests/unit/test_stream_stages.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from pipeline.api.contracts import Contract
from pipeline.api.publisher import FeedbackPublisher
from pipeline.kafka.broker import Broker
from pipeline.kafka.partitioner import default_partition
from pipeline.kafka.topics import TopicNames
from pipeline.procs import Service
from pipeline.settings import Settings
from pipeline.tenants import load_tenants
from pipeline.wire import envelope
from tests.conftest import TEST_TENANTS
from tests.http_helpers import domain_state, post
from tests.kafka_helpers import produce, raw_of_request, read_until

pytestmark = pytest.mark.usefixtures("worker")


def _json(rec: Any) -> dict[str, Any]:
    return orjson.loads(rec.value)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
async def publisher(settings: Settings) -> AsyncIterator[FeedbackPublisher]:
    pub = FeedbackPublisher(
        settings.kafka_bootstrap_servers or "", load_tenants(TEST_TENANTS), "stream", settings=settings
    )
    async with pub:
        yield pub


def outcome(seeker: str, candidate: str, label: str, weight: float = 1.0) -> dict[str, Any]:
    return {"seeker_id": seeker, "candidate_id": candidate, "outcome": label, "weight": weight}


async def units_of(
    broker: Broker, names: TopicNames, event_ids: set[str], count: int, **kw: Any
) -> list[dict[str, Any]]:
    recs = await read_until(
        broker.bootstrap, names.triplets, lambda r: _json(r)["event_id"] in event_ids, count=count, **kw
    )
    return [_json(r) for r in recs]


async def test_seed_000_batch_expands_into_weighted_triplets(
    publisher: FeedbackPublisher, broker: Broker, names: TopicNames
) -> None:
    seeker = f"alice-{uuid.uuid4().hex[:6]}"
    res = await publisher.publish(
        {
            "domain": "s_five",
            "items": [
                outcome(seeker, "bob", "accepted"),
                outcome(seeker, "carl", "rejected"),
                outcome(seeker, "dan", "converted", 2.0),
            ],
        }
    )
    units = await units_of(broker, names, set(res.event_ids), 3, settle_s=1.0)
    got = {(u["positive"], u["negative"]): round(u["weight"], 4) for u in units}
    assert got == {("dan", "carl"): 2.0, ("dan", "bob"): 0.6667, ("bob", "carl"): 0.6667}
    assert all(u["anchor"] == seeker and u["kind"] == "triplet" and u["counts"] for u in units)
    assert len({u["unit_id"] for u in units}) == 3


async def test_nested_feedback_becomes_typed_signals_with_the_answered_ids(
    ingest: Service, broker: Broker, names: TopicNames
) -> None:
    inference = str(uuid.uuid4())
    body = [
        {
            "id": inference,
            "feedback": {
                "evaluation": {"quality": {"precision": 0.95, "recall": 1}},
                "helpful": True,
                "note": "ok",
                "accuracy": {"score": 4, "reason": "missed an edge case"},
            },
            "tags": {"evaluator": "human"},
            "optimize": "min",
        }
    ]
    status, answer, _ = await post(ingest, "/v1/feedback", body, key="fs_stream_key")
    assert status == 200
    ids = answer[0]["feedback_ids"]
    recs = await read_until(
        broker.bootstrap, names.signals, lambda r: _json(r)["subject"] == inference, count=5, settle_s=1.0
    )
    signals = {s["key"]: s for s in map(_json, recs)}
    assert set(signals) == {
        "evaluation.quality.precision",
        "evaluation.quality.recall",
        "helpful",
        "note",
        "accuracy",
    }
    assert {k: s["signal_id"] for k, s in signals.items()} == ids
    assert signals["evaluation.quality.recall"]["value"] == 1.0
    assert isinstance(signals["evaluation.quality.recall"]["value"], float)
    assert signals["helpful"]["value"] is True
    assert signals["note"]["value"] == "ok"
    assert signals["accuracy"]["value"] == 4.0 and signals["accuracy"]["reason"] == "missed an edge case"
    assert all(s["tags"] == {"evaluator": "human"} and s["optimize"] == "min" for s in signals.values())
    assert all(s["domain"] == "s_llm" and s["contract"] == "inference_feedback" for s in signals.values())


async def test_a_request_of_several_items_is_one_record_and_each_item_signals_under_its_own_key(
    ingest: Service, broker: Broker, names: TopicNames, settings: Settings
) -> None:
    """Seed 002's items travel as one record (an array of envelopes, keyed by the first item); the
    expand stage splits it: each item's signals are keyed by its own inference id, in that key's
    partition, with the ids the answer gave."""
    ids = [str(uuid.uuid4()) for _ in range(4)]
    body = [{"id": i, "feedback": {"helpful": n % 2 == 0, "q": {"a": n}}} for n, i in enumerate(ids)]
    status, answer, headers = await post(ingest, "/v1/feedback", body, key="fs_stream_key")
    assert status == 200, answer
    (raw,) = await raw_of_request(broker.bootstrap, names.raw, headers["x-request-id"], 1)
    assert raw.key == ids[0].encode() and len(orjson.loads(raw.value)) == 4
    recs = await read_until(
        broker.bootstrap, names.signals, lambda r: _json(r)["subject"] in ids, count=8, settle_s=1.0
    )
    assert {(r.key.decode(), _json(r)["key"]) for r in recs} == {
        (i, k) for i in ids for k in ("helpful", "q.a")
    }
    assert all(r.partition == default_partition(r.key, settings.topic_partitions) for r in recs)
    answered = {(i, k): fid for i, a in zip(ids, answer, strict=True) for k, fid in a["feedback_ids"].items()}
    assert {(r.key.decode(), _json(r)["key"]): _json(r)["signal_id"] for r in recs} == answered


async def post_get(svc: Service, path: str, key: str) -> tuple[int, Any, dict[str, str]]:
    import aiohttp

    from tests.http_helpers import base_url

    async with (
        aiohttp.ClientSession() as s,
        s.get(base_url(svc) + path, headers={"Authorization": f"Bearer {key}"}) as resp,
    ):
        return resp.status, orjson.loads(await resp.read()), dict(resp.headers)


async def test_manual_train_is_ordered_with_counts_and_says_when_nothing_is_pending(
    publisher: FeedbackPublisher, ingest: Service, broker: Broker, names: TopicNames
) -> None:
    status, body, _ = await post(ingest, "/v1/train", {"domain": "s_search"}, key="fs_stream_key")
    assert status == 200 and body["triggered"] is False and body["reason"] == "nothing_pending"
    search = str(uuid.uuid4())
    for event_type, doc in (
        ("result_helpful", uuid.uuid4()),
        ("stale_result", uuid.uuid4()),
        ("read_abandoned", uuid.uuid4()),
    ):
        await publisher.publish({"event_type": event_type, "search_id": search, "doc_id": str(doc)})
    # the train request is ordered with what the counting stage has seen: wait until the helpful >
    # stale triplet is counted (feedback still in the expand stage counts toward the next trigger)
    await domain_state(ingest, "s_search", key="fs_stream_key", until=lambda st: st["pending"] >= 1)
    status, body, _ = await post(ingest, "/v1/train", {"domain": "s_search"}, key="fs_stream_key")
    assert status == 200 and body["triggered"] is True
    trig = body["trigger"]
    assert trig["reason"] == "manual" and trig["count"] == 1 and trig["domain"] == "s_search"
    on_topic = await read_until(
        broker.bootstrap, names.triggers, lambda r: _json(r)["trigger_id"] == trig["trigger_id"], settle_s=0.5
    )
    assert len(on_topic) == 1
    status, body, _ = await post(ingest, "/v1/train", {"domain": "s_search"}, key="fs_stream_key")
    assert body["triggered"] is False
    status, body, _ = await post(ingest, "/v1/train", {"domain": "dating"}, key="fs_stream_key")
    assert status == 403


async def test_bad_messages_go_to_the_dlq_and_the_stream_keeps_going(
    publisher: FeedbackPublisher, broker: Broker, names: TopicNames
) -> None:
    marker = uuid.uuid4().hex.encode()
    await produce(broker.bootstrap, names.raw, b"\xff not json " + marker, key=marker)
    valid = publisher.plan({"domain": "s_llm", "items": [outcome("dlq-seeker", "x", "accepted")]})[0].events[
        0
    ]
    broken = orjson.loads(envelope.encode(valid))
    broken["contract"] = "inference_feedback"  # payload no longer fits the contract
    await produce(broker.bootstrap, names.raw, orjson.dumps(broken), key=marker)
    after = await publisher.publish(
        {
            "domain": "s_llm",
            "items": [
                outcome(f"after-{marker.decode()[:6]}", "x", "accepted"),
                outcome(f"after-{marker.decode()[:6]}", "y", "rejected"),
            ],
        }
    )
    letters = await read_until(broker.bootstrap, names.dlq, lambda r: r.key == marker, count=2, settle_s=0.5)
    assert len(letters) == 2
    first, second = (_json(r) for r in letters)
    import base64

    assert base64.b64decode(first["original"]) == b"\xff not json " + marker
    assert first["stage"] == "expand" and first["topic"] == names.raw and first["reason"]
    assert orjson.loads(base64.b64decode(second["original"]))["event_id"] == broken["event_id"]
    units = await units_of(broker, names, set(after.event_ids), 1)
    assert units[0]["positive"] == "x"


async def test_publisher_rejects_what_the_ingest_rejects(publisher: FeedbackPublisher) -> None:
    from pipeline.api.publisher import PublishRejected

    with pytest.raises(PublishRejected, match="unknown label"):
        await publisher.publish({"domain": "s_llm", "items": [outcome("p", "q", "superb")]})
    with pytest.raises(PublishRejected) as forbidden:
        await publisher.publish({"domain": "dating", "items": [outcome("p", "q", "accepted")]})
    assert forbidden.value.status == 403
    with pytest.raises(PublishRejected) as bad_score:
        await publisher.publish(
            {"task_id": "7d444840-9dc0-11d1-b245-5ffdce74fad2", "score": 1.5}, contract=Contract.SCORED_OUTPUT
        )
    assert bad_score.value.status == 422


async def test_a_body_near_the_size_limit_flows_through_every_stage(
    ingest: Service, broker: Broker, names: TopicNames
) -> None:
    big = "x" * 1_000_000  # near MAX_BODY_BYTES (1 MiB): envelope and unit must fit their topics
    body = {
        "case_id": f"big-{uuid.uuid4().hex[:6]}",
        "module": "summarizer",
        "original_output": big,
        "corrected_output": "short",
        "actor": {"id": "rep-2"},
    }
    status, answer, _ = await post(ingest, "/v1/feedback", body, key="fs_stream_key")
    assert status == 200, answer
    units = await read_until(
        broker.bootstrap, names.triplets, lambda r: _json(r)["event_id"] == answer["feedback_id"]
    )
    assert len(units) == 1
    unit = _json(units[0])
    assert unit["kind"] == "preference" and unit["rejected"] == big and unit["chosen"] == "short"


async def test_the_largest_seed_002_request_is_one_record_and_every_item_flows_through(
    ingest: Service, broker: Broker, names: TopicNames
) -> None:
    """1,000 items near the 1 MiB body limit: one array record (its envelopes' fields added) fits
    feedback.raw, and the stream splits it into every item's signals."""
    ids = [str(uuid.uuid4()) for _ in range(1000)]
    body = [{"id": i, "feedback": {"note": "x" * 930, "ok": True}} for i in ids]
    assert 1_000_000 < len(orjson.dumps(body)) < 1024 * 1024
    status, answer, headers = await post(ingest, "/v1/feedback", body, key="fs_stream_key")
    assert status == 200 and all(a["error"] is None for a in answer), answer[:1]
    (raw,) = await raw_of_request(broker.bootstrap, names.raw, headers["x-request-id"], 1)
    assert len(raw.value) > 1024 * 1024 and len(orjson.loads(raw.value)) == 1000
    wanted = set(ids)
    signals = await read_until(
        broker.bootstrap, names.signals, lambda r: _json(r)["subject"] in wanted, count=2000, timeout_s=90
    )
    assert {(_json(r)["subject"], _json(r)["key"]) for r in signals} == {
        (i, k) for i in ids for k in ("note", "ok")
    }


async def test_a_big_bad_message_still_reaches_the_dlq_whole(broker: Broker, names: TopicNames) -> None:
    marker = uuid.uuid4().hex.encode()
    junk = b"{" + b"y" * 1_000_000 + marker  # its dead letter carries it in base64: 1.3 MB
    await produce(broker.bootstrap, names.raw, junk, key=marker)
    letters = await read_until(broker.bootstrap, names.dlq, lambda r: r.key == marker)
    import base64

    assert base64.b64decode(_json(letters[0])["original"]) == junk
