"""Train triggers as CloudEvents in Kafka binary mode: what Argo Events, Knative and Airflow's Kafka
triggers read, parsed back here with the cloudevents SDK exactly as they would."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from cloudevents.core.bindings import kafka

from pipeline.rules.counters import DomainCounter, count_units
from pipeline.wire.cloudevents import TRIGGER_TYPE, trigger_headers
from pipeline.wire.records import TrainTrigger, to_json

AT = datetime(2026, 11, 27, 10, 35, 1, 250000, tzinfo=UTC)


def trigger() -> TrainTrigger:
    _, [t] = count_units(
        DomainCounter(),
        domain="dating",
        threshold=2,
        partition=1,
        offsets_and_counts=[(7, True), (8, True)],
        at=AT,
    )
    return t


def test_a_trigger_is_a_binary_mode_cloudevent_with_its_json_body() -> None:
    t = trigger()
    headers = trigger_headers(t, source="/feedstream/fs")
    assert isinstance(headers, list) and all(isinstance(v, bytes) for _, v in headers)
    body = to_json(t)
    event = kafka.from_binary_event(kafka.KafkaMessage(headers=dict(headers), key=b"dating", value=body))
    assert event.get_specversion() == "1.0"
    assert event.get_id() == t.trigger_id
    assert event.get_type() == TRIGGER_TYPE == "io.feedstream.train.trigger"
    assert event.get_source() == "/feedstream/fs"
    assert event.get_subject() == "dating"
    assert event.get_time() == AT
    assert event.get_datacontenttype() == "application/json"
    assert event.get_dataschema() == "https://feedstream.dev/schemas/train.triggers.schema.json"
    assert event.get_data() == orjson.loads(body)
    assert dict(headers)["ce_time"] == b"2026-11-27T10:35:01.250000Z"


def test_the_headers_are_a_pure_function_of_the_trigger() -> None:
    t = trigger()
    assert trigger_headers(t, source="/s") == trigger_headers(t, source="/s")
