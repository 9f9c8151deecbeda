"""examples/trainer.py's report, without Kafka: a trigger snapshotted by a run whose report then
failed (ingest away, crash) is reported by the next run, which finds the manifest; a report that
went through is not sent again."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq  # type: ignore[import-untyped]
from aiohttp import web
from aiohttp.test_utils import TestServer

from pipeline.rules.counters import trigger_id
from tests.unit.test_recipes import trainer_module

TRIGGER: dict[str, Any] = {
    "trigger_id": trigger_id("dating", 1),
    "domain": "dating",
    "reason": "threshold",
    "count": 2,
    "threshold": 2,
    "sequence": 1,
    "range": {"topic": "feedback.triplets", "partition": 0, "start_offset": 0, "end_offset": 1},
    "emitted_at": "2026-11-27T01:00:00Z",
}


def args(url: str) -> argparse.Namespace:
    parsed: argparse.Namespace = (
        trainer_module().parser().parse_args(["--out", "unused", "--report", url, "--key", "k"])
    )
    return parsed


async def test_a_report_lost_after_the_snapshot_is_sent_by_the_next_run(tmp_path: Path) -> None:
    trainer = trainer_module()
    # a run that wrote the snapshot and its manifest, then died before (or while) reporting
    manifest = {"trigger_id": TRIGGER["trigger_id"], "units": 2, "sha256": "ab" * 32, "file": "x.parquet"}
    trainer.write_durably(trainer.manifest_path(tmp_path, TRIGGER), json.dumps(manifest).encode())

    reports: list[dict[str, Any]] = []

    async def trainings(request: web.Request) -> web.Response:
        reports.append(await request.json())
        return web.json_response({"training_id": "t-1", **reports[-1]}, status=201)

    app = web.Application()
    app.router.add_post("/v1/domains/{domain}/trainings", trainings)
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        await trainer.handle(args(url), tmp_path, TRIGGER, "parquet")
        assert [(r["sequence"], r["trigger_id"]) for r in reports] == [(1, TRIGGER["trigger_id"])]
        assert reports[0]["model_version"] == f"example-{'ab' * 6}"  # from the manifest: the same id
        # reported (and remembered durably): the next run skips the trigger and the report
        await trainer.handle(args(url), tmp_path, TRIGGER, "parquet")
        assert len(reports) == 1


def test_an_empty_snapshot_has_the_same_columns() -> None:
    """Every unit of a range can be erased: its Parquet snapshot still has the columns a reader
    selects, not an empty schema."""
    trainer = trainer_module()
    unit = {"unit_id": "u", "kind": "triplet", "event_id": "e", "domain": "d"}
    full = pq.read_table(io.BytesIO(trainer.snapshot_bytes([(3, unit)], "parquet")))
    empty = pq.read_table(io.BytesIO(trainer.snapshot_bytes([], "parquet")))
    assert empty.num_rows == 0 and empty.schema == full.schema
    assert full.column_names == ["offset", "unit_id", "kind", "event_id", "unit"]
