"""Train triggers as CloudEvents (Kafka protocol binding, binary mode), so tools that start jobs from
CloudEvents on Kafka (Argo Events, Knative's KafkaSource, Airflow's Kafka triggers) take them without
glue: the attributes travel as ``ce_*`` headers, the body stays the trigger's JSON (its schema is
``ce_dataschema``). Built with the cloudevents SDK, so the headers are what its readers parse.
"""

from __future__ import annotations

from cloudevents.core.bindings import kafka
from cloudevents.core.v1.event import CloudEvent

from pipeline.wire.records import TrainTrigger

TRIGGER_TYPE = "io.feedstream.train.trigger"
TRIGGER_SCHEMA = "https://feedstream.dev/schemas/train.triggers.schema.json"


def trigger_headers(trigger: TrainTrigger, *, source: str) -> list[tuple[str, bytes]]:
    """The ``ce_*`` and ``content-type`` headers of ``trigger``: id = trigger_id (one per domain and
    sequence, so a replayed trigger is the same event), subject = domain, time = emitted_at."""
    event = CloudEvent(
        attributes={
            "specversion": "1.0",
            "id": trigger.trigger_id,
            "type": TRIGGER_TYPE,
            "source": source,
            "subject": trigger.domain,
            "time": trigger.emitted_at,
            "datacontenttype": "application/json",
            "dataschema": TRIGGER_SCHEMA,
        },
        data=None,
    )
    return list(kafka.to_binary_event(event).headers.items())
