"""``make run``: a whole local pipeline (broker, ingest, one worker process per stage), one sample,
until Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.request

from aiokafka import AIOKafkaConsumer

from pipeline.kafka.broker import find_broker
from pipeline.kafka.topics import ensure_topics, topic_names
from pipeline.procs import Service, ingest_service, worker_service
from pipeline.settings import ALL_STAGES, REPO_ROOT, Settings, WorkerStage
from pipeline.store.sql import describe

DEV_KEY = "fs_dev_key_123"
SAMPLE = {
    "domain": "dating",
    "items": [
        {"seeker_id": "u_alice", "candidate_id": "u_bob", "outcome": "accepted"},
        {"seeker_id": "u_alice", "candidate_id": "u_carl", "outcome": "rejected"},
        {"seeker_id": "u_alice", "candidate_id": "u_dan", "outcome": "converted", "weight": 2.0},
    ],
}


def worker_layout(settings: Settings) -> list[tuple[str, int, tuple[WorkerStage, ...]]]:
    """(name, port, stages) of ``make run``'s workers: one process per stage, so the stages use the
    machine's cores side by side; ports ``WORKER_PORT``, +1, +2 in data-flow order."""
    return [(f"worker-{stage}", settings.worker_port + i, (stage,)) for i, stage in enumerate(ALL_STAGES)]


def post(url: str, body: object) -> tuple[int, str]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {DEV_KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def show(bootstrap: str, topic: str, needles: list[str], timeout_s: float = 15.0) -> list[str]:
    """The records of ``topic`` that mention one of ``needles`` (read_committed, from the start)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        group_id=None,
    )
    await consumer.start()
    found: list[str] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        first_seen: float | None = None
        while loop.time() < deadline and (first_seen is None or loop.time() < first_seen + 1.0):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += [
                    r.value.decode()
                    for r in records
                    if r.value and any(n.encode() in r.value for n in needles)
                ]
            if found and first_seen is None:
                first_seen = loop.time()  # one more second: the rest of its transaction
        return found
    finally:
        await consumer.stop()


def main() -> int:
    settings = Settings()
    log_dir = REPO_ROOT / ".local" / "run"
    with find_broker(stop_on_exit=True) as broker:
        print(f"broker: {broker.bootstrap} ({broker.kind})")
        asyncio.run(ensure_topics(broker.bootstrap, settings))
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap)
        ingest = ingest_service(env, settings.ingest_port, log_dir).start()
        layout = worker_layout(settings)
        workers: list[Service] = [
            worker_service(env, port, log_dir, name=name, stages=stages).start()
            for name, port, stages in layout
        ]
        try:
            ingest.wait_ready()
            for worker in workers:
                worker.wait_ready()
            url = f"http://127.0.0.1:{settings.ingest_port}"
            status, body = post(f"{url}/v1/feedback", SAMPLE)
            print(f"POST {url}/v1/feedback (seed 000 sample) -> {status} {body}")
            request_id = json.loads(body).get("request_id", "")
            names = topic_names(settings)
            raw = asyncio.run(show(broker.bootstrap, names.raw, [request_id]))
            print(f"\n{names.raw}: {len(raw)} event(s), e.g. {raw[0] if raw else '-'}")
            event_ids = [json.loads(r)["event_id"] for r in raw]
            for topic in (names.signals, names.triplets):
                records = asyncio.run(show(broker.bootstrap, topic, event_ids))
                example = records[0] if records else "-"
                print(f"\n{topic}: {len(records)} record(s) of this request, e.g. {example}")
            metrics_lines = "\n".join(
                f"  {name:<16} http://127.0.0.1:{port}/metrics (and /ready)" for name, port, _ in layout
            )
            print(f"""
The pipeline is running. Try:
  curl -s -XPOST {url}/v1/feedback -H 'Authorization: Bearer {DEV_KEY}' -d '{json.dumps(SAMPLE)}'
  ingest metrics   {url}/metrics        OpenAPI {url}/openapi.json
{metrics_lines}
  domain state     curl -s {url}/v1/domains/dating -H 'Authorization: Bearer {DEV_KEY}'
  seed 003 list    curl -s '{url}/api/v1/feedback?limit=20' -H 'X-API-Key: kaizen_abc123'
  feedback store   {describe(settings)} (the worker's store stage writes it; DATABASE_URL for PostgreSQL)
  status           .venv/bin/feedstream status (all commands: --help); page 127.0.0.1:{layout[0][1]}/status
  logs             {log_dir}/
Ctrl-C stops the ingest, the workers and the local broker.""")
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            print("stopping ...")
            for worker in reversed(workers):
                worker.stop()
            ingest.stop()
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
