"""``feedstream status`` and the worker's ``GET /status`` page on the real broker, the page loaded in
headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it when missing).

Its own topics and worker: a domain crosses its threshold once and keeps some units pending, a raw
record that is not JSON is dead-lettered; the snapshot, the command and the rendered page all say so.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pytest
from cloudevents.core.bindings import kafka

from pipeline.api.publisher import FeedbackPublisher
from pipeline.kafka.broker import Broker
from pipeline.ops.status import collect
from pipeline.tenants import load_tenants
from tests.kafka_helpers import produce, read_until
from tests.stacks import Stack, own_stack

pytestmark = pytest.mark.slow
DOMAIN = "st_three"


@pytest.fixture
def stack(broker: Broker, service_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    with own_stack(broker, service_env, tmp_path, "st", {"stream": {DOMAIN: {"threshold": 3}}}) as s:
        yield s


class Cells(HTMLParser):
    """``data-field`` cells by their row's identifying attribute (data-domain, data-stage...)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.fields: dict[str, str] = {}
        self._field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "tr":
            self.rows.append({k: v for k, v in a.items() if k.startswith("data-")})
        if "data-field" in a:
            self._field = a["data-field"]

    def handle_data(self, data: str) -> None:
        if self._field is not None and data.strip():
            target = self.rows[-1] if self.rows and self._field != "dlq-size" else self.fields
            target[self._field] = data.strip()
            self._field = None


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "headless Chromium is missing: install Debian's chromium (bash .ci/run does)"
    return path


def browse(url: str, *extra: str) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    done = subprocess.run([chromium(), *flags, *extra, url], capture_output=True, timeout=90, check=True)
    return done.stdout.decode()


async def test_status_shows_domains_lag_and_dead_letters_in_the_command_and_a_real_browser(
    stack: Stack, tmp_path: Path
) -> None:
    pub = FeedbackPublisher(stack.bootstrap, load_tenants(stack.tenants), "stream", settings=stack.settings)
    worker = stack.worker(stages=("expand", "count", "store"))
    try:
        async with pub:
            for n in range(2):  # 3 units each (accepted, rejected, converted): a crossing, then 3 pending
                seeker = f"s{n}-{uuid.uuid4().hex[:6]}"
                items = [
                    {"seeker_id": seeker, "candidate_id": c, "outcome": o}
                    for c, o in (("bob", "accepted"), ("carl", "rejected"), ("dan", "converted"))
                ]
                await pub.publish({"domain": DOMAIN, "items": items})
        await produce(stack.bootstrap, stack.names.raw, b"<not json>", key=b"k")
        units = await read_until(
            stack.bootstrap,
            stack.names.triplets,
            lambda r: orjson.loads(r.value)["domain"] == DOMAIN,
            count=6,
            timeout_s=60,
        )
        counted = sum(orjson.loads(u.value)["counts"] for u in units)
        await read_until(stack.bootstrap, stack.names.dlq, lambda r: True, timeout_s=60)
        snap = await collect(stack.settings, stack.bootstrap)
        for _ in range(50):  # the counter's changelog commits with the units; wait for caught-up lag
            if all(s.lag == 0 for s in snap.stages):
                break
            await asyncio.sleep(0.2)
            snap = await collect(stack.settings, stack.bootstrap)

        # the snapshot
        [d] = [d for d in snap.domains if d.domain == DOMAIN]
        assert (d.total, d.threshold, d.tenant) == (counted, 3, "stream")
        assert d.last_trigger is not None and d.last_trigger.count == 3 and d.sequence == counted // 3
        assert d.pending == counted - 3 * d.sequence
        assert (d.pending_since is not None) == (d.pending > 0)
        assert {s.stage for s in snap.stages} == {"expand", "count", "store"}
        assert all(s.lag == 0 for s in snap.stages), snap.stages  # the store's offsets: from its database
        assert any(s.committed for s in snap.stages if s.stage == "store")
        assert snap.dlq.size == 1 and snap.dlq.by_reason == {"schema_violation": 1}

        # the trigger as a CloudEvent (Kafka binary mode), as Argo Events or Knative read it
        last = d.last_trigger.trigger_id.encode()
        [rec] = await read_until(
            stack.bootstrap, stack.names.triggers, lambda r: last in r.value, timeout_s=10
        )
        event = kafka.from_binary_event(kafka.KafkaMessage(dict(rec.headers), rec.key, rec.value))
        assert (event.get_id(), event.get_subject()) == (d.last_trigger.trigger_id, DOMAIN)
        assert event.get_type() == "io.feedstream.train.trigger"
        assert event.get_source() == f"/feedstream/{stack.settings.worker_id}"
        assert event.get_time() == d.last_trigger.emitted_at and event.get_data() == orjson.loads(rec.value)

        # the command
        as_json = json.loads(await stack.feedstream("status", "--json"))
        [row] = [x for x in as_json["domains"] if x["domain"] == DOMAIN]
        assert (row["pending"], row["total"], row["sequence"]) == (d.pending, d.total, d.sequence)
        table = await stack.feedstream("status")
        assert DOMAIN in table and "dead letters: 1 (schema_violation 1)" in table

        # the page, as a browser renders it
        url = worker.health_url.rsplit("/", 1)[0] + "/status"
        page = Cells()
        page.feed(browse(url, "--dump-dom"))
        [shown] = [r for r in page.rows if r.get("data-domain") == DOMAIN]
        assert (shown["pending"], shown["threshold"], shown["total"]) == (str(d.pending), "3", str(counted))
        assert shown["last-trigger"].startswith(f"#{d.sequence} threshold")
        assert page.fields["dlq-size"] == "1"
        assert [r["reason"] for r in page.rows if "data-letter" in r] == ["schema_violation"]
        lags = {
            (r["data-stage"], r["data-topic"], r["data-partition"]): r["lag"]
            for r in page.rows
            if "data-stage" in r
        }
        assert len(lags) == 4 * stack.settings.topic_partitions  # expand, count; store reads two topics
        assert all(v == "0" for v in lags.values())
        # the worker's own lag gauge says the same (no request of its own: from its fetches)
        metrics = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url[:-6] + "metrics").read().decode()
        )
        gauges = {
            line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("feedstream_consumer_lag{")
        }
        for stage, topic in (("expand", stack.names.raw), ("count", stack.names.units)):
            mine = [v for k, v in gauges.items() if f'stage="{stage}"' in k and f'topic="{topic}"' in k]
            assert len(mine) == stack.settings.topic_partitions and not any(mine), gauges
        shot = tmp_path / "status.png"
        browse(url, f"--screenshot={shot}", "--window-size=1200,1400")
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    finally:
        worker.stop()


def test_the_page_escapes_what_comes_from_outside() -> None:
    from datetime import UTC, datetime

    from pipeline.ops.page import render_status
    from pipeline.ops.status import DlqStatus, DomainStatus, LetterSummary, Snapshot

    at = datetime(2026, 1, 1, tzinfo=UTC)
    evil = '<script>alert("x")</script>'
    snap = Snapshot(
        taken_at=at,
        domains=[
            DomainStatus(
                domain=evil,
                tenant="t",
                pending=2,
                threshold=4,
                total=9,
                sequence=0,
                pending_since=None,
                oldest_pending_age_s=None,
                last_trigger=None,
                last_training=None,
            )
        ],
        stages=[],
        dlq=DlqStatus(
            size=1,
            by_reason={"schema_violation": 1},
            latest=[
                LetterSummary(
                    letter="0:1", stage="expand", reason="schema_violation", error=evil, failed_at=at
                )
            ],
        ),
    )
    html = render_status(snap)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'style="width:50.0%"' in html  # the pending bar: 2 of 4
    cells = Cells()
    cells.feed(html)
    assert cells.fields["dlq-size"] == "1"
    assert [r["pending"] for r in cells.rows if "data-domain" in r] == ["2"]
