"""Time-based (``max_wait``) triggers are exactly once under SIGKILL, on the real broker.

A domain with ``max_wait: 3s`` gets a few units per window, and no more input: only time makes its
trigger. The worker is killed with SIGKILL at a different moment of each window (well before the
due time, about when the tick commits, just after it) and a new one is started. Every window must
end with exactly one ``max_wait`` trigger (never none, never two), with the next sequence, whose
range covers exactly that window's units.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.api.publisher import FeedbackPublisher
from pipeline.kafka.broker import Broker
from pipeline.tenants import load_tenants
from tests.kafka_helpers import read_until
from tests.stacks import Stack, own_stack

pytestmark = pytest.mark.slow
DOMAIN = "mw_wait"
MAX_WAIT_S = 3.0
#: when, after the window's units are counted, the worker is killed
KILL_AFTER_S = (1.0, 2.9, 3.3, 4.5)


@pytest.fixture
def stack(broker: Broker, service_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    extra = {DOMAIN: {"threshold": 1000, "max_wait": f"{MAX_WAIT_S:g}s"}}
    with own_stack(broker, service_env, tmp_path, "mw", {"stream": extra}) as s:
        yield s


def items(seeker: str) -> list[dict[str, Any]]:
    return [
        {"seeker_id": seeker, "candidate_id": "bob", "outcome": "accepted"},
        {"seeker_id": seeker, "candidate_id": "carl", "outcome": "rejected"},
        {"seeker_id": seeker, "candidate_id": "dan", "outcome": "rejected"},
    ]  # two triplets: bob > carl, bob > dan


def of_events(event_ids: list[str]) -> Callable[[Any], bool]:
    wanted = {e.encode() for e in event_ids}
    return lambda rec: any(e in rec.value for e in wanted)


def within(r: dict[str, Any]) -> Callable[[Any], bool]:
    return lambda rec: rec.partition == r["partition"] and r["start_offset"] <= rec.offset <= r["end_offset"]


async def test_one_max_wait_trigger_per_window_whatever_the_kill(stack: Stack) -> None:
    pub = FeedbackPublisher(stack.bootstrap, load_tenants(stack.tenants), "stream", settings=stack.settings)
    worker = stack.worker()
    window_units: list[set[int]] = []  # offsets of each window's units on feedback.triplets
    try:
        async with pub:
            for window, kill_after in enumerate(KILL_AFTER_S, start=1):
                seeker = f"s{window}-{uuid.uuid4().hex[:4]}"
                res = await pub.publish({"domain": DOMAIN, "items": items(seeker)})
                units = await read_until(
                    stack.bootstrap, stack.names.triplets, of_events(res.event_ids), count=2
                )
                window_units.append({u.offset for u in units})
                await asyncio.sleep(kill_after)  # from when the units are counted (and written)
                worker.kill()
                worker = stack.worker()
                triggers = await read_until(
                    stack.bootstrap,
                    stack.names.triggers,
                    lambda r: orjson.loads(r.value)["domain"] == DOMAIN,
                    count=window,
                    timeout_s=60,
                    settle_s=MAX_WAIT_S + 2.0,  # time enough for a second trigger, if there were one
                )
                got = [orjson.loads(t.value) for t in triggers]
                assert [t["sequence"] for t in got] == list(range(1, window + 1)), got
    finally:
        worker.stop()

    assert all(t["reason"] == "max_wait" for t in got)
    assert len({t["trigger_id"] for t in got}) == len(got)
    for trigger, offsets in zip(got, window_units, strict=True):
        r = trigger["range"]
        in_range = await read_until(
            stack.bootstrap, stack.names.triplets, within(r), count=trigger["count"], timeout_s=10
        )
        mine = {u.offset for u in in_range if orjson.loads(u.value)["domain"] == DOMAIN}
        assert mine == offsets and trigger["count"] == len(offsets) == 2
