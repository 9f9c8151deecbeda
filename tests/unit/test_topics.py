"""``pipeline.kafka.topics`` without a broker: reading topic configs while metadata settles."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.kafka import topics

UNKNOWN_TOPIC = 3


class _Admin:
    """Answers DescribeConfigs (v1) with UNKNOWN_TOPIC_OR_PARTITION ``misses`` times, then the configs:
    what a broker whose metadata cache has not yet seen a topic just created elsewhere does."""

    def __init__(self, misses: int) -> None:
        self.misses = misses
        self.calls = 0

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        self.calls += 1
        entry = ("max.message.bytes", "1048588", False, 1, False)  # name, value, read-only, source, sensitive
        code = UNKNOWN_TOPIC if self.calls <= self.misses else 0
        rows = [(code, "", 2, r.name, [] if code else [entry]) for r in resources]
        return [SimpleNamespace(API_VERSION=1, resources=rows)]


async def test_describe_waits_for_a_topic_the_broker_does_not_know_yet() -> None:
    admin = _Admin(misses=2)
    got = await topics._describe(admin, ["t"])
    assert got == {"t": ({"max.message.bytes": "1048588"}, {"max.message.bytes": "1048588"})}
    assert admin.calls == 3


async def test_describe_gives_up_on_a_topic_that_never_appears(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics, "UNKNOWN_TOPIC_WAIT_S", 0.3)
    with pytest.raises(RuntimeError, match="Kafka error 3"):
        await topics._describe(_Admin(misses=10**6), ["t"])
