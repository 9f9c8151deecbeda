"""Stage 1, expand: raw events become signals and training units.

The rules (:func:`pipeline.rules.expansion.expand_event`) behind a thin stage on
:mod:`pipeline.stream.runtime`. State: the recent
outcomes of each (domain, seeker) / search anchor, so outcomes arriving one at a time pair with
earlier ones, and the partition's stream time (key ``\x00clock``). Every raw event yields one
``UnitsBatch`` (possibly empty) keyed by domain, sent as one or more ``feedback.units`` messages
(chunks under :data:`pipeline.kafka.topics.UNITS_CHUNK_BYTES`), which the counting stage turns into
triplet records, counts and triggers, and a result per chunk for the ingest.

Histories expire by stream time: every ``sweep_every`` of stream time, the histories whose newest
outcome is older than ``SEEKER_MAX_AGE_S`` are deleted (tombstones on the changelog) in the batch's
own transaction. The rules cut histories at the same age, so a sweep never changes an output.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec

from pipeline import contracts, metrics
from pipeline.contracts import expand_event
from pipeline.kafka.topics import UNITS_CHUNK_BYTES, TopicNames
from pipeline.rules.expansion import ExpandState, decode_state
from pipeline.rules.triplets import Limits, SeekerHistory, StreamClock, expired
from pipeline.stream.runtime import Record, Table, Tx, output_headers
from pipeline.wire.envelope import Envelope, array_parts, is_array
from pipeline.wire.records import RawUnitsBatch, UnitsBatch, to_json

#: The clock's key: table keys of histories always contain '/', so it cannot collide.
CLOCK_KEY = b"\x00clock"


def chunk_batch(batch: UnitsBatch, budget: int = UNITS_CHUNK_BYTES) -> list[bytes]:
    """The ``feedback.units`` messages of one batch: itself if its units fit ``budget`` bytes, else
    chunks of consecutive units each under ``budget`` (a unit bigger than that is a chunk alone),
    numbered ``chunk`` 0..``chunks``-1 in order.

    The batch is encoded once; only a batch over budget has its units encoded one by one, and the
    chunks carry those bytes as they are (``RawUnitsBatch``) instead of encoding each unit again.
    """
    whole = to_json(batch)
    if len(whole) <= budget or len(batch.units) <= 1:
        return [whole]
    groups: list[list[msgspec.Raw]] = [[]]
    size = 0
    for unit in batch.units:
        raw = msgspec.Raw(to_json(unit))
        n = len(raw) + 1  # and a comma
        if groups[-1] and size + n > budget:
            groups.append([])
            size = 0
        groups[-1].append(raw)
        size += n
    fields = {f: getattr(batch, f) for f in batch.__struct_fields__}
    return [
        to_json(RawUnitsBatch(**{**fields, "units": group, "chunk": i, "chunks": len(groups)}))
        for i, group in enumerate(groups)
    ]


class ExpandStage:
    """Thin shell: decode, apply ``expand_event``, send; the runtime dead-letters what fails."""

    name = "expand"

    def __init__(
        self,
        names: TopicNames,
        limits: Limits,
        shared_pool: str,
        *,
        chunk_bytes: int = UNITS_CHUNK_BYTES,
        sweep_every: timedelta | None = None,
    ) -> None:
        self.names = names
        self.limits = limits
        self.shared_pool = shared_pool
        self.chunk_bytes = chunk_bytes
        # often enough that an expired history lingers a small part of its age, at most hourly
        self.sweep_every = sweep_every or min(
            timedelta(hours=1), timedelta(seconds=limits.max_age_seconds / 10)
        )

    def decode_state(self, value: bytes) -> ExpandState:
        return decode_state(value)

    def encode_state(self, state: ExpandState) -> bytes:
        return to_json(state)

    async def process(self, records: Sequence[Record], table: Table[ExpandState], tx: Tx) -> None:
        clock = table.get(CLOCK_KEY)
        clock = clock if isinstance(clock, StreamClock) else None
        stream_time = clock.stream_time if clock else None
        now = time.time()
        events: collections.Counter[tuple[str, str]] = collections.Counter()
        signals: collections.Counter[str] = collections.Counter()
        latencies: list[float] = []  # observed once per batch
        # Signals keep the raw key, in the raw record's own partition when the topics have as many:
        # per-key order whatever partitioner wrote the raw topic (ours and the publisher's give the
        # same), no hash per record, one signals partition per transaction (fewer commit markers).
        signals_partition = await tx.co_partition(self.names.signals, records[0]) if records else None
        for rec, event, whole in await self.events(records, tx):
            result = await tx.attempt(
                rec,
                expand_event,
                event,
                table,
                limits=self.limits,
                shared_pool=self.shared_pool,
                stream_time=stream_time,
            )
            if result is None:
                continue
            headers = output_headers(rec)
            # a part of an array has a key of its own (its partition by hash); a record keeps its own
            partition = signals_partition if whole else None
            for signal in result.signals:
                await tx.send(self.names.signals, signal, key=rec.key, partition=partition, headers=headers)
            for batch in result.batches:
                for message in chunk_batch(batch, self.chunk_bytes):
                    await tx.send(self.names.units, message, key=batch.domain.encode(), headers=headers)
            if result.state_key is not None:
                if result.history is None:
                    table.delete(result.state_key)
                else:
                    table[result.state_key] = result.history
            if stream_time is None or event.received_at > stream_time:
                stream_time = event.received_at
            events[str(event.contract), event.domain] += 1
            signals[event.domain] += len(result.signals)
            if result.discarded:
                metrics.DISCARDED.labels(event.tenant, "off").inc()
            latencies.append(max(0.0, now - event.received_at.timestamp()))
        if stream_time is not None and (clock is None or stream_time > clock.stream_time):
            swept_at = clock.swept_at if clock else None
            if swept_at is None or stream_time - swept_at >= self.sweep_every:
                self.sweep(table, stream_time)
                swept_at = stream_time
            table[CLOCK_KEY] = StreamClock(stream_time=stream_time, swept_at=swept_at)
        metrics.observe_many(metrics.child(metrics.PROCESSING_LATENCY, self.name), latencies)
        for (contract, domain), n in events.items():  # once per label set and batch, not per event
            metrics.EVENTS.labels(contract, domain).inc(n)
        for domain, n in signals.items():
            metrics.SIGNALS.labels(domain).inc(n)

    async def events(self, records: Sequence[Record], tx: Tx) -> list[tuple[Record, Envelope, bool]]:
        """The envelopes of ``records``, each with the record it answers for (dead letters, the
        outputs' key and headers) and whether that is a whole input record.

        A record of one envelope answers for itself. An array record (one request's envelopes,
        :func:`pipeline.contracts.request_records`) is split: each part stands as a record of its own
        bytes, key and event id at the array's coordinates, so a part that fails is dead-lettered
        alone (its replay is one envelope) and the others go on."""
        out: list[tuple[Record, Envelope, bool]] = []
        for rec in records:
            value = rec.value or b""
            if not is_array(value):  # the common case
                event = await tx.decode(rec, contracts.decode)
                if event is not None:
                    out.append((rec, event, True))
                continue
            headers = [h for h in rec.headers or () if h[0] != "events"]
            for part in await tx.decode(rec, array_parts) or ():
                alone = dataclasses.replace(rec, value=part, serialized_value_size=len(part))
                event = await tx.decode(alone, contracts.decode)
                if event is not None:
                    own = [*headers, ("event_id", event.event_id.encode())]
                    alone = dataclasses.replace(alone, key=contracts.kafka_key(event), headers=own)
                    out.append((alone, event, False))
        return out

    def sweep(self, table: Table[ExpandState], at: datetime) -> int:
        """Delete (tombstone) every history expired at stream time ``at``; returns how many."""
        doomed = [k for k, h in table.items() if isinstance(h, SeekerHistory) and expired(h, at, self.limits)]
        for key in doomed:
            table.delete(key)
        if doomed:
            metrics.EXPIRED.labels(self.name).inc(len(doomed))
        return len(doomed)
