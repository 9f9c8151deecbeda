"""``feedstream dlq`` on the real broker: typed headers, listing, and a replay after the cause is fixed.

Its own topics and worker (expand and count), whose tenants file at first lacks the domain ``ghost``
that the publisher's tenants own: the count stage dead-letters those units (processing_failure). A
raw record that is not JSON is dead-lettered by expand (schema_violation). Then the worker restarts
with the domain owned (the fix), the count letters are replayed: their units reach
``feedback.triplets`` once, and a second replay replays nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaError

from pipeline.api.publisher import FeedbackPublisher
from pipeline.kafka.broker import Broker
from pipeline.ops import dlq
from pipeline.tenants import load_tenants
from pipeline.wire.records import (
    MAX_DEAD_LETTER_KEY_BYTES,
    REPLAY_HEADER,
    DeadLetter,
    dead_letter,
    dlq_replay_key,
    to_json,
)
from tests.conftest import TEST_TENANTS
from tests.kafka_helpers import produce, read_until
from tests.stacks import Stack, own_stack

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(broker: Broker, service_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    with own_stack(broker, service_env, tmp_path, "dlq", {"stream": {"ghost": {"threshold": 1000}}}) as s:
        yield s


@pytest.fixture
async def publisher(stack: Stack) -> AsyncIterator[FeedbackPublisher]:
    pub = FeedbackPublisher(
        stack.settings.kafka_bootstrap_servers or "",
        load_tenants(stack.tenants),
        "stream",
        settings=stack.settings,
    )
    async with pub:
        yield pub


def outcome(seeker: str, candidate: str, label: str) -> dict[str, Any]:
    return {"seeker_id": seeker, "candidate_id": candidate, "outcome": label}


def letter_body(
    stage: str,
    topic: str,
    offset: int,
    failed_at: datetime,
    *,
    original: bytes = b"abc",
    key: bytes | None = None,
    max_original_bytes: int | None = None,
) -> DeadLetter:
    """A count or expand dead letter's body, as the runtime writes it."""
    return dead_letter(
        stage=stage,
        reason="processing_failure",
        error=ValueError("boom"),
        original=original,
        topic=topic,
        partition=0,
        offset=offset,
        key=key,
        failed_at=failed_at,
        max_original_bytes=max_original_bytes,
    )


async def test_dead_letters_are_listed_shown_and_replayed_once_after_the_fix(
    stack: Stack, publisher: FeedbackPublisher
) -> None:
    bootstrap = stack.settings.kafka_bootstrap_servers or ""
    worker = stack.worker(TEST_TENANTS)  # does not know the domain "ghost" yet
    try:
        seeker = f"s-{uuid.uuid4().hex[:6]}"
        res = await publisher.publish(
            {
                "domain": "ghost",
                "items": [outcome(seeker, "bob", "accepted"), outcome(seeker, "carl", "rejected")],
            }
        )
        await produce(
            bootstrap, stack.names.raw, b"{not json", key=b"k", headers=[("traceparent", b"00-t-s-01")]
        )
        letters = await read_until(bootstrap, stack.names.dlq, lambda r: True, count=2, timeout_s=60)
    finally:
        worker.stop()

    # typed headers on the real topic
    by_stage = {dict(r.headers)["feedstream.dlq.stage"]: dict(r.headers) for r in letters}
    assert by_stage[b"count"]["feedstream.dlq.reason"] == b"processing_failure"
    assert by_stage[b"count"]["feedstream.dlq.topic"] == stack.names.units.encode()
    assert by_stage[b"count"]["feedstream.dlq.exception.class"] == b"UnknownDomain"
    assert by_stage[b"expand"]["feedstream.dlq.reason"] == b"schema_violation"
    assert by_stage[b"expand"]["traceparent"] == b"00-t-s-01"  # the original's own header rides along

    listed = [json.loads(line) for line in (await stack.feedstream("dlq", "ls", "--json")).splitlines()]
    assert {(x["stage"], x["reason"]) for x in listed} == {
        ("count", "processing_failure"),
        ("expand", "schema_violation"),
    }
    only = await stack.feedstream("dlq", "ls", "--json", "--reason", "schema_violation")
    assert [json.loads(line)["stage"] for line in only.splitlines()] == ["expand"]
    assert (await stack.feedstream("dlq", "ls", "--json", "--since", "1h")).count("\n") == 2
    assert await stack.feedstream("dlq", "ls", "--json", "--since", "2999-01-01") == ""
    count_letter = next(x["letter"] for x in listed if x["stage"] == "count")
    shown = await stack.feedstream("dlq", "show", count_letter)
    assert (
        "UnknownDomain" in shown and "ghost" in shown and "feedstream.dlq.reason: processing_failure" in shown
    )

    # a dry run writes nothing
    dry = await stack.feedstream("dlq", "replay", "--stage", "count", "--dry-run")
    assert "would replay 1, already replayed 0" in dry
    assert await read_until(bootstrap, stack.names.dlq_replays, lambda r: True, count=1, timeout_s=2) == []

    # without --yes and no terminal to ask on, a replay refuses and writes nothing
    status, out, err = await stack.run("dlq", "replay", "--stage", "count")
    assert status == 1 and "--yes" in out + err and "would replay 1" in out
    assert await read_until(bootstrap, stack.names.dlq_replays, lambda r: True, count=1, timeout_s=2) == []

    # the fix: the worker now knows the domain; replay the count letter, once
    worker = stack.worker()
    try:
        done = await stack.feedstream("dlq", "replay", "--stage", "count", "--yes")
        assert "replayed 1, already replayed 0" in done
        event_ids = set(res.event_ids)
        units = await read_until(
            bootstrap,
            stack.names.triplets,
            lambda r: orjson.loads(r.value)["event_id"] in event_ids,
            count=1,
            timeout_s=60,
            settle_s=2.0,
        )
        assert len(units) == 1 and orjson.loads(units[0].value)["positive"] == "bob"
        again = await stack.feedstream("dlq", "replay", "--stage", "count", "--yes")
        assert "replayed 0, already replayed 1" in again
        replayed = await read_until(
            bootstrap,
            stack.names.units,
            lambda r: any(k == REPLAY_HEADER for k, _ in r.headers),
            count=1,
            settle_s=2.0,
        )
        assert len(replayed) == 1 and dict(replayed[0].headers)[REPLAY_HEADER] == count_letter.encode()
        # the units arrive once: nothing was written twice
        units = await read_until(
            bootstrap,
            stack.names.triplets,
            lambda r: orjson.loads(r.value)["event_id"] in event_ids,
            settle_s=2.0,
        )
        assert len(units) == 1
        listed = [json.loads(x) for x in (await stack.feedstream("dlq", "ls", "--json")).splitlines()]
        assert {x["stage"]: x["replayed"] for x in listed} == {"count": True, "expand": False}
    finally:
        worker.stop()


async def test_a_replay_fences_one_still_running_so_each_letter_is_replayed_once(stack: Stack) -> None:
    """Two replays at once: the second one's start fences the first (same transactional id) and aborts
    its open transaction, so its record and marker never become visible; the second replays the letter,
    and the first cannot commit."""
    bootstrap = stack.bootstrap
    original = b'{"not": "read by any worker here"}'
    body = letter_body("count", stack.names.units, 7, datetime.now(UTC), original=original, key=b"k1")
    await produce(bootstrap, stack.names.dlq, to_json(body), key=b"k1")
    [letter] = await read_until(bootstrap, stack.names.dlq, lambda r: True)
    name = f"{letter.partition}:{letter.offset}"

    first = dlq.replayer(stack.settings, bootstrap)  # a replay caught mid-way: written, not committed
    await first.start()
    try:
        await first.begin_transaction()
        await first.send_and_wait(
            stack.names.units, original, key=b"k1", partition=0, headers=[(REPLAY_HEADER, name.encode())]
        )
        await first.send_and_wait(
            stack.names.dlq_replays, b"{}", key=dlq_replay_key(letter.partition, letter.offset)
        )
        done = await stack.feedstream("dlq", "replay", "--yes")
        assert "replayed 1, already replayed 0" in done
        with pytest.raises(KafkaError):  # fenced: ProducerFenced (or the abort it caused)
            await first.commit_transaction()
    finally:
        await first.stop()

    replayed = await read_until(
        bootstrap,
        stack.names.units,
        lambda r: dict(r.headers).get(REPLAY_HEADER) == name.encode(),
        settle_s=2.0,
    )
    assert [(r.key, r.value, r.partition) for r in replayed] == [(b"k1", original, 0)]
    markers = await read_until(bootstrap, stack.names.dlq_replays, lambda r: True, settle_s=1.0)
    assert len(markers) == 1 and json.loads(markers[0].value)["dlq_offset"] == letter.offset
    assert "replayed 0, already replayed 1" in await stack.feedstream("dlq", "replay", "--yes")


def test_selection_and_plan_are_pure() -> None:
    def letter(p: int, o: int, stage: str, truncated: bool = False) -> dlq.Letter:
        at = datetime(2026, 1, 1, 0, o, tzinfo=UTC)
        body = letter_body(stage, "t", o, at, max_original_bytes=1 if truncated else None)
        return dlq.Letter(p, o, None, [("a", b"1"), ("feedstream.dlq.stage", b"x")], body)

    xs = [
        letter(0, 1, "count"),
        letter(1, 2, "expand"),
        letter(0, 3, "count", truncated=True),
        letter(0, 4, "count"),
    ]
    assert [x.name for x in dlq.select(xs, stage="count", start=2)] == ["0:3", "0:4"]
    assert [x.name for x in dlq.select(xs, end=datetime(2026, 1, 1, 0, 2, tzinfo=UTC))] == ["0:1", "1:2"]
    assert [x.name for x in dlq.select(xs, partition=1)] == ["1:2"]
    p = dlq.plan(xs, {(0, 1)})
    assert ([x.name for x in p.replay], [x.name for x in p.already], [x.name for x in p.truncated]) == (
        ["1:2", "0:4"],
        ["0:1"],
        ["0:3"],
    )
    assert dlq.replay_headers(xs[0]) == [("a", b"1"), (REPLAY_HEADER, b"0:1")]
    assert dlq.parse_bound("12") == 12 and isinstance(dlq.parse_bound("2h"), datetime)
    # a key cut to fit the dead-letter topic cannot be restored: not replayable either
    long_key = dlq.Letter(0, 5, b"k" * MAX_DEAD_LETTER_KEY_BYTES, [], xs[0].body)
    short_key = dlq.Letter(0, 6, b"k" * 10, [], xs[0].body)
    p = dlq.plan([long_key, short_key], set())
    assert ([x.name for x in p.replay], [x.name for x in p.truncated]) == (["0:6"], ["0:5"])


def test_a_letter_is_named_partition_colon_offset_or_by_its_offset_on_one_partition() -> None:
    assert dlq.parse_letter("2:41", partitions=3) == (2, 41)
    assert dlq.parse_letter("41", partitions=1) == (0, 41)
    assert dlq.parse_letter(" 0:7 ", partitions=1) == (0, 7)
    for bad, partitions in (("41", 3), ("x:1", 3), ("1:", 3), ("-1:2", 3), ("", 1)):
        with pytest.raises(ValueError):
            dlq.parse_letter(bad, partitions=partitions)
