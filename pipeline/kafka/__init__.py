"""Kafka plumbing: topics, the transactional writer, a local broker.

Importing it tunes one aiokafka constant (:data:`TXN_RETRY_BACKOFF_S`), for every transactional
producer of the process (the stages' and the ingest's).
"""

from __future__ import annotations

import aiokafka.producer.sender as _sender

#: How long a transactional producer waits before asking again to add a partition to a transaction
#: the coordinator still reports busy (CONCURRENT_TRANSACTIONS: the last transaction's commit markers
#: are still being written, KAFKA-5477). aiokafka waits 20 ms; the markers take a few milliseconds on
#: a healthy broker, so every transaction begun right after a commit (every batch of a busy stage)
#: lost ~20 ms there: a probe of begin/send/offsets/commit cycles went from 28 ms to 7 ms with 2 ms
#: (docs/design.md, "Speed"). The retry is a small request to the coordinator only.
TXN_RETRY_BACKOFF_S = 0.002

if not hasattr(_sender, "BACKOFF_OVERRIDE"):  # pragma: no cover - an aiokafka upgrade renamed it
    raise ImportError("aiokafka.producer.sender.BACKOFF_OVERRIDE is gone: review pipeline/kafka/__init__.py")
_sender.BACKOFF_OVERRIDE = TXN_RETRY_BACKOFF_S
