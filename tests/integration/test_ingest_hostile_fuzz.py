"""2,000+ hostile bodies on every route of a dedicated stack: never a 5xx, nothing accepted is dead-lettered.

A seeded generator (not hypothesis: it has to be fast and concurrent) builds ~2,400 requests over
every contract and route: ``POST /v1/feedback`` (seeds 000, 001, 002, 004), ``POST /api/v1/feedback``
(seed 003) and ``POST /v1/train``. Shapes: nesting around the edge's depth bound (28-40 levels) and
around the decoders' (190-262), identifiers from 300 characters to 600 KB, weights up to 1e308,
NaN-like strings, UUIDs in odd spellings (upper case, braces, ``urn:uuid:``, hyphens anywhere,
hyphen-padded), thousands of keys per item, lone surrogates (escaped and as raw bytes), wrong
types, empty/null/array/scalar bodies, mixed-contract bodies, 200 outcomes for one seeker; plus a
share of well-formed bodies so the stream has real work.

The stack (worker + ingest, their own topic prefix, consumer groups and tenants file) is this
module's alone, so after the run its ``feedback.dlq`` must be empty: every record there would be a
body the ingest accepted (2xx) and a stage then refused. Before reading it the test waits until
both stages' consumer groups have committed everything on ``feedback.raw`` and ``feedback.units``
(counted exactly: committed records past the groups' offsets; a poison record that stalls a
partition fails the test there).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import os
import random
import re
import string
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import TopicNames, delete_prefixed_topics, ensure_topics, topic_names
from pipeline.procs import Service, free_port, ingest_service, worker_service
from pipeline.settings import Settings
from pipeline.tenants import hash_api_key
from scripts.common import read_all, stack_env, tagged_settings, wait_processed
from tests.conftest import LOG_DIR
from tests.kafka_helpers import run

SEED = int(os.environ.get("HOSTILE_FUZZ_SEED", "20250207"))
N_REQUESTS = 2400
CONCURRENCY = 12
MAX_BODY_BYTES = 1_048_576  # the ingest's default, which this stack keeps

KEY = "fs_hfz_key"  # tenant hfz: every domain and task below
SHARED_KEY = "fs_hfz_shared_key"  # tenant hfz_shared (shared_improvement): corrections only
OTHER_KEY = "fs_hfz_other_key"  # tenant hfz_other: owns hfz_other_rank only (403 for the rest)
TASK = "6f1c2d3e-4b5a-4c7d-8e9f-a0b1c2d3e4f5"
RANK, SUPPORT, LLM, SEARCH = "hfz_rank", "hfz_support", "hfz_llm", "hfz_search"
LABELS = ["accepted", "rejected", "converted", "expired", "super_like", "ACCEPTED", "", "maybe"]
EVENT_TYPES = ["result_helpful", "result_not_helpful", "passage_used", "stale_result", "read_abandoned"]
NANISH = ["NaN", "nan", "Infinity", "-Infinity", "inf", "1e999", "null", "undefined", "-0", "0x10", "1e308"]
HUGE_LENGTHS = [300, 300, 1000, 5000, 20_000, 100_000, 600_000]
BIG_NUMBERS: list[Any] = [1e308, 1.7976931348623157e308, -1e308, 1e300, 5e-324, 2**63, 2**64, -(2**63), 1e16]


def tenants_file(path: Path) -> Path:
    data = {
        "tenants": [
            {
                "id": "hfz",
                "api_keys": [hash_api_key(KEY)],
                "tier": "fuzz",
                "rate_limit_rps": 1_000_000,
                "feedback_mode": "tenant_tuning",
                "default_domains": {"correction": SUPPORT, "inference_feedback": LLM, "search_event": SEARCH},
                "domains": {
                    RANK: {"threshold": 200},
                    SUPPORT: {"threshold": 20},
                    LLM: {"threshold": 500},
                    SEARCH: {"threshold": 30},
                },
                "tasks": {TASK: {"threshold": 10, "input_fields": None}},
                "labels": {"super_like": {"grade": 2.5, "positive": True}},
            },
            {
                "id": "hfz_shared",
                "api_keys": [hash_api_key(SHARED_KEY)],
                "rate_limit_rps": 1_000_000,
                "feedback_mode": "shared_improvement",
                "default_domains": {"correction": "hfz_shared_support"},
                "domains": {"hfz_shared_support": {"threshold": 5}},
            },
            {
                "id": "hfz_other",
                "api_keys": [hash_api_key(OTHER_KEY)],
                "rate_limit_rps": 1_000_000,
                "feedback_mode": "tenant_tuning",
                "domains": {"hfz_other_rank": {"threshold": 10}},
            },
        ]
    }
    path.write_text(yaml.safe_dump(data))
    return path


# --- raw JSON building: orjson writes the ordinary parts, deep or odd parts are spliced in as text -----


class Raw:
    """A JSON fragment written verbatim (deeper than orjson writes, escaped surrogates, huge literals)."""

    def __init__(self, text: str) -> None:
        self.text = text


def dumps(value: Any) -> bytes:
    raws: list[Raw] = []

    def mark(v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**64:
            v = Raw(str(v))  # beyond what orjson writes
        if isinstance(v, Raw):
            raws.append(v)
            return f"@@RAW{len(raws) - 1}@@"
        if isinstance(v, dict):
            return {k: mark(x) for k, x in v.items()}
        if isinstance(v, list):
            return [mark(x) for x in v]
        return v

    out = orjson.dumps(mark(value))
    for i, r in enumerate(raws):
        out = out.replace(f'"@@RAW{i}@@"'.encode(), r.text.encode("utf-8", "surrogatepass"))
    return out


def nested(rng: random.Random, depth: int, leaf: str = "1") -> Raw:
    """``depth`` containers deep (objects, arrays or both, alternating), with one leaf at the bottom."""
    style = rng.choice(["obj", "arr", "mix", "scored"])
    opens, closes = [], []
    for level in range(depth):
        if style == "arr" or (style == "mix" and level % 2):
            opens.append("[")
            closes.append("]")
        elif style == "scored" and level == depth - 1:
            opens.append('{"score":')
            closes.append(',"reason":"r"}')
        else:
            opens.append(f'{{"k{level % 7}":')
            closes.append("}")
    return Raw("".join(opens) + leaf + "".join(reversed(closes)))


def depth(rng: random.Random) -> int:
    """Around the edge's bound (28-40) or around what later decoders accept (190-262)."""
    return rng.randint(28, 40) if rng.random() < 0.6 else rng.randint(190, 262)


def huge_id(rng: random.Random) -> str:
    n = rng.choice(HUGE_LENGTHS)
    return rng.choice(string.ascii_letters) * n if rng.random() < 0.5 else ("u/" + "x" * n)[:n]


def odd_uuid(rng: random.Random, base: str | None = None) -> str:
    u = base or str(uuid.UUID(int=rng.getrandbits(128), version=4))
    hx = u.replace("-", "")
    spellings = [
        u,
        u.upper(),
        "{" + u + "}",
        "{" + u.upper() + "}",
        "urn:uuid:" + u,
        "URN:UUID:" + u,
        hx,
        "-".join(hx),  # hyphens everywhere
        "-" * rng.choice([10, 300, 5000, 100_000]) + u,  # hyphen-padded
        u + "-" * rng.choice([1, 300, 50_000]),
        " " + u + " ",
        u[:-1],
        u + "0",
        "urn:uuid:{" + u + "}",
    ]
    return rng.choice(spellings)


def wrong(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            True,
            False,
            0,
            -1,
            1.5,
            2**64,
            "",
            " ",
            [],
            {},
            [1, 2],
            {"a": 1},
            "NaN",
            Raw("1e400"),
            Raw("-0"),
        ]
    )


def surrogate(rng: random.Random) -> Raw:
    return Raw(rng.choice(['"\\ud800"', '"a\\udfffb"', '"\\udc00\\ud800"', '"ok\\ud83d"']))


def many_keys(rng: random.Random, leaf: Callable[[int], Any] | None = None) -> dict[str, Any]:
    n = rng.choice([257, 1000, 3000, 5000])
    return {f"k{i}": (leaf(i) if leaf else i % 5) for i in range(n)}


# --- the request kinds -------------------------------------------------------------------------------


@dataclass
class Req:
    kind: str
    path: str
    body: bytes
    key: str = KEY
    x_api_key: bool = False


def ranking_item(rng: random.Random, seeker: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "seeker_id": seeker or f"s{rng.randrange(400)}",
        "candidate_id": f"c{rng.randrange(3000)}",
        "outcome": rng.choice(LABELS[:5]),
    }
    if rng.random() < 0.3:
        item["weight"] = round(rng.uniform(0, 3), 2)
    return item


def g_ranking_ok(rng: random.Random) -> Req:
    items = [ranking_item(rng) for _ in range(rng.randint(1, 5))]
    return Req("000 well-formed", "/v1/feedback", dumps({"domain": RANK, "items": items}))


def g_ranking_hostile(rng: random.Random) -> Req:
    item = ranking_item(rng)
    what = rng.choice(
        ["id", "id", "weight", "weight", "surrogate", "keys", "wrong", "label", "deep", "domain"]
    )
    if what == "id":
        item[rng.choice(["seeker_id", "candidate_id", "outcome"])] = huge_id(rng)
    elif what == "weight":
        item["weight"] = rng.choice([*BIG_NUMBERS, Raw("1e308"), Raw("1E308"), rng.choice(NANISH)])
        if rng.random() < 0.5:  # two such items of one seeker: their product is the triplet weight
            other = dict(item, candidate_id="c-other", outcome="rejected")
            return Req("000 weight", "/v1/feedback", dumps({"domain": RANK, "items": [item, other]}))
    elif what == "surrogate":
        item[rng.choice(["seeker_id", "candidate_id", "outcome"])] = surrogate(rng)
    elif what == "keys":
        item.update(many_keys(rng))
    elif what == "wrong":
        item[rng.choice(["seeker_id", "candidate_id", "outcome", "weight"])] = wrong(rng)
    elif what == "label":
        item["outcome"] = rng.choice([*LABELS, *NANISH])
    elif what == "deep":
        item[rng.choice(["seeker_id", "extra"])] = nested(rng, depth(rng))
    else:
        body = {"domain": rng.choice(["", "hfz_other_rank", huge_id(rng), "a/b", RANK.upper(), wrong(rng)])}
        body["items"] = [item]
        return Req(f"000 {what}", "/v1/feedback", dumps(body))
    return Req(f"000 {what}", "/v1/feedback", dumps({"domain": RANK, "items": [item]}))


def g_one_seeker_many(rng: random.Random) -> Req:
    """200 outcomes (or so) for one seeker: thousands of triplets from one request."""
    seeker = f"crowd-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
    n = rng.choice([150, 200, 200, 250])
    outcomes = ["converted", "accepted", "expired", "rejected"]
    items = [
        {"seeker_id": seeker, "candidate_id": f"c{i}", "outcome": outcomes[i % 4], "weight": 1.0}
        for i in range(n)
    ]
    return Req("000 200 outcomes/seeker", "/v1/feedback", dumps({"domain": RANK, "items": items}))


def correction(rng: random.Random) -> dict[str, Any]:
    return {
        "case_id": f"case-{rng.randrange(500)}",
        "module": rng.choice(["intent", "extract.quote", "router"]),
        "original_output": {"intent": "billing"},
        "corrected_output": {"intent": "refund"},
        "actor": {"type": "agent", "id": f"a{rng.randrange(20)}"},
    }


def g_correction(rng: random.Random) -> Req:
    body = correction(rng)
    what = rng.choice(["ok", "ok", "deep", "deep", "id", "keys", "wrong", "surrogate", "missing"])
    if what == "deep":
        body[rng.choice(["original_output", "corrected_output", "actor"])] = nested(rng, depth(rng))
    elif what == "id":
        body[rng.choice(["case_id", "module"])] = huge_id(rng)
    elif what == "keys":
        body[rng.choice(["original_output", "corrected_output", "actor"])] = many_keys(rng)
    elif what == "wrong":
        body[rng.choice(list(body))] = wrong(rng)
    elif what == "surrogate":
        body[rng.choice(["case_id", "module"])] = surrogate(rng)
    elif what == "missing":
        body.pop(rng.choice(list(body)))
    key = SHARED_KEY if rng.random() < 0.3 else KEY
    return Req(f"001 {what}", "/v1/feedback", dumps(body), key=key)


def inference_item(rng: random.Random) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "feedback": {"helpful": rng.random() < 0.5, "quality": {"accuracy": {"score": 4, "reason": "ok"}}},
    }
    if rng.random() < 0.3:
        item["tags"] = {"evaluator": "human"}
    return item


def g_inference(rng: random.Random) -> Req:
    items = [inference_item(rng) for _ in range(rng.randint(1, 4))]
    item = items[0]
    what = rng.choice(
        ["ok", "ok", "deep", "deep", "uuid", "uuid", "keys", "nanish", "wrong", "tags", "surrogate"]
    )
    if what == "deep":
        item["feedback"] = {"q": nested(rng, depth(rng), leaf=rng.choice(["1", "true", '"x"']))}
    elif what == "uuid":
        item["id"] = odd_uuid(rng)
    elif what == "keys":
        item["feedback"] = many_keys(rng, leaf=lambda i: [True, 0.5, "s", {"score": 1, "reason": "r"}][i % 4])
    elif what == "nanish":
        item["feedback"] = {f"n{i}": v for i, v in enumerate(NANISH)} | {"big": rng.choice(BIG_NUMBERS)}
    elif what == "wrong":
        item[rng.choice(["id", "feedback", "tags", "optimize"])] = wrong(rng)
    elif what == "tags":
        item["tags"] = many_keys(rng, leaf=lambda i: "t") if rng.random() < 0.5 else {"t": huge_id(rng)}
    elif what == "surrogate":
        item["feedback"] = {"comment": surrogate(rng)}
    return Req(f"002 {what}", "/v1/feedback", dumps(items))


def search_event(rng: random.Random) -> dict[str, Any]:
    return {
        "event_type": rng.choice(EVENT_TYPES),
        "search_id": str(uuid.UUID(int=rng.getrandbits(128) % 50, version=4)),
        "doc_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "rank": rng.randint(1, 10),
        "query": "refund policy",
    }


def g_search(rng: random.Random) -> Req:
    body = search_event(rng)
    what = rng.choice(["ok", "ok", "uuid", "uuid", "deep", "query", "keys", "wrong", "rank", "anchorless"])
    if what == "uuid":
        body[rng.choice(["search_id", "doc_id", "passage_id", "session_id"])] = odd_uuid(rng)
    elif what == "deep":
        body["agent_context"] = nested(rng, depth(rng))
    elif what == "query":
        body.pop("search_id")
        body["query"] = rng.choice([huge_id(rng), surrogate(rng), "x" * 2048, "x" * 2049])
    elif what == "keys":
        body["agent_context"] = many_keys(rng)
    elif what == "wrong":
        body[rng.choice(list(body))] = wrong(rng)
    elif what == "rank":
        body["rank"] = rng.choice([*BIG_NUMBERS, 0, -1, Raw("1e400")])
    elif what == "anchorless":
        body = {"event_type": rng.choice(EVENT_TYPES), "doc_id": odd_uuid(rng)}
    return Req(f"004 {what}", "/v1/feedback", dumps(body))


def g_scored(rng: random.Random) -> Req:
    body: dict[str, Any] = {
        "task_id": TASK,
        "inputs": {"ticket_text": "login fails", "priority": "high"},
        "output": "Check OAuth.",
        "score": round(rng.random(), 3),
        "source": rng.choice(["sdk", "user_rating", "auto_eval", "seed"]),
        "metadata": {"model": "m"},
    }
    what = rng.choice(["ok", "ok", "uuid", "uuid", "deep", "keys", "score", "output", "wrong", "surrogate"])
    if what == "uuid":
        body["task_id"] = odd_uuid(rng, TASK)
    elif what == "deep":
        body[rng.choice(["inputs", "metadata"])] = {"d": nested(rng, depth(rng))}
    elif what == "keys":
        body[rng.choice(["inputs", "metadata"])] = many_keys(rng)
    elif what == "score":
        body["score"] = rng.choice([*BIG_NUMBERS, *NANISH, Raw("1e400"), -0.0, 1.0000001])
    elif what == "output":
        body["output"] = huge_id(rng)
    elif what == "wrong":
        body[rng.choice(list(body))] = wrong(rng)
    elif what == "surrogate":
        body[rng.choice(["output", "source"])] = surrogate(rng)
    return Req(f"003 {what}", "/api/v1/feedback", dumps(body), x_api_key=rng.random() < 0.5)


def g_train(rng: random.Random) -> Req:
    what = rng.choice(["ok", "task", "task", "huge", "wrong", "extra", "other", "surrogate"])
    domain: Any = rng.choice([RANK, SUPPORT, SEARCH, TASK])
    if what == "task":
        domain = odd_uuid(rng, TASK)
    elif what == "huge":
        domain = huge_id(rng)
    elif what == "wrong":
        domain = wrong(rng)
    elif what == "other":
        domain = "hfz_other_rank"
    elif what == "surrogate":
        domain = surrogate(rng)
    body: Any = {"domain": domain}
    if what == "extra":
        body = {"domain": RANK, "items": [ranking_item(rng)]}
    return Req(f"train {what}", "/v1/train", dumps(body))


def g_shapeless(rng: random.Random) -> Req:
    """Not any contract: empty, null, scalars, arrays, truncated, invalid UTF-8, mixed contracts."""
    path = rng.choice(["/v1/feedback", "/v1/feedback", "/api/v1/feedback", "/v1/train"])
    what = rng.choice(
        ["empty", "scalar", "array", "truncated", "bytes", "mixed", "mixed", "deep", "crosspath"]
    )
    if what == "empty":
        body = rng.choice([b"", b" ", b"null", b"{}", b"[]", b"[{}]", b"[null]", b'""'])
    elif what == "scalar":
        body = rng.choice(
            [b"0", b"1e308", b"-1", b"true", b'"NaN"', b"NaN", b"Infinity", b"1e400", b"9" * 400]
        )
    elif what == "array":
        body = dumps([rng.choice([correction(rng), search_event(rng), {"domain": RANK}, 1, None])])
    elif what == "truncated":
        whole = dumps({"domain": RANK, "items": [ranking_item(rng)]})
        body = whole[: rng.randrange(len(whole))]
    elif what == "bytes":
        body = rng.choice([b"\xff\xfe{}", b'{"domain":"\xed\xa0\x80","items":[]}', bytes(rng.randbytes(48))])
    elif what == "mixed":
        parts = [{"domain": RANK, "items": [ranking_item(rng)]}, correction(rng), search_event(rng)]
        parts.append({"task_id": TASK, "score": 0.5})
        merged: dict[str, Any] = {}
        for p in rng.sample(parts, 2):
            merged.update(p)
        body = dumps(merged)
    elif what == "deep":
        body = dumps(nested(rng, depth(rng)))
    else:  # a contract's body on another route
        body = dumps(
            rng.choice([{"domain": RANK, "items": [ranking_item(rng)]}, correction(rng), {"task_id": TASK}])
        )
    return Req(f"shape {what}", path, body, x_api_key=rng.random() < 0.3)


GENERATORS: list[tuple[Callable[[random.Random], Req], int]] = [
    (g_ranking_ok, 12),
    (g_ranking_hostile, 20),
    (g_one_seeker_many, 0),  # a fixed few, below: each is thousands of triplets
    (g_correction, 12),
    (g_inference, 15),
    (g_search, 12),
    (g_scored, 12),
    (g_train, 6),
    (g_shapeless, 11),
]


def requests(rng: random.Random, n: int) -> list[Req]:
    gens = [g for g, w in GENERATORS if w]
    weights = [w for _, w in GENERATORS if w]
    out = [g_one_seeker_many(rng) for _ in range(3)]
    huge_bytes = sum(len(r.body) for r in out)
    while len(out) < n:
        req = rng.choices(gens, weights)[0](rng)
        if len(req.body) > 200_000:  # bound the run's volume: at most ~40 MB of big bodies
            if huge_bytes > 40_000_000:
                continue
            huge_bytes += len(req.body)
        if rng.random() < 0.03:
            req.key = OTHER_KEY  # a tenant that owns none of it: 403, never written
        out.append(req)
    rng.shuffle(out)
    return out


# --- the stack ---------------------------------------------------------------------------------------


@dataclass
class Stack:
    settings: Settings
    names: TopicNames
    ingest: Service
    worker: Service


@pytest.fixture(scope="module")
def stack(broker: Broker) -> Iterator[Stack]:
    tag = f"hfz{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="feedstream-hfz-"))
    settings = tagged_settings(
        broker.bootstrap, tag, tenants_file(tmp / "tenants.yaml"), shared_pool_threshold=3
    )
    run(ensure_topics(broker.bootstrap, settings))
    env = stack_env(
        settings,
        f"ingest-{tag}",
        shared_pool_threshold=3,
        store_path=tmp / "store.sqlite3",  # the feedback store's SQLite file: this stack's own
    )
    log_dir = LOG_DIR / settings.topic_prefix
    worker = worker_service(env, free_port(), log_dir)
    ingest = ingest_service(env, free_port(), log_dir)
    try:
        worker.start()
        ingest.start()
        worker.wait_ready()
        ingest.wait_ready()
        yield Stack(settings, topic_names(settings), ingest, worker)
    finally:
        ingest.stop()
        worker.stop()
        run(delete_prefixed_topics(broker.bootstrap, settings.topic_prefix))
        run(delete_prefixed_topics(broker.bootstrap, settings.worker_id + "-"))


# --- driving and checking ----------------------------------------------------------------------------


@dataclass
class Answer:
    req: Req
    correlation_id: str
    status: int
    request_id: str
    content_type: str
    text: str


async def send_all(url: str, reqs: list[Req]) -> list[Answer]:
    answers: list[Answer] = []
    queue: collections.deque[Req] = collections.deque(reqs)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY), timeout=timeout) as s:

        async def one(req: Req) -> Answer:
            cid = f"hfz-{uuid.uuid4().hex}"
            headers = {"Content-Type": "application/json", "X-Correlation-Id": cid}
            if req.x_api_key:
                headers["X-API-Key"] = req.key
            else:
                headers["Authorization"] = f"Bearer {req.key}"
            async with s.post(url + req.path, data=req.body, headers=headers) as resp:
                text = (await resp.read()).decode(errors="replace")
                return Answer(
                    req, cid, resp.status, resp.headers.get("X-Request-Id", ""), resp.content_type, text
                )

        async def worker() -> None:
            while queue:
                answers.append(await one(queue.popleft()))

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return answers


def origin_of(letter: dict[str, Any], by_id: dict[str, Answer]) -> str:
    """Which request a dead letter came from: its original carries the correlation or request id."""
    original = base64.b64decode(letter.get("original", ""))
    for token in re.findall(rb"hfz-[0-9a-f]{32}|req_[0-9a-f]{32}", original[:100_000]):
        ans = by_id.get(token.decode())
        if ans is not None:
            return f"{ans.req.kind} -> {ans.status}"
    return "unknown request"


@pytest.mark.slow
def test_hostile_bodies_never_5xx_and_nothing_accepted_is_dead_lettered(broker: Broker, stack: Stack) -> None:
    rng = random.Random(SEED)
    reqs = requests(rng, N_REQUESTS)
    assert len(reqs) >= 2000
    assert {r.path for r in reqs} == {"/v1/feedback", "/api/v1/feedback", "/v1/train"}
    url = f"http://127.0.0.1:{stack.ingest.health_url.rsplit(':', 1)[1].split('/')[0]}"

    loop = asyncio.new_event_loop()
    try:
        t0 = time.monotonic()
        answers = loop.run_until_complete(send_all(url, reqs))
        t1 = time.monotonic()
        _, lags = loop.run_until_complete(wait_processed(broker.bootstrap, stack.settings, timeout_s=90))
        t2 = time.monotonic()
        letters = [
            orjson.loads(v) for v in loop.run_until_complete(read_all(broker.bootstrap, stack.names.dlq))
        ]
    finally:
        loop.close()

    by_status: collections.Counter[int] = collections.Counter(a.status for a in answers)
    by_kind: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    for a in answers:
        by_kind[a.req.kind][a.status] += 1
    by_id = {a.correlation_id: a for a in answers} | {a.request_id: a for a in answers if a.request_id}
    dead = collections.Counter(
        f"{origin_of(d, by_id)} | {d.get('stage')} {d.get('error_type')}: {str(d.get('reason'))[:160]}"
        for d in letters
    )
    report = "\n".join(
        [
            f"{len(answers)} requests in {t1 - t0:.1f} s, stream drained in {t2 - t1:.1f} s; "
            f"statuses {dict(sorted(by_status.items()))}",
            *(f"  {k}: {dict(sorted(c.items()))}" for k, c in sorted(by_kind.items())),
        ]
    )
    print(report)  # visible with -s, and in every failure below

    problems: list[str] = []
    server_errors = [
        f"{a.req.kind} {a.req.path} ({len(a.req.body)} B): {a.status} {a.text[:160]}"
        for a in answers
        if a.status >= 500
    ]
    if server_errors:
        problems += [f"{len(server_errors)} answers >= 500:", *server_errors[:25]]
    not_json = [
        f"{a.req.kind}: {a.status} {a.content_type}" for a in answers if a.content_type != "application/json"
    ]
    if not_json:
        problems += [f"{len(not_json)} answers not JSON:", *not_json[:10]]
    unexpected = set(by_status) - {200, 201, 202, 400, 403, 404, 413, 422, *range(500, 600)}
    if unexpected:
        problems.append(f"unexpected statuses {sorted(unexpected)}")
    accepted = sum(n for s, n in by_status.items() if 200 <= s < 300)
    if accepted < 500:
        problems.append(f"only {accepted} accepted: too few to exercise the stream")
    if lags != (0, 0):
        problems.append(
            f"the stream did not process everything within 90 s (records left on raw, units = {lags}): "
            "a partition is stalled"
        )
    if letters:
        problems += [f"{len(letters)} dead letters from accepted bodies:"]
        problems += [f"  {n} x {what}" for what, n in dead.most_common(25)]
    assert len(answers) == len(reqs)
    assert problems == [], report + "\n" + "\n".join(problems)
