"""Readers of the count stage's changelog (the ingest's view, ``feedstream status``) see counters only:
the stage's input offset, a record of the same changelog (``InputOffset``), is not a domain."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord

from pipeline.api.stream_view import StreamView
from pipeline.kafka.topics import topic_names
from pipeline.ops.status import counters_of
from pipeline.rules.counters import DomainCounter
from pipeline.settings import Settings
from pipeline.wire.records import InputOffset, input_offset_key, to_json

NAMES = topic_names(Settings(topic_prefix="p."))
OFFSET = (input_offset_key(NAMES.units), to_json(InputOffset(next_offset=7)))
COUNTER = (b"dating", to_json(DomainCounter(pending=2, total=5)))


def test_the_ingest_view_keeps_counters_and_passes_over_input_offsets() -> None:
    view = StreamView("unused:9092", NAMES, max_bytes_per_tenant=1 << 20)
    for key, value in (COUNTER, OFFSET):
        view._apply(NAMES.count_state, key, value)
    assert list(view.domains) == ["dating"] and view.domains["dating"].total == 5


def test_status_counters_pass_over_input_offsets() -> None:
    records = [
        ConsumerRecord(NAMES.count_state, 0, i, 0, 0, key, value, None, 0, 0, ())
        for i, (key, value) in enumerate((COUNTER, OFFSET))
    ]
    counters = counters_of(records)
    assert list(counters) == ["dating"] and counters["dating"].pending == 2
