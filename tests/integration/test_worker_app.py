"""The worker as a faust app: the stages are its service, its own Kafka clients never start.

faust's consumer would join a group named after the app (and create a leader topic) that nothing
reads; the stages consume in groups of their own. Checked on the running session worker.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from pipeline import FeedbackPublisher
from pipeline.kafka.broker import Broker
from pipeline.kafka.topics import delete_prefixed_topics, topic_names
from pipeline.procs import Service, free_port, worker_service
from pipeline.settings import Settings
from pipeline.tenants import load_tenants
from tests.conftest import LOG_DIR, TEST_TENANTS
from tests.kafka_helpers import read_until, run


async def test_only_the_stages_consumer_groups_exist_and_no_faust_leader_topic(
    worker: Service, settings: Settings, broker: Broker
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        groups = {g[0] for g in await admin.list_consumer_groups()}
        topics = set(await admin.list_topics())
    finally:
        await admin.close()
    ours = {g for g in groups if g == settings.worker_id or g.startswith(settings.worker_id + "-")}
    assert ours == {f"{settings.worker_id}-{stage}" for stage in ("expand", "count", "store")}
    assert not [t for t in topics if t.startswith(settings.worker_id)], "faust created topics of its own"


# --- stages as separate processes (WORKER_STAGES) ---------------------------------------------------


def ready_body(svc: Service) -> dict[str, Any]:
    """``/ready``'s JSON (200 or 503), or {} while the web server is not up."""
    try:
        with urllib.request.urlopen(svc.health_url, timeout=2) as resp:
            body: dict[str, Any] = json.loads(resp.read())
            return body
    except urllib.error.HTTPError as err:
        body = json.loads(err.read())
        return body
    except OSError:
        return {}


def wait_split(
    services: list[Service], stage: str, partitions: int, timeout_s: float = 60.0
) -> list[list[int]]:
    """Until every service is ready and they own ``stage``'s partitions between them, each some, none
    twice (a consumer group's rebalance settled); the partitions each owns."""
    deadline = time.monotonic() + timeout_s
    owned: list[list[int]] = []
    while time.monotonic() < deadline:
        bodies = [ready_body(s) for s in services]
        owned = [sorted(b.get(stage, [])) for b in bodies]
        flat = [p for ps in owned for p in ps]
        if all(b.get("ready") for b in bodies) and all(owned) and sorted(flat) == list(range(partitions)):
            return owned
        time.sleep(0.3)
    raise AssertionError(f"{stage}'s partitions not split over {len(services)} processes: {owned}")


async def groups_of(bootstrap: str, worker_id: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        groups = {g[0] for g in await admin.list_consumer_groups()}
    finally:
        await admin.close()
    return {g for g in groups if g == worker_id or g.startswith(worker_id + "-")}


def test_each_stage_in_its_own_processes_ready_on_its_stage_only_and_scaling_by_group(
    service_env: dict[str, str], broker: Broker
) -> None:
    """expand and count in separate processes (two count processes): each process joins only its
    stage's group, ``/ready`` names only its stage, the count processes split the partitions, and
    a request flows through them to its results."""
    prefix = f"stg{uuid.uuid4().hex[:8]}."
    settings = Settings(
        kafka_bootstrap_servers=broker.bootstrap,
        topic_prefix=prefix,
        worker_id=f"w-{prefix[:-1]}",
        tenants_file=TEST_TENANTS,
    )
    env = dict(service_env, TOPIC_PREFIX=prefix, WORKER_ID=settings.worker_id)
    logs = LOG_DIR / prefix
    services: list[Service] = []
    try:
        count_1 = worker_service(env, free_port(), logs, name="count-1", stages=["count"]).start()
        services.append(count_1)
        count_1.wait_ready()
        assert ready_body(count_1) == {"ready": True, "count": list(range(settings.topic_partitions))}
        assert run(groups_of(broker.bootstrap, settings.worker_id)) == {f"{settings.worker_id}-count"}

        expand = worker_service(env, free_port(), logs, name="expand", stages=["expand"]).start()
        count_2 = worker_service(env, free_port(), logs, name="count-2", stages=["count"]).start()
        services += [expand, count_2]
        expand.wait_ready()
        assert set(ready_body(expand)) == {"ready", "expand"}
        wait_split([count_1, count_2], "count", settings.topic_partitions)
        assert run(groups_of(broker.bootstrap, settings.worker_id)) == {
            f"{settings.worker_id}-expand",
            f"{settings.worker_id}-count",
        }

        async def publish() -> list[str]:
            async with FeedbackPublisher(
                broker.bootstrap, load_tenants(TEST_TENANTS), "stream", settings=settings
            ) as pub:
                items = [
                    {"seeker_id": f"u_s{i}", "candidate_id": f"u_c{i}", "outcome": "accepted"}
                    for i in range(8)
                ]
                result = await pub.publish({"domain": "s_three", "items": items})
                return result.event_ids

        event_ids = set(run(publish()))
        names = topic_names(settings)
        results = run(
            read_until(
                broker.bootstrap,
                names.results,
                lambda r: json.loads(r.value or b"{}").get("event_id") in event_ids,
                count=len(event_ids),
                timeout_s=60,
            )
        )
        assert {json.loads(r.value or b"{}")["event_id"] for r in results} == event_ids
    finally:
        for svc in reversed(services):
            svc.stop()
        for doomed in (prefix, settings.worker_id + "-"):
            run(delete_prefixed_topics(broker.bootstrap, doomed))
