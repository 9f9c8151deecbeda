"""The JSON Schema (draft 2020-12) of every topic's message value: the contract with consumers.

The schemas are generated from the msgspec types that write the messages and committed under
``schemas/`` (one ``<topic>.schema.json`` per topic of :data:`pipeline.kafka.topics.TOPICS`, plus a
``README.md`` index), so a model change that alters the wire format shows up in review::

    python -m pipeline.wire.schemas write   # regenerate (make schemas)
    python -m pipeline.wire.schemas check   # exit 1 and list the files that drifted

Output is byte-stable: sorted keys, 2-space indent, UTF-8, one trailing newline.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msgspec import Struct

from pipeline.kafka import topics
from pipeline.rules.counters import DomainCounter
from pipeline.rules.triplets import SeekerHistory, StreamClock
from pipeline.settings import REPO_ROOT
from pipeline.wire import records
from pipeline.wire.envelope import RAW_TYPES, RawCodec

__all__ = [
    "DIALECT",
    "ID_BASE",
    "SCHEMA_DIR",
    "TOPIC_SCHEMAS",
    "TopicSchema",
    "drift",
    "file_name",
    "generate",
    "main",
    "render",
    "topic_schema",
    "write",
]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
ID_BASE = "https://feedstream.dev/schemas/"
SCHEMA_DIR = REPO_ROOT / "schemas"
README = "README.md"


def _doc(model: type[Struct]) -> str:
    """The first paragraph of a model's docstring, on one line."""
    doc = (inspect.getdoc(model) or "").replace("``", "`")
    return " ".join(doc.split("\n\n")[0].split())


def _kinds(*models: type[Struct]) -> str:
    """``kind`` (the tag): docstring, for each member of a union."""
    return "; ".join(f"{m.__struct_config__.tag} ({_doc(m).rstrip('.')})" for m in models)


@dataclass(frozen=True)
class TopicSchema:
    """What one topic carries: its value schema, its key, who writes and who reads it."""

    topic: str
    schema: Callable[[], dict[str, Any]]
    value: str
    key: str
    producers: str
    consumers: str


_RECORDS = records.record_json_schemas

TOPIC_SCHEMAS: tuple[TopicSchema, ...] = (
    TopicSchema(
        topics.RAW,
        RawCodec(RAW_TYPES).json_schema,
        "one canonical envelope (pipeline.wire.envelope, schema_version 1): event id (UUIDv7), tenant, "
        "domain, received_at, correlation and request ids, origin (http or publisher) and the "
        "validated payload, discriminated by `contract` (ranking_outcome, correction, "
        "inference_feedback, scored_output, search_event). Headers: correlation_id, request_id, "
        "event_id, contract, tenant. Or one request's envelopes of a contract that keeps no keyed "
        "state in the stream (inference_feedback with several items) as one record: a JSON array of "
        "them, with the same headers but event_id, and `events` (their number)",
        "everything the stream must see in order shares a key: `<domain>/<seeker_id>` "
        "(ranking_outcome), `<domain>/<case_id>` (correction), the inference id "
        "(inference_feedback), `<domain>/<entry_id>` (scored_output), `<domain>/<search anchor>` "
        "with anchor `search:<search_id>`, else `query:<query>`, else `session:<session_id>` "
        "(search_event); an array, its first envelope's key",
        "ingest (HTTP), publisher library",
        "worker (expand stage)",
    ),
    TopicSchema(
        topics.SIGNALS,
        lambda: _RECORDS()[topics.SIGNALS],
        _doc(records.Signal),
        "the key of the raw event (envelope) it came from",
        "worker (expand stage)",
        "dashboards, analytics",
    ),
    TopicSchema(
        topics.TRIPLETS,
        lambda: _RECORDS()[topics.TRIPLETS],
        "one training unit, discriminated by `kind`: "
        + _kinds(records.TripletUnit, records.PreferenceUnit, records.ScoredUnit)
        + ". unit_id is deterministic (a replay rewrites the same id): de-duplicate by unit_id",
        "domain (all units of a domain are in one partition)",
        "worker (count stage)",
        "trainers (ranges named by train.triggers)",
    ),
    TopicSchema(
        topics.TRIGGERS,
        lambda: _RECORDS()[topics.TRIGGERS],
        _doc(records.TrainTrigger)
        + " The range is one partition of feedback.triplets, offsets inclusive; it may also hold "
        "other domains' units and transaction markers, so filter by domain",
        "domain",
        "worker (count stage)",
        "trainers",
    ),
    TopicSchema(
        topics.DLQ,
        lambda: _RECORDS()[topics.DLQ],
        _doc(records.DeadLetter),
        "the key of the failed message (null if it had none)",
        "worker (expand and count stages)",
        "operators (inspect, replay)",
    ),
    TopicSchema(
        topics.UNITS,
        lambda: _RECORDS()[topics.UNITS],
        "discriminated by `kind`: " + _kinds(records.UnitsBatch, records.TrainRequest),
        "domain (one partition owns a domain's counter)",
        "worker (expand stage), ingest (POST /v1/train)",
        "worker (count stage)",
    ),
    TopicSchema(
        topics.RESULTS,
        lambda: _RECORDS()[topics.RESULTS],
        _doc(records.StageResult),
        "request_id",
        "worker (count stage)",
        "ingest (answers of POST /v1/feedback, GET /v1/requests)",
    ),
    TopicSchema(
        topics.ERASURES,
        lambda: _RECORDS()[topics.ERASURES],
        _doc(records.Erasure),
        "`<task_id>/<entry_id>` (as the entry's key on feedback.raw)",
        "ingest (DELETE /api/v1/feedback/{id})",
        "worker (store stage), trainers",
    ),
    TopicSchema(
        topics.DLQ_REPLAYS,
        lambda: _RECORDS()[topics.DLQ_REPLAYS],
        _doc(records.DlqReplay),
        "`<dlq partition>:<dlq offset>` of the dead letter replayed",
        "operators (feedstream dlq replay)",
        "operators (feedstream dlq replay skips what is marked)",
    ),
    TopicSchema(
        topics.TRAININGS,
        lambda: _RECORDS()[topics.TRAININGS],
        _doc(records.TrainingResult),
        "domain",
        "ingest (POST /v1/domains/{domain}/trainings), trainers",
        "ingest (GET /v1/domains/{domain}), operators (feedstream status)",
    ),
    TopicSchema(
        topics.EXPAND_STATE,
        lambda: records.struct_json_schema(SeekerHistory, StreamClock, records.InputOffset),
        _doc(SeekerHistory)
        + " Key `\\u0000clock` holds the partition's stream time instead (newest received_at seen,"
        " and when histories were last swept for their age); key `\\u0000offset/feedback.raw` the"
        " next feedback.raw offset of the partition, committed with the outputs. Each change goes to"
        " the partition with"
        " the number of the feedback.raw partition it reflects; a null value (tombstone) deletes the"
        " key: histories whose newest outcome is older than SEEKER_MAX_AGE_S in stream time are"
        " deleted so",
        "`<domain>/<anchor>`, anchor as in feedback.raw (seeker_id or search anchor); `\\u0000clock`;"
        " `\\u0000offset/feedback.raw`",
        "worker (expand stage)",
        "worker (expand stage, restored on partition assignment)",
    ),
    TopicSchema(
        topics.COUNT_STATE,
        lambda: records.struct_json_schema(DomainCounter, records.InputOffset),
        _doc(DomainCounter)
        + " Key `\\u0000offset/feedback.units` holds the next feedback.units offset of the partition"
        " instead, committed with the outputs. Each change goes to the partition with the number of"
        " the feedback.units partition it reflects; "
        "a null value (tombstone) deletes the key",
        "domain",
        "worker (count stage)",
        "worker (count stage, restored on partition assignment), ingest (GET /v1/domains)",
    ),
)


def file_name(topic: str) -> str:
    return f"{topic}.schema.json"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."


def topic_schema(spec: TopicSchema) -> dict[str, Any]:
    """The schema of one topic's value, with its identity and description on top."""
    schema = dict(spec.schema())
    doc = next(t.doc for t in topics.TOPICS if t.name == spec.topic)
    schema["$schema"] = DIALECT
    schema["$id"] = ID_BASE + file_name(spec.topic)
    schema["title"] = f"{spec.topic} message value"
    schema["description"] = " ".join(
        [
            _sentence(doc),
            _sentence(f"Key: {spec.key}"),
            _sentence(f"Value: {spec.value}"),
            _sentence(f"Produced by {spec.producers}; consumed by {spec.consumers}"),
        ]
    )
    return schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


_RAW_KEY_SHORT = (
    "by contract: `<domain>/<seeker_id>`, `<domain>/<case_id>`, the inference id, "
    "`<domain>/<entry_id>`, `<domain>/<search anchor>`"
)


def _readme() -> str:
    lines = [
        "# Topic schemas",
        "",
        "JSON Schema (draft 2020-12) of every topic's message value, generated from the message",
        "types by `python -m pipeline.wire.schemas write` (`make schemas`); do not edit by hand.",
        "`python -m pipeline.wire.schemas check` (and `tests/unit/test_schemas.py`) fail on drift.",
        "Values are UTF-8 JSON; keys are UTF-8 strings. Topic names take `TOPIC_PREFIX` in front.",
        "",
        "| topic | key | value schema | produced by | consumed by |",
        "|---|---|---|---|---|",
    ]
    for spec in TOPIC_SCHEMAS:
        key = _RAW_KEY_SHORT if spec.topic == topics.RAW else spec.key
        lines.append(
            f"| `{spec.topic}` | {key} | [{file_name(spec.topic)}]({file_name(spec.topic)}) "
            f"| {spec.producers} | {spec.consumers} |"
        )
    lines += [
        "",
        "For trainers:",
        "",
        "* A `train.triggers` range names one partition of `feedback.triplets` with offsets",
        "  `start_offset..end_offset` inclusive. The partition is shared by every domain that hashes",
        "  to it, and transactions leave control markers at some offsets, so a range may include",
        "  other domains' units and offsets with no record: read the range and keep the units whose",
        "  `domain` is the trigger's domain (`count` is the number of those with `counts: true`).",
        "* Unit ids (`unit_id`) are deterministic: a replay or a retried transaction yields the same",
        "  id for the same unit, so de-duplicate by `unit_id`.",
        "* `feedback.units`, `feedback.results` and the two changelogs are internal to feedstream;",
        "  their schemas are published so the state can be inspected, not as a stable API.",
        "",
    ]
    return "\n".join(lines)


def generate() -> dict[str, str]:
    """File name -> expected content, for every topic and the README."""
    files = {file_name(s.topic): render(topic_schema(s)) for s in TOPIC_SCHEMAS}
    files[README] = _readme()
    return files


def drift(directory: Path = SCHEMA_DIR) -> list[str]:
    """Files that are missing, differ from the generated ones, or are stale (no topic any more)."""
    expected = generate()
    drifted = []
    for name, text in expected.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            drifted.append(name)
    if directory.is_dir():
        drifted += sorted(p.name for p in directory.glob("*.schema.json") if p.name not in expected)
    return sorted(drifted)


def write(directory: Path = SCHEMA_DIR) -> list[str]:
    """(Re)write what drifted and remove stale schema files; returns the names touched."""
    expected = generate()
    touched = drift(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in touched:
        path = directory / name
        if name in expected:
            path.write_bytes(expected[name].encode("utf-8"))
        else:
            path.unlink()
    return touched


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.wire.schemas", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["write", "check"])
    parser.add_argument(
        "--dir", type=Path, default=SCHEMA_DIR, help="schema directory (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.command == "write":
        touched = write(args.dir)
        print("\n".join(f"wrote {args.dir / n}" for n in touched) or f"{args.dir}: up to date")
        return 0
    drifted = drift(args.dir)
    if drifted:
        print(
            "schemas drifted from the models (run `python -m pipeline.wire.schemas write`):", file=sys.stderr
        )
        for name in drifted:
            print(f"  {args.dir / name}", file=sys.stderr)
        return 1
    print(f"{args.dir}: {len(TOPIC_SCHEMAS)} topic schemas up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
