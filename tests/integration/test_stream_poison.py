"""No input stalls a partition: outputs too big for their topics are split or dead-lettered.

On the real broker, through the session's worker and ingest: a seed 000 request whose units are
several times a topic's size limit is answered and all its units reach ``feedback.triplets``; raw
events injected straight onto ``feedback.raw`` (bypassing the edge's bounds) whose outputs cannot
fit a topic are dead-lettered with reason ``size_violation`` and leave nothing else behind. After
each, a normal request on the same partition is answered within the normal wait (a 200, not the
202 of a stream that did not answer in time).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from pipeline.api.publisher import FeedbackPublisher
from pipeline.contracts import expand_event, kafka_key
from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import TopicNames
from pipeline.procs import Service
from pipeline.rules.triplets import Limits
from pipeline.settings import Settings
from pipeline.stream.runtime import key_partition
from pipeline.tenants import load_tenants
from pipeline.wire import envelope
from pipeline.wire.records import to_builtins
from tests.conftest import TEST_TENANTS
from tests.http_helpers import get, post
from tests.kafka_helpers import produce, read_until

pytestmark = pytest.mark.usefixtures("worker")

KEY = "fs_stream_key"
LABELS = ["converted", "interview_passed", "accepted", "expired", "ghosted", "rejected"]


@pytest.fixture(scope="module")
async def publisher(settings: Settings) -> AsyncIterator[FeedbackPublisher]:
    pub = FeedbackPublisher(
        settings.kafka_bootstrap_servers or "", load_tenants(TEST_TENANTS), "stream", settings=settings
    )
    async with pub:
        yield pub


def _json(rec: Any) -> dict[str, Any]:
    return orjson.loads(rec.value)  # type: ignore[no-any-return]


def raw_partition(pub: FeedbackPublisher, body: dict[str, Any], settings: Settings) -> int:
    event = pub.plan(body)[0].events[0]
    partition = key_partition(kafka_key(event), settings.topic_partitions)
    assert partition is not None
    return partition


def seeker_on(pub: FeedbackPublisher, settings: Settings, partition: int, domain: str = "s_llm") -> str:
    """A fresh seeker whose raw events land on ``partition``."""
    while True:
        seeker = f"follow-{uuid.uuid4().hex[:8]}"
        if raw_partition(pub, small_body(seeker, domain), settings) == partition:
            return seeker


def key_on(settings: Settings, partition: int) -> bytes:
    while True:
        key = f"poison-{uuid.uuid4().hex}".encode()
        if key_partition(key, settings.topic_partitions) == partition:
            return key


def small_body(seeker: str, domain: str = "s_llm") -> dict[str, Any]:
    return {
        "domain": domain,
        "items": [
            {"seeker_id": seeker, "candidate_id": "x", "outcome": "accepted"},
            {"seeker_id": seeker, "candidate_id": "y", "outcome": "rejected"},
        ],
    }


async def answered_in_time(ingest: Service, body: dict[str, Any]) -> dict[str, Any]:
    status, answer, _ = await post(ingest, "/v1/feedback", body, key=KEY)
    assert status == 200, f"the stream did not answer in the normal wait: {status} {answer}"
    assert answer["triplets_generated"] == 1
    return answer  # type: ignore[no-any-return]


async def test_a_request_whose_units_exceed_the_topic_limit_is_answered_in_full(
    ingest: Service, publisher: FeedbackPublisher, broker: Broker, names: TopicNames, settings: Settings
) -> None:
    seeker = f"big-{uuid.uuid4().hex[:8]}"
    body = {
        "domain": "s_crash2",
        "items": [
            {
                "seeker_id": seeker,
                "candidate_id": f"candidate-{i:04d}-{'c' * 40}",
                "outcome": LABELS[i % len(LABELS)],
            }
            for i in range(200)
        ],
    }
    planned = publisher.plan(body)[0].events[0]
    limits = Limits(max_items=settings.seeker_max_items, max_age_seconds=settings.seeker_max_age_s)
    expected = len(expand_event(planned, {}, limits=limits, shared_pool="__shared__").batches[0].units)
    assert len(orjson.dumps([to_builtins(u) for u in planned_units(planned, limits)])) > 4 << 20

    status, answer, _ = await post(ingest, "/v1/feedback", body, key=KEY)
    assert status in (200, 202), answer
    request_id = answer["request_id"]
    if status == 200:
        assert answer["triplets_generated"] == expected
    units = await read_until(
        broker.bootstrap,
        names.triplets,
        lambda r: _json(r).get("anchor") == seeker,
        count=expected,
        timeout_s=90,
        settle_s=1.0,
    )
    assert len(units) == expected
    assert len({_json(r)["unit_id"] for r in units}) == expected
    status, state = await get(ingest, f"/v1/requests/{request_id}", key=KEY)
    assert status == 200 and state["triplets_generated"] == expected and state["complete"] is True
    # 1,900-odd triggers (threshold 7): the results carry the last ones and their total
    results = await read_until(
        broker.bootstrap, names.results, lambda r: _json(r)["request_id"] == request_id, count=2
    )
    assert all(len(_json(r)["triggers"]) <= 16 for r in results)
    assert sum(_json(r)["triggers_total"] for r in results) >= expected // 7 - 1

    follow = seeker_on(publisher, settings, raw_partition(publisher, body, settings))
    await answered_in_time(ingest, small_body(follow))


def planned_units(event: envelope.RawEvent, limits: Limits) -> list[Any]:
    return list(expand_event(event, {}, limits=limits, shared_pool="__shared__").batches[0].units)


def _raw(pub: FeedbackPublisher, body: Any, **payload_changes: Any) -> dict[str, Any]:
    event = orjson.loads(envelope.encode(pub.plan(body)[0].events[0]))
    event["payload"].update(payload_changes)
    return event  # type: ignore[no-any-return]


async def test_raw_events_whose_outputs_cannot_fit_are_dead_lettered_and_the_partition_flows(
    ingest: Service, publisher: FeedbackPublisher, broker: Broker, names: TopicNames, settings: Settings
) -> None:
    partition = 1
    poisons: dict[str, tuple[bytes, str]] = {}  # event id -> (raw record key, the stage that refuses it)

    # a 900 KB seeker id: its history's changelog record is over that topic's limit (expand)
    huge_seeker = "s" * 900_000
    event = _raw(publisher, small_body("placeholder"), seeker_id=huge_seeker)
    poisons[event["event_id"]] = (key_on(settings, partition), "expand")
    # a 3 MB feedback string: its signal is over the signals topic's limit (expand)
    inference = {"id": str(uuid.uuid4()), "feedback": {"note": "ok"}}
    event2 = _raw(publisher, [inference], feedback={"note": "n" * 3_000_000})
    poisons[event2["event_id"]] = (key_on(settings, partition), "expand")
    # a 1 MB request id: the count stage's result (keyed and carrying it) is over its limit (count)
    event3 = _raw(publisher, small_body(f"rid-{uuid.uuid4().hex[:6]}"))
    event3["request_id"] = "r" * 1_000_000
    poisons[event3["event_id"]] = (key_on(settings, partition), "count")

    for ev in (event, event2, event3):
        key, _stage = poisons[ev["event_id"]]
        await produce(broker.bootstrap, names.raw, orjson.dumps(ev), key=key)

    letters = await read_until(
        broker.bootstrap,
        names.dlq,
        lambda r: (
            _json(r)["reason"] == "size_violation"
            and orjson.loads(base64.b64decode(_json(r)["original"])).get("event_id") in poisons
        ),
        count=3,
        timeout_s=60,
        settle_s=1.0,
    )
    by_event = {orjson.loads(base64.b64decode(_json(r)["original"]))["event_id"]: _json(r) for r in letters}
    assert len(letters) == 3 and set(by_event) == set(poisons)
    for event_id, (key, stage) in poisons.items():
        letter = by_event[event_id]
        assert letter["stage"] == stage
        assert letter["original_truncated"] is False
        if stage == "expand":
            assert letter["key"] == key.decode() and letter["topic"] == names.raw
            assert letter["partition"] == partition
    # an input's outputs go with it: nothing of the refused events is on the output topics
    leftovers = await read_until(
        broker.bootstrap,
        names.triplets,
        lambda r: _json(r)["event_id"] in (event["event_id"], event2["event_id"], event3["event_id"]),
        timeout_s=2,
    )
    assert leftovers == []

    follow = seeker_on(publisher, settings, partition)
    await answered_in_time(ingest, small_body(follow))
