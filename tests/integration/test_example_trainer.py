"""``examples/trainer.py`` on the real broker: after a crossing whose range also holds another
domain's units, the snapshot holds exactly the range's units of the trigger's domain (less an
erased entry's), its manifest's sha256 matches, a restart skips it, and ``--report`` makes
``GET /v1/domains/{domain}`` show the training."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.api.intake import erasure_record
from pipeline.api.publisher import FeedbackPublisher
from pipeline.kafka.broker import Broker
from pipeline.kafka.partitioner import default_partition
from pipeline.procs import free_port, ingest_service
from pipeline.tenants import load_tenants
from tests.http_helpers import get
from tests.kafka_helpers import produce, read_until
from tests.stacks import Stack, own_stack

pytestmark = pytest.mark.slow
DOMAIN = "tr_main"
TRAINER = Path(__file__).resolve().parents[2] / "examples" / "trainer.py"
STREAM_KEY = "fs_stream_key"


def neighbour(partitions: int) -> str:
    """A domain whose units land in the same partition of feedback.triplets as DOMAIN's."""
    want = default_partition(DOMAIN.encode(), partitions)
    return next(
        d for d in (f"tr_other{i}" for i in range(1000)) if default_partition(d.encode(), partitions) == want
    )


@pytest.fixture
def stack(broker: Broker, service_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    extra = {DOMAIN: {"threshold": 3}, neighbour(4): {"threshold": 1000}}
    with own_stack(broker, service_env, tmp_path, "tr", {"stream": extra}) as s:
        yield s


async def trainer(stack: Stack, out: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(TRAINER),
        "--bootstrap",
        stack.bootstrap,
        "--prefix",
        stack.settings.topic_prefix,
        "--out",
        str(out),
        "--once",
        "--idle-exit",
        "3",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    text, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, text.decode()
    return text.decode()


def seeker_items(seeker: str) -> list[dict[str, Any]]:
    return [
        {"seeker_id": seeker, "candidate_id": "bob", "outcome": "accepted"},
        {"seeker_id": seeker, "candidate_id": "carl", "outcome": "rejected"},
    ]


async def range_units(stack: Stack, trigger: dict[str, Any]) -> list[dict[str, Any]]:
    r = trigger["range"]
    tp = TopicPartition(r["topic"], r["partition"])
    c = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, isolation_level="read_committed")
    await c.start()
    try:
        c.assign([tp])
        c.seek(tp, r["start_offset"])
        out = []
        while await c.position(tp) <= r["end_offset"]:
            for rec in (await c.getmany(tp, timeout_ms=500)).get(tp, []):
                if rec.offset <= r["end_offset"]:
                    out.append(orjson.loads(rec.value))
        return out
    finally:
        await c.stop()


async def test_the_trainer_snapshots_exactly_a_triggers_units_once_and_reports_back(
    stack: Stack, tmp_path: Path
) -> None:
    other = neighbour(stack.settings.topic_partitions)
    pub = FeedbackPublisher(stack.bootstrap, load_tenants(stack.tenants), "stream", settings=stack.settings)
    worker = stack.worker()
    ingest = ingest_service(stack.env, free_port(), stack.log_dir).start()
    try:
        ingest.wait_ready()
        async with pub:
            erased_event = ""
            for n, domain in enumerate([DOMAIN, other, DOMAIN, other, DOMAIN]):  # 1 unit each
                res = await pub.publish(
                    {"domain": domain, "items": seeker_items(f"s{n}-{uuid.uuid4().hex[:4]}")}
                )
                if n == 2:
                    erased_event = res.event_ids[0]
                # counted before the next is sent: events of other seekers go through other
                # partitions of the expand stage, so without this the order of the units (and
                # whether the foreign ones fall inside the range) is up to the workers' timing
                events = set(res.event_ids)
                await read_until(
                    stack.bootstrap,
                    stack.names.triplets,
                    lambda r, events=events: orjson.loads(r.value)["event_id"] in events,  # type: ignore[misc]
                    timeout_s=60,
                )
        [rec] = await read_until(stack.bootstrap, stack.names.triggers, lambda r: True, timeout_s=60)
        trigger = orjson.loads(rec.value)
        assert (trigger["domain"], trigger["count"], trigger["sequence"]) == (DOMAIN, 3, 1)
        in_range = await range_units(stack, trigger)
        assert {u["domain"] for u in in_range} == {DOMAIN, other}  # the range holds foreign units too
        # erase one of the range's entries (as DELETE /api/v1/feedback/{id} would)
        erasure = erasure_record(
            stack.names.erasures,
            tenant="stream",
            entry_id=erased_event,
            task_id=DOMAIN,
            request_id="r",
            correlation_id="c",
        )
        await produce(stack.bootstrap, stack.names.erasures, erasure.value, key=erasure.key)

        out = tmp_path / "snapshots"
        url = ingest.health_url.removesuffix("/healthz")
        first = await trainer(stack, out, "--report", url, "--key", STREAM_KEY)
        manifest = json.loads((out / f"{DOMAIN}-000001.manifest.json").read_text())
        assert "snapshot tr_main-000001.parquet: 2 units" in first
        expected = [u for u in in_range if u["domain"] == DOMAIN and u["event_id"] != erased_event]
        table = pq.read_table(out / manifest["file"]).to_pylist()
        assert [json.loads(row["unit"]) for row in table] == expected
        assert manifest["trigger_id"] == trigger["trigger_id"] and manifest["range"] == trigger["range"]
        assert manifest["units"] == 2 and manifest["dropped"] == {
            "other_domains": sum(u["domain"] != DOMAIN for u in in_range),
            "duplicates": 0,
            "erased": 1,
        }
        assert manifest["sha256"] == hashlib.sha256((out / manifest["file"]).read_bytes()).hexdigest()

        # a restart of the same group has nothing to do; another group finds the manifest and skips
        assert "snapshot" not in await trainer(stack, out)
        again = await trainer(stack, out, "--group", "another-trainer")
        assert "skip tr_main #1: already snapshotted" in again
        assert sorted(p.name for p in out.iterdir()) == [
            "tr_main-000001.manifest.json",
            "tr_main-000001.parquet",
            "tr_main-000001.training.json",  # the ingest's answer to the report: not sent again
        ]

        # JSON lines without pyarrow (forced here): the same units
        jsonl = tmp_path / "jsonl"
        await trainer(stack, jsonl, "--group", "jsonl-trainer", "--format", "jsonl")
        lines = [json.loads(x) for x in (jsonl / "tr_main-000001.jsonl").read_text().splitlines()]
        assert [{k: v for k, v in x.items() if k != "offset"} for x in lines] == expected

        # one trigger handed over (an Argo Events Job): the same snapshot, no consumer group
        handed = tmp_path / "handed"
        await trainer(stack, handed, "--trigger", rec.value.decode())
        again_manifest = json.loads((handed / f"{DOMAIN}-000001.manifest.json").read_text())
        assert again_manifest["sha256"] == manifest["sha256"]

        # the report reached the ingest: GET /v1/domains shows it
        for _ in range(50):
            status, state = await get(ingest, f"/v1/domains/{DOMAIN}", key=STREAM_KEY)
            if state.get("last_training"):
                break
            await asyncio.sleep(0.2)
        assert status == 200 and state["last_training"]["trigger_id"] == trigger["trigger_id"]
        assert state["last_training"]["metrics"] == {"units": 2.0}
        snapshot_status = json.loads(await stack.feedstream("status", "--json"))
        [row] = [d for d in snapshot_status["domains"] if d["domain"] == DOMAIN]
        assert row["last_training"]["sequence"] == 1
    finally:
        ingest.stop()
        worker.stop()
