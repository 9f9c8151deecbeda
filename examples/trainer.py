"""An example trainer: turn each train trigger into a training snapshot, exactly once.

Copy it and replace ``train()`` with your fine-tuning job. It needs only aiokafka (and pyarrow for
Parquet; without it the snapshot is JSON lines)::

    python examples/trainer.py --out snapshots/            # follow train.triggers
    python examples/trainer.py --out snapshots/ --once     # the triggers waiting now, then exit

For each trigger on ``train.triggers`` (a consumer group, read_committed, offsets committed by hand):

1. read exactly the trigger's range of ``feedback.triplets`` (one partition, offsets inclusive): it
   may hold other domains' units and transaction markers, so keep ``domain == trigger.domain``,
   de-duplicate by ``unit_id`` (a replayed unit keeps its id) and drop the units of erased entries
   (``feedback.erasures``: ``event_id`` is an erased ``entry_id``);
2. write the snapshot and then its manifest (trigger, range, counts, sha256 of the snapshot), each
   durably (a temporary file, fsync, rename, fsync of the directory);
3. only then commit the trigger's offset. A crash before the commit re-reads the trigger; its
   manifest exists, so it is skipped (and committed): a trigger is snapshotted once;
4. optionally train, and report the result to ``POST /v1/domains/{domain}/trainings``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

try:  # Parquet when pyarrow is there, JSON lines otherwise
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - exercised where pyarrow is absent
    pa = pq = None


def consumer(bootstrap: str, **options: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False, **options
    )


async def read_range(bootstrap: str, trigger: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """Every record of the trigger's range as (offset, unit), all domains, in order. A range no
    longer all on the topic (retention, deleted records) raises ``OffsetOutOfRangeError``: with the
    default reset the consumer would jump to the end and return a shorter range without a word."""
    r = trigger["range"]
    tp = TopicPartition(r["topic"], r["partition"])
    c = consumer(bootstrap, auto_offset_reset="none")
    await c.start()
    try:
        c.assign([tp])
        c.seek(tp, r["start_offset"])
        out: list[tuple[int, dict[str, Any]]] = []
        while await c.position(tp) <= r["end_offset"]:
            for rec in (await c.getmany(tp, timeout_ms=1000)).get(tp, []):
                if rec.offset <= r["end_offset"] and rec.value is not None:
                    out.append((rec.offset, json.loads(rec.value)))
        return out
    finally:
        await c.stop()


async def erased_entries(bootstrap: str, topic: str) -> set[str]:
    """The entry ids erased so far (``feedback.erasures``, read to its current end)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)  # a consumer knows only subscribed topics
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    c = consumer(bootstrap)
    await c.start()
    try:
        tps = [TopicPartition(topic, p["partition"]) for p in described.get("partitions", [])]
        if not tps:
            return set()
        c.assign(tps)
        ends = await c.end_offsets(tps)
        for tp, start in (await c.beginning_offsets(tps)).items():
            c.seek(tp, start)  # explicit offsets: seek_to_beginning can lose to the offset reset
        erased: set[str] = set()
        while [tp for tp in tps if await c.position(tp) < ends[tp]]:
            for records in (await c.getmany(*tps, timeout_ms=1000)).values():
                erased.update(json.loads(rec.value)["entry_id"] for rec in records if rec.value)
        return erased
    finally:
        await c.stop()


def select_units(
    trigger: dict[str, Any], records: list[tuple[int, dict[str, Any]]], erased: set[str]
) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, int]]:
    """The trigger's domain's units, once each, without erased entries; and what was dropped."""
    kept: list[tuple[int, dict[str, Any]]] = []
    seen: set[str] = set()
    dropped = Counter[str]()
    for offset, unit in records:
        if unit.get("domain") != trigger["domain"]:
            dropped["other_domains"] += 1
        elif unit["unit_id"] in seen:
            dropped["duplicates"] += 1
        elif unit.get("event_id") in erased:
            dropped["erased"] += 1
        else:
            seen.add(unit["unit_id"])
            kept.append((offset, unit))
    return kept, {k: dropped.get(k, 0) for k in ("other_domains", "duplicates", "erased")}


def write_durably(path: Path, data: bytes) -> None:
    """``data`` at ``path`` or nothing: a temporary file, fsync, rename, fsync of the directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def snapshot_bytes(units: list[tuple[int, dict[str, Any]]], fmt: str) -> bytes:
    """Parquet: one row per unit (offset, unit_id, kind, event_id, the unit as JSON, since kinds differ
    in fields); JSON lines: each unit with its offset."""
    if fmt == "jsonl":
        return b"".join(json.dumps({"offset": o, **u}).encode() + b"\n" for o, u in units)
    assert pa is not None and pq is not None
    rows = [
        {
            "offset": o,
            "unit_id": u["unit_id"],
            "kind": u["kind"],
            "event_id": u.get("event_id"),
            "unit": json.dumps(u),
        }
        for o, u in units
    ]
    schema = pa.schema(  # explicit: a range whose units were all erased still has the columns
        [
            ("offset", pa.int64()),
            ("unit_id", pa.string()),
            ("kind", pa.string()),
            ("event_id", pa.string()),
            ("unit", pa.string()),
        ]
    )
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
    return bytes(sink.getvalue().to_pybytes())


def snapshot(
    trigger: dict[str, Any], records: list[tuple[int, dict[str, Any]]], erased: set[str], out: Path, fmt: str
) -> dict[str, Any]:
    """Write the trigger's snapshot and manifest (in that order, each durable); the manifest."""
    name = f"{trigger['domain']}-{trigger['sequence']:06d}"
    units, dropped = select_units(trigger, records, erased)
    data = snapshot_bytes(units, fmt)
    file = out / f"{name}.{'parquet' if fmt == 'parquet' else 'jsonl'}"
    write_durably(file, data)
    manifest = {
        "trigger_id": trigger["trigger_id"],
        "domain": trigger["domain"],
        "sequence": trigger["sequence"],
        "reason": trigger["reason"],
        "range": trigger["range"],
        "units": len(units),
        "by_kind": dict(Counter(u["kind"] for _, u in units)),
        "dropped": dropped,
        "file": file.name,
        "format": fmt,
        "sha256": hashlib.sha256(data).hexdigest(),
        "written_at": datetime.now(UTC).isoformat(),
    }
    write_durably(out / f"{name}.manifest.json", json.dumps(manifest, indent=2).encode())
    return manifest


def manifest_path(out: Path, trigger: dict[str, Any]) -> Path:
    return out / f"{trigger['domain']}-{trigger['sequence']:06d}.manifest.json"


def training_path(out: Path, trigger: dict[str, Any]) -> Path:
    """The ingest's answer to the trigger's report: present once the report went through."""
    return out / f"{trigger['domain']}-{trigger['sequence']:06d}.training.json"


async def report(url: str, key: str, trigger: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """Tell feedstream the trigger was trained on (here: the snapshot is the "model"); its answer.
    The model version comes from the manifest, so a report sent again names the same training."""
    body = {
        "sequence": trigger["sequence"],
        "trigger_id": trigger["trigger_id"],
        "model_version": f"example-{manifest['sha256'][:12]}",
        "metrics": {"units": float(manifest["units"])},
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/v1/domains/{trigger['domain']}/trainings",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as resp,
    ):
        if resp.status not in (200, 201):
            raise RuntimeError(f"report refused: {resp.status} {await resp.text()}")
        answer: dict[str, Any] = await resp.json()
        return answer


async def handle(args: argparse.Namespace, out: Path, trigger: dict[str, Any], fmt: str) -> None:
    """Snapshot one trigger unless its manifest exists (then say so); report it unless its report
    went through before (a run that died between the snapshot and the report left it to this one)."""
    if manifest_path(out, trigger).exists():
        manifest = json.loads(manifest_path(out, trigger).read_text())
        print(f"skip {trigger['domain']} #{trigger['sequence']}: already snapshotted")
    else:
        erased = await erased_entries(args.bootstrap, args.prefix + "feedback.erasures")
        manifest = snapshot(trigger, await read_range(args.bootstrap, trigger), erased, out, fmt)
        print(f"snapshot {manifest['file']}: {manifest['units']} units, sha256 {manifest['sha256']}")
    if args.report and not training_path(out, trigger).exists():
        answer = await report(args.report, args.key, trigger, manifest)
        write_durably(training_path(out, trigger), json.dumps(answer, indent=2).encode())
        print(f"reported {trigger['domain']} #{trigger['sequence']}: {answer.get('training_id')}")


async def run(args: argparse.Namespace, out: Path) -> int:
    fmt = args.format or ("parquet" if pq is not None else "jsonl")
    c = consumer(args.bootstrap, group_id=args.group, auto_offset_reset="earliest")
    c.subscribe([args.prefix + "train.triggers"])
    await c.start()
    done = 0
    idle_since = asyncio.get_running_loop().time()
    try:
        while args.max_triggers is None or done < args.max_triggers:
            batch = await c.getmany(timeout_ms=500)
            if not batch:
                if (
                    args.idle_exit is not None
                    and asyncio.get_running_loop().time() - idle_since > args.idle_exit
                ):
                    break
                continue
            idle_since = asyncio.get_running_loop().time()
            for tp, records in batch.items():
                for rec in records:
                    await handle(args, out, json.loads(rec.value), fmt)
                    await c.commit({tp: rec.offset + 1})  # after the snapshot is durable
                    done += 1
    finally:
        await c.stop()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    p.add_argument(
        "--prefix", default=os.environ.get("TOPIC_PREFIX", ""), help="the deployment's TOPIC_PREFIX"
    )
    p.add_argument("--group", default="feedstream-trainer", help="consumer group (one per trainer kind)")
    p.add_argument("--out", required=True, help="directory of snapshots and manifests")
    p.add_argument("--format", choices=["parquet", "jsonl"], help="default: parquet if pyarrow is installed")
    p.add_argument("--once", action="store_true", help="exit once no trigger came for 5 s")
    p.add_argument("--idle-exit", type=float, help="exit after this many seconds without a trigger")
    p.add_argument("--max-triggers", type=int, help="exit after this many triggers")
    p.add_argument("--trigger", metavar="JSON", help="snapshot this one trigger (its JSON body) and exit")
    p.add_argument("--report", metavar="URL", help="POST each training result to this ingest")
    p.add_argument("--key", default=os.environ.get("FEEDSTREAM_API_KEY", ""), help="API key for --report")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.once and args.idle_exit is None:
        args.idle_exit = 5.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.trigger:  # one trigger handed over (an Argo Events Sensor's Job): no consumer group
        fmt = args.format or ("parquet" if pq is not None else "jsonl")
        asyncio.run(handle(args, out, json.loads(args.trigger), fmt))
        return 0
    return asyncio.run(run(args, out))


if __name__ == "__main__":
    sys.exit(main())
