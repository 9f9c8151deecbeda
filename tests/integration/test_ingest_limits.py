"""Limits on dedicated ingests: 413 for big bodies and too many items, 429 past a tenant's rate.

Each dedicated ingest runs as users run it (a subprocess of ``pipeline.api.ingest``) with its own
settings, against the session's broker and topics. Rejected requests are never on ``feedback.raw``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiokafka import ConsumerRecord

from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import TopicNames
from pipeline.procs import Service
from pipeline.tenants import hash_api_key
from tests.http_helpers import DEV_KEY, base_url, post
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.usefixtures("worker")

MAX_BODY = 2048
MAX_ITEMS = 3
RATE_KEY = "fs_rate_key_2rps"
RATE_KEY_B = "fs_rate_key_2rps_b"  # same tenant, its own bucket


@pytest.fixture(scope="module")
def small(ingest_factory: Callable[..., Service]) -> Service:
    return ingest_factory("ingest-small", max_body_bytes=MAX_BODY, max_items_per_request=MAX_ITEMS)


@pytest.fixture(scope="module")
def rate_limited(ingest_factory: Callable[..., Service], tmp_path_factory: pytest.TempPathFactory) -> Service:
    """An ingest whose tenants file has the dev tenant under a key limited to 2 requests/s."""
    tenants = {
        "tenants": [
            {
                "id": "dev",
                "api_keys": [hash_api_key(RATE_KEY), hash_api_key(RATE_KEY_B)],
                "tier": "metered",
                "rate_limit_rps": 2,
                "feedback_mode": "tenant_tuning",
                "default_domains": {
                    "correction": "support",
                    "inference_feedback": "llm",
                    "search_event": "search",
                },
                "domains": {d: {"threshold": 1000} for d in ("dating", "support", "llm", "search")},
            }
        ]
    }
    path: Path = tmp_path_factory.mktemp("tenants") / "tenants.rate.yaml"
    path.write_text(yaml.safe_dump(tenants))
    return ingest_factory("ingest-rate", tenants_file=path)


async def written(broker: Broker, names: TopicNames, correlation_ids: set[str], count: int) -> list[str]:
    """Correlation ids of raw events among ``correlation_ids`` (reads until ``count``, then settles)."""
    wanted = {c.encode() for c in correlation_ids}

    def match(r: ConsumerRecord[bytes, bytes]) -> bool:
        return dict(r.headers).get("correlation_id") in wanted

    recs = await read_until(broker.bootstrap, names.raw, match, count=count, settle_s=1.5, timeout_s=20)
    return sorted(dict(r.headers)["correlation_id"].decode() for r in recs)


def padded_events(size: int) -> bytes:
    """A valid seed 002 body of exactly ``size`` bytes."""
    event: dict[str, Any] = {"id": str(uuid.uuid4()), "feedback": {"note": ""}}
    base = len(orjson.dumps([event]))
    event["feedback"]["note"] = "n" * (size - base)
    raw = orjson.dumps([event])
    assert len(raw) == size
    return raw


# --- 413 -------------------------------------------------------------------------------------------


async def test_body_at_the_limit_is_accepted_one_byte_more_is_413(
    small: Service, broker: Broker, names: TopicNames
) -> None:
    ok, too_big = f"lim-ok-{uuid.uuid4().hex[:8]}", f"lim-big-{uuid.uuid4().hex[:8]}"
    status, answer, _ = await post(
        small, "/v1/feedback", None, raw=padded_events(MAX_BODY), correlation_id=ok
    )
    assert status == 200 and answer[0]["error"] is None, answer
    status, answer, headers = await post(
        small, "/v1/feedback", None, raw=padded_events(MAX_BODY + 1), correlation_id=too_big
    )
    assert status == 413
    assert answer == {
        "error": {"code": "PAYLOAD_TOO_LARGE", "message": f"Body exceeds {MAX_BODY} bytes.", "details": None},
        "correlation_id": too_big,
        "request_id": headers["x-request-id"],
    }
    assert await written(broker, names, {ok, too_big}, 1) == [ok]


@pytest.mark.parametrize("path", ["/v1/feedback", "/api/v1/feedback"])
async def test_big_chunked_body_without_length_is_413(
    small: Service, broker: Broker, names: TopicNames, path: str
) -> None:
    """No Content-Length to trust: the ingest stops reading past the limit."""
    raw = padded_events(MAX_BODY * 4)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 1000):
            yield raw[i : i + 1000]

    correlation_id = f"lim-chunked-{uuid.uuid4().hex[:8]}"
    headers = {"Authorization": f"Bearer {DEV_KEY}", "X-Correlation-Id": correlation_id}
    async with (
        aiohttp.ClientSession() as session,
        session.post(base_url(small) + path, data=chunks(), headers=headers) as resp,
    ):
        assert resp.status == 413
        assert "Content-Length" not in resp.request_info.headers
        answer = orjson.loads(await resp.read())
    assert answer["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert answer["correlation_id"] == correlation_id
    assert await written(broker, names, {correlation_id}, 0) == []


def _items(n: int) -> dict[str, Any]:
    seeker = f"lim-{uuid.uuid4().hex[:6]}"
    return {
        "domain": "search",
        "items": [{"seeker_id": seeker, "candidate_id": f"c{i}", "outcome": "accepted"} for i in range(n)],
    }


def _events(n: int) -> list[dict[str, Any]]:
    return [{"id": str(uuid.uuid4()), "feedback": {"ok": True}} for _ in range(n)]


@pytest.mark.parametrize("make", [_items, _events], ids=["000", "002"])
async def test_too_many_items_is_413_and_the_limit_itself_is_fine(
    small: Service, broker: Broker, names: TopicNames, make: Callable[[int], Any]
) -> None:
    ok, too_many = f"lim-items-ok-{uuid.uuid4().hex[:8]}", f"lim-items-{uuid.uuid4().hex[:8]}"
    status, answer, _ = await post(small, "/v1/feedback", make(MAX_ITEMS), correlation_id=ok)
    assert status == 200, answer
    status, answer, _ = await post(small, "/v1/feedback", make(MAX_ITEMS + 1), correlation_id=too_many)
    assert status == 413
    assert answer["error"]["code"] == "TOO_MANY_ITEMS"
    assert answer["error"]["message"] == f"{MAX_ITEMS + 1} items exceed the limit of {MAX_ITEMS} per request."
    expected = 1 if make is _items else MAX_ITEMS  # seed 000: one event per seeker
    assert await written(broker, names, {ok, too_many}, expected) == [ok] * expected


# --- 429 -------------------------------------------------------------------------------------------


async def test_past_the_rate_429_with_retry_after_and_seed_004_rate_state(
    rate_limited: Service, broker: Broker, names: TopicNames
) -> None:
    tag = uuid.uuid4().hex[:8]
    cids = [f"rate-{tag}-{i}" for i in range(8)]
    answers = await asyncio.gather(
        *(
            post(
                rate_limited, "/v1/feedback", {"event_type": "result_helpful"}, key=RATE_KEY, correlation_id=c
            )
            for c in cids
        )
    )

    ok = [(c, a) for c, a in zip(cids, answers, strict=True) if a[0] == 200]
    limited = [(c, a) for c, a in zip(cids, answers, strict=True) if a[0] == 429]
    assert len(ok) + len(limited) == len(cids), [a[0] for a in answers]
    assert len(ok) >= 2  # the burst is the rate
    assert limited
    for _, (_, body, headers) in ok:
        rate = body["access"]["rate_limit"]
        assert rate["limit_rps"] == 2
        assert rate["remaining"] in (0, 1)
        assert body["access"]["tier"] == "metered"
        assert headers["x-ratelimit-limit"] == "2"
    for c, (_, body, headers) in limited:
        assert body["error"]["code"] == "RATE_LIMITED"
        assert body["error"]["message"] == "Rate limit of 2 requests/s exceeded."
        assert body["correlation_id"] == c
        assert int(headers["retry-after"]) >= 1
        assert headers["x-ratelimit-limit"] == "2"
        assert headers["x-ratelimit-remaining"] == "0"
    assert await written(broker, names, set(cids), len(ok)) == sorted(c for c, _ in ok)


async def test_rate_limited_correction_answers_in_seed_001_shape(rate_limited: Service) -> None:
    correction = {"case_id": "c", "module": "m", "original_output": {}, "corrected_output": {}, "actor": {}}
    answers = await asyncio.gather(
        *(
            post(rate_limited, "/v1/feedback", correction, key=RATE_KEY, correlation_id="rate-001")
            for _ in range(6)
        )
    )
    limited = [a for a in answers if a[0] == 429]
    assert limited, [a[0] for a in answers]
    for _, body, headers in limited:
        assert body == {
            "error_code": "RATE_LIMITED",
            "message": "Rate limit of 2 requests/s exceeded.",
            "correlation_id": "rate-001",
            "request_id": headers["x-request-id"],
        }
        assert int(headers["retry-after"]) >= 1


async def test_the_rate_is_per_key(rate_limited: Service) -> None:
    search = {"event_type": "stale_result"}
    answers = await asyncio.gather(
        *(post(rate_limited, "/v1/feedback", search, key=RATE_KEY) for _ in range(6))
    )
    assert 429 in [a[0] for a in answers]
    status, body, _ = await post(rate_limited, "/v1/feedback", search, key=RATE_KEY_B)
    assert status == 200, body
    assert body["access"]["rate_limit"]["remaining"] == 1  # a full bucket of 2, minus this request
    status, body, _ = await post(rate_limited, "/v1/feedback", search)  # the dev key is not in this file
    assert status == 401


async def test_large_body_under_the_default_limit_is_read_whole(ingest: Service) -> None:
    """~600 KB arrives in many TCP reads; the ingest must read all of it (it once parsed the first one)."""
    events = [{"id": str(uuid.uuid4()), "feedback": {"note": "n" * 2000}} for _ in range(300)]
    raw = orjson.dumps(events)
    assert 500_000 < len(raw) < 1_048_576
    status, answer, _ = await post(ingest, "/v1/feedback", None, raw=raw)
    assert status == 200, answer
    assert [list(a["feedback_ids"]) for a in answer] == [["note"]] * 300
