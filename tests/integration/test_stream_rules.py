"""The stream's rules on the real broker: flatten, triplets, counters, triggers, modes, DLQ.

Feedback goes in through the publisher library (the Kafka path) and over HTTP (the ingest path);
results are read back from the output topics as trainers and dashboards read them.
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
from pipeline.kafka.topics import TopicNames
from pipeline.procs import Service
from pipeline.settings import Settings
from pipeline.tenants import load_tenants
from pipeline.wire import envelope
from pipeline.wire.records import deterministic_id
from tests.conftest import TEST_TENANTS
from tests.http_helpers import domain_state, post
from tests.kafka_helpers import produce, read_until

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


async def test_outcomes_one_at_a_time_pair_with_the_seekers_history(
    publisher: FeedbackPublisher, broker: Broker, names: TopicNames
) -> None:
    seeker = f"solo-{uuid.uuid4().hex[:6]}"
    ids: list[str] = []
    for cand, label in (
        ("bob", "accepted"),
        ("carl", "rejected"),
        ("dan", "interview_passed"),
        ("erin", "ghosted"),
    ):
        ids += (
            await publisher.publish({"domain": "s_llm", "items": [outcome(seeker, cand, label)]})
        ).event_ids
    # bob/carl; dan(2.5) beats bob(2), carl(0); bob and dan beat erin(0.5)
    units = await units_of(broker, names, set(ids), 5, settle_s=1.0)
    pairs = sorted((u["positive"], u["negative"]) for u in units)
    assert pairs == [("bob", "carl"), ("bob", "erin"), ("dan", "bob"), ("dan", "carl"), ("dan", "erin")]
    weights = {(u["positive"], u["negative"]): u["weight"] for u in units}
    assert weights[("dan", "bob")] == pytest.approx(0.5 / 3)
    assert weights[("bob", "erin")] == pytest.approx(1.5 / 3)
    # a newer outcome for bob supersedes the old one: now a negative, paired under dan only
    later = await publisher.publish({"domain": "s_llm", "items": [outcome(seeker, "bob", "rejected")]})
    new = await units_of(broker, names, set(later.event_ids), 1, settle_s=1.0)
    assert [(u["positive"], u["negative"]) for u in new] == [("dan", "bob")]
    assert new[0]["weight"] == pytest.approx(2.5 / 3)


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


async def test_threshold_crossing_emits_one_trigger_with_the_exact_range(
    publisher: FeedbackPublisher, ingest: Service, broker: Broker, names: TopicNames
) -> None:
    seeker = f"t-{uuid.uuid4().hex[:6]}"
    # 2 + 1 = 3 units reach s_three's threshold 3 exactly once; 1 more stays pending
    first = await publisher.publish(
        {
            "domain": "s_three",
            "items": [
                outcome(seeker, "a", "converted"),
                outcome(seeker, "b", "accepted"),
                outcome(seeker, "c", "accepted"),
            ],
        }
    )
    second = await publisher.publish({"domain": "s_three", "items": [outcome(seeker, "d", "expired")]})
    ids = set(first.event_ids + second.event_ids)
    units = await read_until(
        broker.bootstrap, names.triplets, lambda r: _json(r)["event_id"] in ids, count=5, settle_s=1.0
    )
    triggers = await read_until(
        broker.bootstrap, names.triggers, lambda r: _json(r)["domain"] == "s_three", count=1, settle_s=1.5
    )
    assert len(units) == 5  # a>b, a>c (b,c tie); then a>d, b>d, c>d
    assert len(triggers) == 1
    trig = _json(triggers[0])
    assert trig["reason"] == "threshold" and trig["count"] == 3 and trig["threshold"] == 3
    assert trig["sequence"] == 1
    rng = trig["range"]
    assert rng["topic"] == names.triplets
    covered = [
        r
        for r in units
        if r.partition == rng["partition"] and rng["start_offset"] <= r.offset <= rng["end_offset"]
    ]
    assert len(covered) == 3
    assert all(r.partition == rng["partition"] for r in units)
    state = await domain_state(ingest, "s_three", key="fs_stream_key", until=lambda st: st["total"] >= 5)
    assert state["pending"] == 2 and state["threshold"] == 3 and state["total"] == 5
    assert state["last_trigger"]["trigger_id"] == trig["trigger_id"]


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


async def test_feedback_modes_of_corrections(ingest: Service, broker: Broker, names: TopicNames) -> None:
    case = f"case-{uuid.uuid4().hex[:6]}"
    body = {
        "case_id": case,
        "module": "intent",
        "original_output": {"intent": "refund"},
        "corrected_output": {"intent": "cancel"},
        "actor": {"id": "rep-1"},
    }
    answers = {}
    for key in ("fs_mode_off", "fs_mode_audit", "fs_mode_shared", "fs_stream_key"):
        status, answer, _ = await post(ingest, "/v1/feedback", body, key=key)
        assert status == 200, answer
        answers[key] = answer["feedback_id"]
    # the shared pool's copy is anonymized: an opaque event id (derived, so a replay repeats it)
    pooled_id = deterministic_id("pooled-event", answers["fs_mode_shared"])
    units = await read_until(
        broker.bootstrap,
        names.triplets,
        lambda r: _json(r)["event_id"] in {*answers.values(), pooled_id},
        count=3,
        settle_s=1.5,
    )
    by_domain = sorted((_json(r)["domain"], _json(r)["event_id"]) for r in units)
    assert by_domain == sorted(
        [
            ("m_shared", answers["fs_mode_shared"]),
            ("__shared__", pooled_id),
            ("s_corrections", answers["fs_stream_key"]),
        ]
    )
    pooled = next(_json(r) for r in units if _json(r)["domain"] == "__shared__")
    assert pooled["tenant"] is None and pooled["kind"] == "preference"
    assert pooled["anchor"] == "intent" and case not in orjson.dumps(pooled).decode()
    assert pooled["chosen"] == {"intent": "cancel"} and pooled["rejected"] == {"intent": "refund"}
    signals = await read_until(
        broker.bootstrap, names.signals, lambda r: _json(r)["subject"] == case, count=3, settle_s=1.0
    )
    assert sorted(_json(r)["tags"]["feedback_mode"] for r in signals) == [
        "audit_only",
        "shared_improvement",
        "tenant_tuning",
    ]  # off: discarded, no signal


async def test_scored_entries_count_except_seed_source(
    ingest: Service, broker: Broker, names: TopicNames
) -> None:
    task = "7d444840-9dc0-11d1-b245-5ffdce74fad2"
    ids = []
    for source in ("seed", "seed", "sdk", "user_rating"):
        status, answer, _ = await post(
            ingest, "/api/v1/feedback", {"task_id": task, "score": 0.5, "source": source}, key="fs_stream_key"
        )
        assert status == 201
        ids.append(answer["id"])
    units = await read_until(
        broker.bootstrap, names.triplets, lambda r: _json(r)["event_id"] in set(ids), count=4
    )
    assert sorted((_json(r)["source"], _json(r)["counts"]) for r in units) == [
        ("sdk", True),
        ("seed", False),
        ("seed", False),
        ("user_rating", True),
    ]
    triggers = await read_until(
        broker.bootstrap, names.triggers, lambda r: _json(r)["domain"] == task, count=1, settle_s=1.0
    )
    assert len(triggers) == 1 and _json(triggers[0])["count"] == 2


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


async def test_a_big_bad_message_still_reaches_the_dlq_whole(broker: Broker, names: TopicNames) -> None:
    marker = uuid.uuid4().hex.encode()
    junk = b"{" + b"y" * 1_000_000 + marker  # its dead letter carries it in base64: 1.3 MB
    await produce(broker.bootstrap, names.raw, junk, key=marker)
    letters = await read_until(broker.bootstrap, names.dlq, lambda r: r.key == marker)
    import base64

    assert base64.b64decode(_json(letters[0])["original"]) == junk
