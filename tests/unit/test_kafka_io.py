"""The transactional writer's settings and fencing detection (no broker needed)."""

from __future__ import annotations

import pytest
from aiokafka.errors import InvalidProducerEpoch, KafkaTimeoutError, ProducerFenced

from pipeline.kafka.io import PublishError, TransactionalWriter, is_fencing


async def test_transaction_timeout_is_what_a_group_commit_needs() -> None:
    """A dead ingest's open transaction holds read_committed readers back this long (it was 20 s)."""
    writer = TransactionalWriter("127.0.0.1:1", transactional_id="t", timeout_s=5)
    producer = writer._new_producer(0)
    try:
        assert producer._txn_manager.transaction_timeout_ms == 6000
    finally:
        await producer.stop()


@pytest.mark.parametrize(
    ("exc", "fenced"),
    [
        (ProducerFenced(), True),
        (InvalidProducerEpoch(), True),
        (KafkaTimeoutError(), False),
        (PublishError("x"), False),
    ],
)
def test_fencing_is_recognised_also_when_wrapped(exc: BaseException, fenced: bool) -> None:
    assert is_fencing(exc) is fenced
    try:
        raise RuntimeError("commit failed") from exc
    except RuntimeError as wrapped:
        assert is_fencing(wrapped) is fenced


async def test_a_fenced_writer_refuses_writes_at_once() -> None:
    writer = TransactionalWriter("127.0.0.1:1", transactional_id="t", timeout_s=5)
    writer.fenced = "Kafka fenced this writer"
    with pytest.raises(PublishError, match="fenced"):
        await writer.write([object()])  # type: ignore[list-item]
