"""``feedstream dlq``: list, show and replay dead letters (exactly once per dead letter).

A replay writes a dead letter's original bytes, key and headers back to the topic it came from (the
stage's input, same partition), with ``feedstream.replay.of: <partition>:<offset>``, and in the SAME
Kafka transaction a ``DlqReplay`` marker keyed by the dead letter on ``feedback.dlq.replays``. The
replayer has one fixed transactional id: starting it fences (and aborts) any replay still running,
and only then are the markers read (read_committed), so a dead letter with a marker was replayed
once and is never replayed again; one without was not replayed at all.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from pipeline.kafka.io import bootstrap_list, partitions_of
from pipeline.kafka.topics import TopicNames
from pipeline.ops.cli import app
from pipeline.ops.context import connect
from pipeline.ops.reading import parse_time, read_topic
from pipeline.settings import Settings
from pipeline.wire.records import (
    MAX_DEAD_LETTER_KEY_BYTES,
    REPLAY_HEADER,
    DeadLetter,
    DlqReplay,
    dlq_replay_key,
    from_json,
    original_headers,
    to_builtins,
    to_json,
)

dlq_app = typer.Typer(
    help="Dead letters: list, show, replay (exactly once per dead letter).", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")
console = Console()
#: Dead letters replayed per transaction.
REPLAY_CHUNK = 200


@dataclass(frozen=True)
class Letter:
    """A dead letter as read from ``feedback.dlq``: where it is, its key and headers, its body."""

    partition: int
    offset: int
    key: bytes | None
    headers: list[tuple[str, bytes]]
    body: DeadLetter

    @property
    def coord(self) -> tuple[int, int]:
        return self.partition, self.offset

    @property
    def name(self) -> str:
        return f"{self.partition}:{self.offset}"


@dataclass
class Plan:
    """What a replay of a selection does: replay these, skip those (already replayed, or their
    original or key was cut to fit the dead-letter topic, so it cannot be restored)."""

    replay: list[Letter] = field(default_factory=list)
    already: list[Letter] = field(default_factory=list)
    truncated: list[Letter] = field(default_factory=list)


Bound = int | datetime | None


def parse_bound(text: str | None) -> Bound:
    """``--from``/``--to``: an offset (digits) or a time (ISO 8601, or an age such as ``2h``)."""
    if text is None:
        return None
    return int(text) if text.strip().isdigit() else parse_time(text)


def select(
    letters: Sequence[Letter],
    *,
    stage: str | None = None,
    reason: str | None = None,
    start: Bound = None,
    end: Bound = None,
    partition: int | None = None,
) -> list[Letter]:
    """The letters matching every filter; offsets bound each partition, times bound ``failed_at``
    (both ends inclusive)."""

    def value(letter: Letter, bound: int | datetime) -> Any:
        return letter.body.failed_at if isinstance(bound, datetime) else letter.offset

    def within(letter: Letter) -> bool:
        return (start is None or value(letter, start) >= start) and (end is None or value(letter, end) <= end)

    return [
        x
        for x in letters
        if (stage is None or x.body.stage == stage)
        and (reason is None or x.body.reason == reason)
        and (partition is None or x.partition == partition)
        and within(x)
    ]


def plan(selected: Sequence[Letter], replayed: set[tuple[int, int]]) -> Plan:
    out = Plan()
    for letter in selected:
        if letter.coord in replayed:
            out.already.append(letter)
        elif letter.body.original_truncated or key_cut(letter):
            out.truncated.append(letter)
        else:
            out.replay.append(letter)
    return out


def key_cut(letter: Letter) -> bool:
    """Whether the letter's key may be the head of a longer original key (the runtime cuts keys to
    ``MAX_DEAD_LETTER_KEY_BYTES``; one of exactly that length may or may not have been cut)."""
    return letter.key is not None and len(letter.key) >= MAX_DEAD_LETTER_KEY_BYTES


def parse_letter(text: str, *, partitions: int) -> tuple[int, int]:
    """``PARTITION:OFFSET`` as ``dlq ls`` prints it; a bare ``OFFSET`` only when the dead-letter topic
    has one partition (else it would be ambiguous)."""
    parts = text.strip().split(":")
    if len(parts) == 1 and partitions == 1:
        parts = ["0", *parts]
    if len(parts) != 2 or not all(x.isdigit() for x in parts):
        raise ValueError(
            f"not a dead letter's name: {text!r} (PARTITION:OFFSET, e.g. 2:41"
            + (", or the offset alone)" if partitions == 1 else f"; the topic has {partitions} partitions)")
        )
    return int(parts[0]), int(parts[1])


def replay_headers(letter: Letter) -> list[tuple[str, bytes]]:
    """The original's headers and the replay header naming the dead letter."""
    return [*original_headers(letter.headers), (REPLAY_HEADER, letter.name.encode())]


async def read_letters(bootstrap: str, names: TopicNames, since: datetime | None = None) -> list[Letter]:
    out = []
    async for rec in read_topic(bootstrap, names.dlq, since=since):
        out.append(
            Letter(rec.partition, rec.offset, rec.key, list(rec.headers), from_json(DeadLetter, rec.value))
        )
    out.sort(key=lambda x: (x.body.failed_at, x.partition, x.offset))
    return out


async def read_replayed(bootstrap: str, names: TopicNames) -> set[tuple[int, int]]:
    done = set()
    async for rec in read_topic(bootstrap, names.dlq_replays):
        if rec.value is not None:
            marker = from_json(DlqReplay, rec.value)
            done.add((marker.dlq_partition, marker.dlq_offset))
    return done


def replayer(settings: Settings, bootstrap: str) -> AIOKafkaProducer:
    """The one transactional producer of replays (a fixed id: a second replay fences the first)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_list(bootstrap),
        transactional_id=f"{settings.worker_id}-dlq-replay",
        enable_idempotence=True,
        acks="all",
        max_request_size=8 * 1024 * 1024,
    )


async def replay(
    settings: Settings,
    bootstrap: str,
    names: TopicNames,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    **filters: Any,
) -> Plan:
    """Replay the selected dead letters not replayed yet; returns what was (or, dry, would be) done."""
    producer = None if dry_run else replayer(settings, bootstrap)
    if producer is not None:
        await producer.start()  # InitProducerId: fences and aborts an earlier replay still open
    try:
        letters = select(await read_letters(bootstrap, names), **filters)
        result = plan(letters, await read_replayed(bootstrap, names))
        if producer is None or not result.replay:
            return result
        topics = {x.body.topic for x in result.replay}
        counts = await partitions_of(bootstrap, sorted(topics))
        task = progress.add_task("replaying", total=len(result.replay)) if progress else None
        for i in range(0, len(result.replay), REPLAY_CHUNK):
            chunk = result.replay[i : i + REPLAY_CHUNK]
            async with producer.transaction():
                now = datetime.now(UTC)
                sent = []
                for letter in chunk:  # the originals, then their markers once all are acknowledged
                    body = letter.body
                    partition = body.partition if body.partition in counts.get(body.topic, []) else None
                    sent.append(
                        await producer.send(
                            body.topic,
                            body.original_bytes(),
                            key=letter.key,
                            partition=partition,
                            headers=replay_headers(letter),
                        )
                    )
                for letter, meta in zip(chunk, await asyncio.gather(*sent), strict=True):
                    marker = DlqReplay(
                        dlq_partition=letter.partition,
                        dlq_offset=letter.offset,
                        stage=letter.body.stage,
                        reason=letter.body.reason,
                        to_topic=letter.body.topic,
                        to_partition=meta.partition,
                        replayed_at=now,
                    )
                    await producer.send(
                        names.dlq_replays,
                        to_json(marker),
                        key=dlq_replay_key(letter.partition, letter.offset),
                    )
            if progress is not None and task is not None:
                progress.advance(task, len(chunk))
        return result
    finally:
        if producer is not None:
            await producer.stop()


# --- the commands --------------------------------------------------------------------------------


def _letters_table(letters: Sequence[Letter], replayed: set[tuple[int, int]], title: str) -> Table:
    table = Table(title=title)
    for col in ("letter", "failed at", "stage", "reason", "original", "error", "replayed"):
        table.add_column(col)
    for x in letters:
        b = x.body
        table.add_row(
            x.name,
            b.failed_at.isoformat(timespec="seconds"),
            b.stage,
            b.reason,
            f"{b.topic}[{b.partition}]@{b.offset}",
            f"{b.error_type}: {b.error}"[:60],
            "yes" if x.coord in replayed else "",
        )
    return table


def _summary(x: Letter, replayed: set[tuple[int, int]]) -> dict[str, Any]:
    return {
        "letter": x.name,
        **to_builtins(x.body),
        "original": None,  # `dlq show` gives it
        "replayed": x.coord in replayed,
    }


StageOpt = Annotated[str | None, typer.Option(help="Only this stage's letters (expand, count).")]
ReasonOpt = Annotated[
    str | None, typer.Option(help="Only this reason: schema_violation, processing_failure, size_violation.")
]


@dlq_app.command("ls")
def ls(
    stage: StageOpt = None,
    reason: ReasonOpt = None,
    since: Annotated[
        str | None, typer.Option(help="From this time: ISO 8601 or an age (30m, 2h, 1d).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Show the newest N matching letters.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines for scripts.")] = False,
) -> None:
    """List dead letters, oldest first (the newest ``--limit``)."""
    _settings, bootstrap, names = connect()

    async def go() -> tuple[list[Letter], set[tuple[int, int]]]:
        start = parse_time(since) if since else None
        letters = select(await read_letters(bootstrap, names, since=start), stage=stage, reason=reason)
        return letters[-limit:] if limit > 0 else letters, await read_replayed(bootstrap, names)

    letters, replayed = asyncio.run(go())
    if as_json:
        for x in letters:
            typer.echo(json.dumps(_summary(x, replayed), default=str))
        return
    console.print(_letters_table(letters, replayed, f"{names.dlq}: {len(letters)} dead letters"))


@dlq_app.command("show")
def show(
    letter: Annotated[
        str,
        typer.Argument(
            help="PARTITION:OFFSET of the dead letter (as `dlq ls` shows); "
            "OFFSET alone if the topic has one partition."
        ),
    ],
) -> None:
    """One dead letter: its body, its headers and the original (as text when it is)."""
    _settings, bootstrap, names = connect()
    count = len(asyncio.run(partitions_of(bootstrap, [names.dlq])).get(names.dlq, []))
    try:
        partition, offset = parse_letter(letter, partitions=count)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    async def go() -> tuple[Letter | None, set[tuple[int, int]]]:
        async for rec in read_topic(bootstrap, names.dlq, start_offset=offset):
            if (rec.partition, rec.offset) == (partition, offset):
                body = from_json(DeadLetter, rec.value)
                return Letter(partition, offset, rec.key, list(rec.headers), body), await read_replayed(
                    bootstrap, names
                )
        return None, set()

    found, replayed = asyncio.run(go())
    if found is None:
        console.print(f"no dead letter at {letter} of {names.dlq}")
        raise typer.Exit(1)
    out = {**to_builtins(found.body), "original": None, "replayed": found.coord in replayed}
    console.print_json(json.dumps(out, default=str))
    console.print("headers:")
    for k, v in found.headers:
        console.print(f"  {k}: {v.decode('utf-8', 'backslashreplace')}")
    original = found.body.original_bytes()
    cut = ", truncated" if found.body.original_truncated else ""
    console.print(f"original ({found.body.original_size} bytes{cut}):")
    try:
        console.print_json(original.decode())
    except ValueError:
        console.print(repr(original[:4096]))


@dlq_app.command("replay")
def replay_command(
    stage: StageOpt = None,
    reason: ReasonOpt = None,
    partition: Annotated[
        int | None, typer.Option(help="Only this partition of the dead-letter topic.")
    ] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="From this offset (each partition) or time (ISO, or 2h).")
    ] = None,
    end: Annotated[str | None, typer.Option("--to", help="Up to this offset or time (inclusive).")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be replayed; write nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Replay without asking first.")] = False,
) -> None:
    """Write the selected dead letters' originals back to their stage's input, once per dead letter.

    Without ``--yes`` it shows what would go and asks; with no terminal to ask on it refuses.
    """
    settings, bootstrap, names = connect()
    filters: dict[str, Any] = {
        "stage": stage,
        "reason": reason,
        "partition": partition,
        "start": parse_bound(start),
        "end": parse_bound(end),
    }
    if not dry_run and not yes:
        preview = asyncio.run(replay(settings, bootstrap, names, dry_run=True, **filters))
        _report(preview, dry_run=True)
        if not preview.replay:
            return
        if not sys.stdin.isatty():
            console.print("not replaying: no terminal to confirm on; add --yes to replay")
            raise typer.Exit(1)
        if not typer.confirm(f"replay {len(preview.replay)} dead letters?"):
            raise typer.Exit(1)
    with Progress(console=console, transient=True, disable=dry_run) as progress:
        result = asyncio.run(
            replay(settings, bootstrap, names, dry_run=dry_run, progress=progress, **filters)
        )
    _report(result, dry_run=dry_run)


def _report(result: Plan, *, dry_run: bool) -> None:
    verb = "would replay" if dry_run else "replayed"
    if result.replay:
        done = set() if dry_run else {x.coord for x in result.replay}
        console.print(_letters_table(result.replay, done, f"{verb}: {len(result.replay)}"))
    console.print(
        f"selected {len(result.replay) + len(result.already) + len(result.truncated)}, {verb} "
        f"{len(result.replay)}, already replayed {len(result.already)}, not replayable (original "
        f"or key truncated) {len(result.truncated)}"
    )
