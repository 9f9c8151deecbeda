"""The ingest's life cycle on the real broker: SIGTERM drains, a fenced ingest says so.

Each test starts its own ingest processes (as users run them) against the session's topics.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import ConsumerRecord

from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import TopicNames
from pipeline.procs import Service
from tests.conftest import ingest_starter
from tests.http_helpers import DEV_KEY, base_url, post
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def start_ingest(service_env: dict[str, str]) -> Iterator[Callable[..., Service]]:
    """Ingests of the session's instance id (the fencing test starts two), stopped after it."""
    with ingest_starter(service_env, own_instance=False) as start:
        yield start


async def written(broker: Broker, names: TopicNames, correlation_ids: set[str]) -> set[str]:
    wanted = {c.encode() for c in correlation_ids}

    def match(r: ConsumerRecord[bytes, bytes]) -> bool:
        return dict(r.headers).get("correlation_id") in wanted

    recs = await read_until(broker.bootstrap, names.raw, match, count=len(wanted), settle_s=0.5, timeout_s=30)
    return {dict(r.headers)["correlation_id"].decode() for r in recs}


# --- SIGTERM drains -----------------------------------------------------------------------------


async def test_sigterm_under_load_answers_every_request_and_loses_nothing_answered(
    start_ingest: Callable[..., Service], broker: Broker, names: TopicNames
) -> None:
    svc = start_ingest("ingest-drain", ingest_instance=f"drain-{uuid.uuid4().hex[:8]}", drain_timeout_s=15)
    url = base_url(svc) + "/v1/feedback"
    tag = uuid.uuid4().hex[:8]
    ok: list[str] = []
    draining: list[int] = []
    refused: list[str] = []
    broken: list[str] = []

    async def client(n: int) -> None:
        # a fresh connection per request: a reset can only be the server's doing
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            for i in range(100_000):
                cid = f"drain-{tag}-{n}-{i}"
                body: Any = (
                    {"event_type": "result_helpful", "query": cid}
                    if i % 2
                    else [{"id": str(uuid.uuid4()), "feedback": {"ok": True, "n": i}}]
                )
                headers = {"Authorization": f"Bearer {DEV_KEY}", "X-Correlation-Id": cid}
                try:
                    async with session.post(url, data=orjson.dumps(body), headers=headers) as resp:
                        answer = orjson.loads(await resp.read())
                        if resp.status == 200:
                            ok.append(cid)
                        elif resp.status == 503 and answer["error"]["code"] == "DRAINING":
                            draining.append(n)
                            return
                        elif resp.status == 429 and answer["error"]["code"] == "RATE_LIMITED":
                            # the dev key's 200/s: a fast machine gets there with 12 clients; an
                            # answer like any other (nothing written), so wait as told and go on
                            await asyncio.sleep(float(resp.headers.get("Retry-After", "0.05")))
                        else:
                            broken.append(f"{cid}: {resp.status} {answer}")
                            return
                except aiohttp.ClientConnectorError:
                    refused.append(cid)  # the listener is gone: never accepted, never answered
                    return
                except (aiohttp.ClientError, OSError) as exc:
                    broken.append(f"{cid}: {exc!r}")
                    return

    clients = [asyncio.create_task(client(n)) for n in range(12)]
    await asyncio.sleep(1.5)
    assert len(ok) > 20, (ok, broken)
    before = len(ok)
    assert svc.proc is not None
    os.killpg(svc.proc.pid, signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*clients), 30)
    code = await asyncio.to_thread(svc.proc.wait, 30)

    assert broken == []  # no request reset, no unexpected status
    assert code == 0
    assert len(ok) >= before  # requests in flight at SIGTERM were answered
    assert draining or refused
    assert await written(broker, names, set(ok)) == set(ok)  # every 2xx is on feedback.raw
    log = svc.log_path.read_text()
    assert "draining: new requests get 503" in log and "ingest stopped after draining" in log


# --- fencing ----------------------------------------------------------------------------------------


async def test_two_ingests_with_one_instance_id_the_fenced_one_says_so_and_answers_503(
    start_ingest: Callable[..., Service],
) -> None:
    shared = f"shared-{uuid.uuid4().hex[:8]}"
    first = start_ingest("ingest-fenced-a", ingest_instance=shared)
    second = start_ingest("ingest-fenced-b", ingest_instance=shared)  # fences the first one's producers
    search = {"event_type": "result_helpful"}
    # one record needs no transaction (an idempotent send, no transactional id to fence): the first
    # transactional write, a request of several records, is where Kafka tells the first one
    item = {"candidate_id": "bob", "outcome": "accepted"}
    two = {"domain": "dating", "items": [{**item, "seeker_id": s} for s in ("ann", "bea")]}  # two records
    status, answer, _ = await post(first, "/v1/feedback", two)
    assert status == 503 and "INGEST_INSTANCE" in answer["error"]["message"], answer

    statuses = [(await post(first, "/v1/feedback", search))[0] for _ in range(3)]
    assert set(statuses) == {503}, statuses
    status, answer, _ = await post(first, "/v1/feedback", search)
    assert status == 503 and "INGEST_INSTANCE" in answer["error"]["message"]
    async with aiohttp.ClientSession() as session, session.get(first.health_url) as resp:
        assert resp.status == 503
        assert "fenced" in (await resp.json())["reason"]
    log = first.log_path.read_text()
    assert "FENCED" in log and "INGEST_INSTANCE" in log and f"{shared}-" in log

    for _ in range(5):  # the fenced one does not fence back: the other keeps working
        status, answer, _ = await post(second, "/v1/feedback", search)
        assert status == 200, answer
        assert (await post(first, "/v1/feedback", search))[0] == 503
