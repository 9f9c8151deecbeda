"""``feedstream topics|tenants|train|triggers``: the everyday operator commands beside status and dlq."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.table import Table

from pipeline.api.intake import train_record
from pipeline.ids import canonical_uuid
from pipeline.kafka import topics
from pipeline.kafka.io import bootstrap_list, partitions_of
from pipeline.ops.cli import app
from pipeline.ops.context import connect
from pipeline.ops.reading import consumer, follow_from_end, read_topic
from pipeline.settings import Settings
from pipeline.tenants import TenantsConfigError, hash_api_key, load_tenants
from pipeline.wire.records import StageResult, TrainTrigger, from_json, to_builtins

console = Console()
topics_app = typer.Typer(help="The pipeline's topics: create them, or see them.", no_args_is_help=True)
tenants_app = typer.Typer(help="The tenants file: validate it, hash an API key.", no_args_is_help=True)
triggers_app = typer.Typer(help="Train triggers on train.triggers.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(tenants_app, name="tenants")
app.add_typer(triggers_app, name="triggers")


# --- topics --------------------------------------------------------------------------------------


@topics_app.command("create")
def topics_create() -> None:
    """Create missing topics and bring existing ones' declared configs up to date (idempotent)."""
    settings, bootstrap, _names = connect()
    created = asyncio.run(topics.ensure_topics(bootstrap, settings))
    console.print(f"created: {', '.join(created) or 'nothing (all exist)'}; declared configs are up to date")


async def describe(settings: Settings, bootstrap: str) -> list[dict[str, object]]:
    """Each declared topic: partitions, end offsets, and its declared configs beside the actual ones."""
    names = [settings.topic_prefix + t.name for t in topics.TOPICS]
    parts = await partitions_of(bootstrap, names)
    existing = [n for n in names if parts.get(n)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_list(bootstrap), request_timeout_ms=10_000)
    await admin.start()
    try:
        actual = await topics._describe(admin, existing) if existing else {}
    finally:
        await admin.close()
    c = consumer(bootstrap)
    await c.start()
    try:
        tps = [TopicPartition(n, p) for n in existing for p in parts[n]]
        ends = await c.end_offsets(tps) if tps else {}
    finally:
        await c.stop()
    rows: list[dict[str, object]] = []
    for spec, name in zip(topics.TOPICS, names, strict=True):
        declared = topics.declared_config(spec, settings)
        current = actual.get(name, ({}, {}))[0]
        rows.append(
            {
                "topic": name,
                "exists": name in existing,
                "partitions": len(parts.get(name, [])),
                "end_offsets": sum(v for tp, v in ends.items() if tp.topic == name),
                "declared": declared,
                "drift": {
                    k: current.get(k) for k, v in declared.items() if name in existing and current.get(k) != v
                },
                "doc": spec.doc,
            }
        )
    return rows


@topics_app.command("describe")
def topics_describe(
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """Partitions, end offsets and configs (declared vs actual) of every topic."""
    settings, bootstrap, _names = connect()
    rows = asyncio.run(describe(settings, bootstrap))
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table(title=f"topics on {bootstrap}")
    for col in ("topic", "partitions", "end offsets", "max.message.bytes", "retention / cleanup", "drift"):
        table.add_column(col)
    for r in rows:
        declared = r["declared"]
        assert isinstance(declared, dict)
        keep = declared.get("cleanup.policy") or f"retention {declared.get('retention.ms', 'default')} ms"
        drift = r["drift"]
        table.add_row(
            str(r["topic"]),
            str(r["partitions"]) if r["exists"] else "missing",
            str(r["end_offsets"]),
            str(declared["max.message.bytes"]),
            str(keep),
            ", ".join(f"{k}={v}" for k, v in drift.items()) if isinstance(drift, dict) and drift else "",
        )
    console.print(table)


# --- tenants -------------------------------------------------------------------------------------


@tenants_app.command("check")
def tenants_check(file: Annotated[Path, typer.Argument(help="The tenants file (YAML).")]) -> None:
    """Validate a tenants file: every problem is listed, exit status 1 if any."""
    try:
        registry = load_tenants(file)
    except TenantsConfigError as err:
        print(err, file=sys.stderr)
        raise typer.Exit(1) from None
    names = ", ".join(t.id for t in registry.tenants)
    print(f"{file}: ok, {len(registry)} tenant(s): {names}")


@tenants_app.command("hash-key")
def tenants_hash_key(key: Annotated[str, typer.Argument(help="The plain API key.")]) -> None:
    """Print the stored form of an API key (``sha256:<hex>``) for the tenants file."""
    print(hash_api_key(key))


# --- train ---------------------------------------------------------------------------------------


async def train(settings: Settings, bootstrap: str, domain: str, wait_s: float) -> StageResult | None:
    """What ``POST /v1/train`` does, as the operator: a ``TrainRequest`` to the count stage (written
    once, acked by all replicas), then its result from ``feedback.results`` (None if none in time)."""
    registry = load_tenants(settings.tenants_file)
    domain = canonical_uuid(domain) or domain  # a task id as the stream keys it (as POST /v1/train)
    owner = registry.owner_of(domain)
    if owner is None and domain != settings.shared_pool_domain:
        raise typer.BadParameter(f"no tenant owns domain '{domain}' ({settings.tenants_file})")
    names = topics.topic_names(settings)
    request_id = f"ops-{uuid.uuid4()}"
    record = train_record(
        names.units,
        request_id=request_id,
        tenant=owner or "",
        domain=domain,
        requested_at=datetime.now(UTC),
    )
    # the results' end before writing, so the answer cannot slip past the read
    c = consumer(bootstrap)
    await c.start()
    try:
        await follow_from_end(c, bootstrap, names.results)
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_list(bootstrap), acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            await producer.send_and_wait(record.topic, record.value, key=record.key, headers=record.headers)
        finally:
            await producer.stop()
        deadline = asyncio.get_running_loop().time() + wait_s
        while asyncio.get_running_loop().time() < deadline:
            for records in (await c.getmany(timeout_ms=200)).values():
                for rec in records:
                    if rec.key == request_id.encode():
                        return from_json(StageResult, rec.value)
        return None
    finally:
        await c.stop()


@app.command("train")
def train_command(
    domain: Annotated[str, typer.Argument(help="The domain (or task id) to train now.")],
    wait: Annotated[float, typer.Option(help="Seconds to wait for the count stage's answer.")] = 10.0,
) -> None:
    """Force a train trigger over everything pending (the manual trigger of POST /v1/train)."""
    settings, bootstrap, _names = connect()
    result = asyncio.run(train(settings, bootstrap, domain, wait))
    if result is None:
        console.print(f"requested; no answer from the count stage within {wait:.0f} s (is a worker running?)")
        raise typer.Exit(2)
    if not result.triggers:
        console.print(f"nothing pending in '{result.domain}': no trigger (pending {result.pending})")
        return
    console.print_json(json.dumps(to_builtins(result.triggers[0])))


# --- triggers tail -------------------------------------------------------------------------------


def _line(t: TrainTrigger) -> str:
    r = t.range
    return (
        f"{t.emitted_at:%Y-%m-%d %H:%M:%S}  {t.domain}  #{t.sequence}  {t.reason}  {t.count} units  "
        f"{r.topic}[{r.partition}] {r.start_offset}..{r.end_offset}  {t.trigger_id}"
    )


@triggers_app.command("tail")
def triggers_tail(
    domain: Annotated[str | None, typer.Option(help="Only this domain's triggers.")] = None,
    n: Annotated[int, typer.Option("-n", help="Show the last N triggers first (0: none).")] = 10,
    from_beginning: Annotated[bool, typer.Option(help="Show every trigger kept on the topic.")] = False,
    follow: Annotated[bool, typer.Option(help="Keep printing new triggers until Ctrl-C.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Print the last triggers (read_committed), then follow new ones with ``--follow``."""
    _settings, bootstrap, names = connect()
    show: Callable[[TrainTrigger], None] = (
        (lambda t: typer.echo(json.dumps(to_builtins(t)))) if as_json else (lambda t: typer.echo(_line(t)))
    )

    def wanted(t: TrainTrigger) -> bool:
        return domain is None or t.domain == domain

    async def go() -> None:
        kept: list[TrainTrigger] = []
        async for rec in read_topic(bootstrap, names.triggers):
            t = from_json(TrainTrigger, rec.value)
            if wanted(t):
                kept.append(t)
        kept.sort(key=lambda t: t.emitted_at)
        for t in kept if from_beginning else kept[-n:] if n > 0 else []:
            show(t)
        if not follow:
            return
        c = consumer(bootstrap)
        await c.start()
        try:
            await follow_from_end(c, bootstrap, names.triggers)
            while True:
                for records in (await c.getmany(timeout_ms=1000)).values():
                    for rec in records:
                        t = from_json(TrainTrigger, rec.value)
                        if wanted(t):
                            show(t)
        finally:
            await c.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(go())
