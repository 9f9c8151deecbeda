"""Calling the ingest over real HTTP, as a client would."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import orjson

from pipeline.procs import Service

DEV_KEY = "fs_dev_key_123"
OTHER_KEY = "fs_other_key_456"
KAIZEN_KEY = "kaizen_abc123"

# seed 000's request example, as written in the seed
SEED_000 = {
    "domain": "dating",
    "items": [
        {"seeker_id": "u_alice", "candidate_id": "u_bob", "outcome": "accepted"},
        {"seeker_id": "u_alice", "candidate_id": "u_carl", "outcome": "rejected"},
        {"seeker_id": "u_alice", "candidate_id": "u_dan", "outcome": "converted", "weight": 2.0},
    ],
}


def parse_answer(text: bytes) -> Any:
    """An answer's body: its JSON, or its text when it is not JSON (so a test can say what came)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text.decode(errors="replace")


def base_url(svc: Service) -> str:
    return svc.health_url.rsplit("/", 1)[0]


async def post(
    svc: Service,
    path: str,
    body: Any,
    *,
    key: str | None = DEV_KEY,
    header: str = "bearer",
    correlation_id: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any, dict[str, str]]:
    h = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        if header == "bearer":
            h["Authorization"] = f"Bearer {key}"
        else:
            h["X-API-Key"] = key
    if correlation_id:
        h["X-Correlation-Id"] = correlation_id
    data = raw if raw is not None else orjson.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.post(base_url(svc) + path, data=data, headers=h) as resp,
    ):
        return resp.status, parse_answer(await resp.read()), {k.lower(): v for k, v in resp.headers.items()}


async def get(svc: Service, path: str, *, key: str = DEV_KEY) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(base_url(svc) + path, headers={"Authorization": f"Bearer {key}"}) as resp,
    ):
        return resp.status, orjson.loads(await resp.read())


async def domain_state(
    svc: Service, domain: str, *, key: str = DEV_KEY, until: Any = None, timeout_s: float = 30.0
) -> dict[str, Any]:
    """GET /v1/domains/{domain}, polled until ``until(state)`` holds (the view follows the stream)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        status, state = await get(svc, f"/v1/domains/{domain}", key=key)
        # 503 NOT_READY (with Retry-After) is the documented answer until the ingest's view has read
        # the counters' changelog: a fresh ingest on a loaded machine answers it for a moment
        not_ready = status == 503 and state.get("error", {}).get("code") == "NOT_READY"
        assert status == 200 or not_ready, state
        if not not_ready and (until is None or until(state)):
            return state  # type: ignore[no-any-return]
        assert loop.time() < deadline, f"domain {domain} never reached the expected state: {state}"
        await asyncio.sleep(0.1)


async def settled_domain_state(svc: Service, domain: str, *, key: str = DEV_KEY) -> dict[str, Any]:
    """The domain's state once two reads 0.3 s apart agree (earlier requests' counts have arrived)."""
    previous = await domain_state(svc, domain, key=key)
    for _ in range(50):
        await asyncio.sleep(0.3)
        current = await domain_state(svc, domain, key=key)
        if current == previous:
            return current
        previous = current
    return previous


#: Bodies of the error-contract tests (in process and on the broker): valid unless a test spoils them.
TASK_ID = "550e8400-e29b-41d4-a716-446655440000"
CORRECTION = {
    "case_id": "case-1",
    "module": "intent_classifier",
    "original_output": {"intent": "refund"},
    "corrected_output": {"intent": "cancel"},
    "actor": {"id": "rep-7"},
}
SEARCH = {"event_type": "result_helpful", "query": "refund policy"}
SCORED = {"task_id": TASK_ID, "output": "ok", "score": 0.5}


def cid(tag: str) -> str:
    """A correlation id of its own, to find a request's records among the session's."""
    return f"err-{tag}-{uuid.uuid4().hex[:10]}"


def outcomes(domain: str = "search", *labels: str, weight: Any = 1.0) -> dict[str, Any]:
    """A seed 000 body of one fresh seeker, one item per label."""
    seeker = f"s-{uuid.uuid4().hex[:8]}"
    return {
        "domain": domain,
        "items": [
            {"seeker_id": seeker, "candidate_id": f"c{i}", "outcome": label, "weight": weight}
            for i, label in enumerate(labels or ("accepted",))
        ],
    }
