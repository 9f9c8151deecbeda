"""What every ``feedstream`` command needs: the settings and where the broker is."""

from __future__ import annotations

import os

from pipeline.kafka.topics import TopicNames, topic_names
from pipeline.settings import Settings, get_settings


def bootstrap(settings: Settings) -> str:
    """``KAFKA_BOOTSTRAP_SERVERS``, else the local broker of ``make run`` (deploy/kafka/broker.sh)."""
    if settings.kafka_bootstrap_servers:
        return settings.kafka_bootstrap_servers
    return f"127.0.0.1:{os.environ.get('LOCAL_KAFKA_PORT', '9092')}"


def connect() -> tuple[Settings, str, TopicNames]:
    settings = get_settings()
    return settings, bootstrap(settings), topic_names(settings)
