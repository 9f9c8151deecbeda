"""The worker as a faust app: the stages are its service, its own Kafka clients never start.

faust's consumer would join a group named after the app (and create a leader topic) that nothing
reads; the stages consume in groups of their own. Checked on the running session worker.
"""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient

from pipeline.kafka.broker import Broker
from pipeline.procs import Service
from pipeline.settings import Settings


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
