"""``feedstream topics|tenants|train|triggers`` on the real broker, run as an operator runs them."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.api.publisher import FeedbackPublisher
from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import TOPICS
from pipeline.tenants import hash_api_key, load_tenants
from tests.conftest import TEST_TENANTS
from tests.stacks import Stack, own_stack

pytestmark = pytest.mark.slow
DOMAIN = "ops_big"


@pytest.fixture
def stack(broker: Broker, service_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    with own_stack(broker, service_env, tmp_path, "ops", {"stream": {DOMAIN: {"threshold": 1000}}}) as s:
        yield s


async def test_help_lists_every_command(stack: Stack) -> None:
    out = await stack.feedstream("--help")
    for command in ("status", "dlq", "topics", "tenants", "train", "triggers"):
        assert command in out


async def test_topics_create_and_describe(stack: Stack) -> None:
    assert "nothing (all exist)" in await stack.feedstream("topics", "create")
    rows = json.loads(await stack.feedstream("topics", "describe", "--json"))
    assert [r["topic"] for r in rows] == [stack.settings.topic_prefix + t.name for t in TOPICS]
    assert all(r["exists"] and r["partitions"] == stack.settings.topic_partitions for r in rows)
    assert all(r["drift"] == {} for r in rows)  # every declared config is in place
    assert "feedback.dlq.replays" in await stack.feedstream("topics", "describe")


async def test_tenants_check_and_hash_key(stack: Stack, tmp_path: Path) -> None:
    assert "ok, " in await stack.feedstream("tenants", "check", str(TEST_TENANTS))
    assert (await stack.feedstream("tenants", "hash-key", "fs_x")).strip() == hash_api_key("fs_x")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenants:\n  - id: x\n    api_keys: [plain-key]\n")
    status, _, err = await stack.run("tenants", "check", str(bad))
    assert status == 1 and "hash the key with: feedstream tenants hash-key KEY" in err


async def test_train_forces_a_trigger_and_triggers_tail_shows_it(stack: Stack) -> None:
    pub = FeedbackPublisher(stack.bootstrap, load_tenants(stack.tenants), "stream", settings=stack.settings)
    worker = stack.worker()
    try:
        assert "nothing pending" in await stack.feedstream("train", DOMAIN)
        seeker = f"s-{uuid.uuid4().hex[:6]}"
        async with pub:
            await pub.publish(
                {
                    "domain": DOMAIN,
                    "items": [
                        {"seeker_id": seeker, "candidate_id": "bob", "outcome": "accepted"},
                        {"seeker_id": seeker, "candidate_id": "carl", "outcome": "rejected"},
                    ],
                }
            )
        for _ in range(100):  # the unit is counted once both stages committed
            status = json.loads(await stack.feedstream("status", "--json"))
            if next(d for d in status["domains"] if d["domain"] == DOMAIN)["pending"] == 1:
                break
            await asyncio.sleep(0.2)
        trigger = json.loads(await stack.feedstream("train", DOMAIN))
        assert (trigger["domain"], trigger["reason"], trigger["count"], trigger["sequence"]) == (
            DOMAIN,
            "manual",
            1,
            1,
        )
        assert "nothing pending" in await stack.feedstream("train", DOMAIN)
        tail = [
            json.loads(x)
            for x in (await stack.feedstream("triggers", "tail", "--json", "-n", "5")).splitlines()
        ]
        assert [t["trigger_id"] for t in tail if t["domain"] == DOMAIN] == [trigger["trigger_id"]]
        line = await stack.feedstream("triggers", "tail", "--domain", DOMAIN)
        assert f"{DOMAIN}  #1  manual  1 units" in line
        task = "7D444840-9DC0-11D1-B245-5FFDCE74FAD2"  # a task id, upper case: canonical, as the ingest
        assert "nothing pending in '7d444840-9dc0-11d1-b245-5ffdce74fad2'" in await stack.feedstream(
            "train", task
        )
        status, _, err = await stack.run("train", "nobody_owns_this")
        assert status == 2 and "no tenant owns domain" in err
    finally:
        worker.stop()
