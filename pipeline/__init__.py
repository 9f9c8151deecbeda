"""feedstream: an event-stream feedback pipeline on Kafka (ingest, stream agents, train triggers)."""

__version__ = "0.1.0"
