"""``make bench --rounds N``: each row is its median round by its ratio to the same round's loop."""

from __future__ import annotations

from typing import Any

from scripts.bench import median_rounds, table, verdict


def row(events_per_s: float, cpu: float, **extra: Any) -> dict[str, Any]:
    return {"label": "x", "events_per_s": events_per_s, "cpu_s_per_1k_events": cpu, **extra}


def test_ratios_are_taken_within_a_round_and_the_median_round_is_the_row() -> None:
    tx = [row(10_000, 0.05), row(20_000, 0.04), row(12_000, 0.06)]
    stage = [row(4_000, 0.20), row(5_000, 0.20), row(6_000, 0.18)]  # ratios 0.40, 0.25, 0.50
    runs = median_rounds({"tx": tx, "stage1": stage})
    assert runs["stage1"]["events_per_s"] == 4_000  # the median ratio's round, not the median events/s
    assert runs["stage1"]["vs_tx_events_per_s"] == 0.4
    assert runs["stage1"]["vs_tx_cpu_per_event"] == 0.2 / 0.05
    assert [r["vs_tx_events_per_s"] for r in runs["stage1"]["rounds"]] == [0.4, 0.25, 0.5]
    assert runs["tx"]["vs_tx_events_per_s"] == 1.0


def test_one_round_is_the_row_itself_and_every_round_is_checked() -> None:
    runs = median_rounds({"stage1": [row(4_000, 0.2)]})
    assert "rounds" not in runs["stage1"] and runs["stage1"]["events_per_s"] == 4_000
    bad = row(1, 1, triggers_seen=3, triggers_expected=4, duplicate_triggers=0)
    good = row(2, 1, triggers_seen=4, triggers_expected=4, duplicate_triggers=0)
    assert verdict({"runs": median_rounds({"stage1": [good, bad, good]})}) == ["x: triggers 3 != 4"]


def test_the_table_prints_every_round() -> None:
    common = {"processes": 1, "events_per_cpu_s": 1.0, "peak_rss_mib": {}, "machine_busy_cores": 1.0}
    tx = [row(10_000, 0.05, **common, other_busy_cores=0.5) for _ in range(2)]
    stage = [row(4_000, 0.2, **common, other_busy_cores=0.5), row(6_000, 0.2, **common, other_busy_cores=0.5)]
    report = {
        "runs": median_rounds({"tx": tx, "stage1": stage}),
        "clock": "c",
        "nproc": 2,
        "config": {"events": 1, "items": 1, "counting_units": 1, "topic_partitions": 4, "stage_batch": 500},
    }
    printed = table(report)
    assert "(events/s / CPU per event vs the round's loop): 0.40/4.00, 0.60/4.00" in printed
    assert "rounds of x (events/s): 10000, 10000" in printed


def test_a_rounds_latencies_sit_side_by_side_and_a_chain_that_fell_behind_fails() -> None:
    def phase(p50: float, caught_up: bool = True) -> dict[str, Any]:
        return {
            "rate_events_per_s": 400.0,
            "achieved_events_per_s": 399.0,
            "samples": 10,
            "p50": p50,
            "p90": p50,
            "p99": p50,
            "caught_up": caught_up,
        }

    common = {"processes": 2, "events_per_cpu_s": 1.0, "peak_rss_mib": {}, "machine_busy_cores": 1.0}
    stage = [
        row(4_000, 0.2, **common, other_busy_cores=0.5, trigger_latency_ms=[phase(p)]) for p in (120, 130)
    ]
    chain = [row(9_000, 0.1, **common, other_busy_cores=0.5, latency_ms=[phase(p)]) for p in (80, 90)]
    for r in (*stage, *chain):
        r["label"] = "stage1" if "trigger_latency_ms" in r else "chain"
    report = {
        "runs": median_rounds({"stage1": stage, "chain": chain}),
        "clock": "c",
        "nproc": 2,
        "config": {"events": 1, "items": 1, "counting_units": 1, "topic_partitions": 4, "stage_batch": 500},
    }
    lines = [line.split()[:-7] for line in table(report).splitlines() if "paced" in line]
    assert [" ".join(words) for words in lines] == [
        "stage1: trigger, paced (round 1)",
        "chain: record through 2 hops, paced (round 1)",
        "stage1: trigger, paced (round 2)",
        "chain: record through 2 hops, paced (round 2)",
    ]
    chain[1]["latency_ms"] = [phase(90, caught_up=False)]
    assert verdict({"runs": median_rounds({"chain": chain})}) == ["chain: paced phase at 400/s not caught up"]
