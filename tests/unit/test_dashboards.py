"""The Grafana dashboard and the Prometheus alerts: valid (promtool), tested (promtool test rules), and
asking only for metrics we export, with labels they have."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import pipeline.metrics
import pipeline.stream.partitions
import pipeline.stream.runtime
from pipeline.settings import REPO_ROOT

PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
DASHBOARD = json.loads((REPO_ROOT / "deploy" / "grafana" / "dashboards" / "feedstream.json").read_text())
ALERTS = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
#: Labels Prometheus adds to every scraped series, or that PromQL makes (histogram buckets).
TARGET_LABELS = {"job", "instance", "le"}
_ = pipeline.metrics.render  # the registry is filled by importing the modules above


def exported() -> dict[str, set[str]]:
    """Every series name our processes export, with its labels (histograms: _bucket, _sum, _count)."""
    out: dict[str, set[str]] = {"up": set()}
    for family in REGISTRY.collect():
        labels = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        names = {family.name}
        if family.type == "counter":
            names = {family.name + "_total"}
        elif family.type == "histogram":
            names = {family.name + s for s in ("_bucket", "_sum", "_count")}
        for name in names:
            out[name] = labels
    return out


def declared_labels() -> dict[str, set[str]]:
    """Label names of our metrics as declared (a labelled metric has no sample until used)."""
    out: dict[str, set[str]] = {}
    for collector in list(REGISTRY._collector_to_names):
        names = REGISTRY._collector_to_names[collector]
        labels = set(getattr(collector, "_labelnames", ()))
        for name in names:
            out[name] = labels
    return out


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard target and every alert."""
    out = [(p["title"], t["expr"]) for p in DASHBOARD["panels"] for t in p["targets"]]
    out += [(r["alert"], r["expr"]) for g in ALERTS["groups"] for r in g["rules"]]
    return out


_FUNCTIONS = {
    "sum", "max", "min", "avg", "rate", "increase", "delta", "histogram_quantile", "by", "and", "or",
    "unless", "on", "without", "ignoring", "count", "deriv", "humanizePercentage",
}  # fmt: skip
_NAME = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b\s*(\{[^}]*\})?")


def metric_uses(expr: str) -> list[tuple[str, set[str]]]:
    """The metric names an expression reads, each with the labels it filters or groups on."""
    groups = {
        g
        for m in re.finditer(r"\b(?:by|on)\s*\(([^)]*)\)", expr)
        for g in m.group(1).replace(" ", "").split(",")
    }
    cleaned = re.sub(r'"[^"]*"', '""', expr)
    cleaned = re.sub(r"\b(?:by|on)\s*\([^)]*\)", "", cleaned)
    cleaned = re.sub(r"\[[^\]]*\]", "", cleaned)
    uses = []
    for m in _NAME.finditer(cleaned):
        name = m.group(1)
        if name in _FUNCTIONS or name.isdigit():
            continue
        matchers = set(re.findall(r"([a-zA-Z_]+)\s*=~?", m.group(2) or ""))
        uses.append((name, matchers | groups))
    return uses


@pytest.mark.parametrize("where,expr", queries())
def test_every_query_reads_our_metrics_with_their_labels(where: str, expr: str) -> None:
    names = exported()
    labels = declared_labels()
    for name, used in metric_uses(expr):
        assert name in names, f"{where}: {name} is not a metric we export"
        base = re.sub(r"_(bucket|sum|count|total)$", "", name)
        have = labels.get(name, labels.get(base, set())) | names[name] | TARGET_LABELS
        assert used <= have, f"{where}: {name} has no label(s) {used - have}"


def test_the_dashboard_covers_what_operators_watch() -> None:
    text = json.dumps(DASHBOARD)
    for metric in (
        "feedstream_http_requests_total",
        "feedstream_http_request_duration_seconds_bucket",
        "feedstream_items_accepted_total",
        "feedstream_items_rejected_total",
        "feedstream_stage_batch_records_sum",
        "feedstream_processing_latency_seconds_bucket",
        "feedstream_pending_units",
        "feedstream_triggers_total",
        "feedstream_dlq_total",
        "feedstream_consumer_lag",
    ):
        assert metric in text, metric
    assert all(p["datasource"]["uid"] == "prometheus" for p in DASHBOARD["panels"])
    assert len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])


def test_the_alerts_operators_asked_for_exist() -> None:
    names = {r["alert"] for g in ALERTS["groups"] for r in g["rules"]}
    assert {
        "FeedstreamDeadLetters",
        "FeedstreamConsumerLagGrowing",
        "FeedstreamNoTriggerAtThreshold",
        "FeedstreamIngest5xx",
        "FeedstreamWorkerDown",
    } <= names


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: install Debian's prometheus package (bash .ci/run does)"
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ],
)
def test_promtool(args: list[str]) -> None:
    done = subprocess.run([promtool(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_the_metric_parser_sees_names_and_labels() -> None:
    uses = metric_uses('sum by (stage) (rate(feedstream_dlq_total{reason="x"}[5m])) > 0 and up{job="a"} == 0')
    assert uses == [("feedstream_dlq_total", {"stage", "reason"}), ("up", {"stage", "job"})]
    assert Path(PROMETHEUS / "alerts_test.yml").is_file()
