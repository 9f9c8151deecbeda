"""Per-domain counting of training units and the train triggers it causes: pure state transitions.

The counter follows the units as written to ``feedback.triplets`` (partition and offset), so a
trigger can tell the trainer exactly which records to read, and a re-delivered unit (same
partition, offset not beyond the last one seen) is recognised and not counted twice.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta, Struct
from msgspec.structs import replace

from pipeline.wire.records import TrainTrigger, TriggerRange, deterministic_id, from_json, input_offset_topic

__all__ = ["DomainCounter", "apply_changelog", "count_units", "due_trigger", "force_trigger", "trigger_id"]


class DomainCounter(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """The count stage's table state of one domain's counter (JSON-serialisable, immutable)."""

    pending: Annotated[int, Meta(ge=0, description="Counted units since the last trigger.")] = 0
    total: Annotated[int, Meta(ge=0, description="All counted units ever.")] = 0
    sequence: Annotated[int, Meta(ge=0, description="Sequence of the last trigger (0: none yet).")] = 0
    range_start: Annotated[
        int | None, Meta(description="Offset of the first unit (counted or not) since the last trigger.")
    ] = None
    range_partition: int | None = None
    last_partition: Annotated[int | None, Meta(description="Where the last unit seen was written.")] = None
    last_offset: Annotated[int | None, Meta(description="Offset of the last unit seen.")] = None
    last_trigger: TrainTrigger | None = None
    #: received_at of the oldest pending (counted) unit: when pending went from 0 to 1 (None while
    #: nothing is pending); how long the domain has been waiting for a trigger.
    pending_since: Annotated[datetime, Meta(tz=True)] | None = None


def trigger_id(domain: str, sequence: int) -> str:
    """One id per (domain, sequence), so a replayed trigger is recognisably the same one."""
    return deterministic_id("trigger", domain, sequence)


def _emit(
    state: DomainCounter,
    *,
    domain: str,
    reason: Literal["threshold", "manual", "repartition", "max_wait"],
    threshold: int,
    end_offset: int,
    at: datetime,
    topic: str,
) -> tuple[DomainCounter, TrainTrigger]:
    """Close the open range into a trigger and start afresh (pending 0, no range)."""
    if state.range_start is None or state.range_partition is None:
        raise ValueError(f"domain {domain!r}: pending units but no open range (inconsistent state)")
    if end_offset < state.range_start:
        raise ValueError(f"end offset {end_offset} is before the range start {state.range_start}")
    sequence = state.sequence + 1
    trigger = TrainTrigger(
        trigger_id=trigger_id(domain, sequence),
        domain=domain,
        reason=reason,
        count=state.pending,
        threshold=threshold,
        sequence=sequence,
        range=TriggerRange(
            topic=topic,
            partition=state.range_partition,
            start_offset=state.range_start,
            end_offset=end_offset,
        ),
        emitted_at=at,
    )
    state = replace(
        state,
        pending=0,
        sequence=sequence,
        range_start=None,
        range_partition=None,
        last_trigger=trigger,
        pending_since=None,
    )
    return state, trigger


def count_units(
    state: DomainCounter,
    *,
    domain: str,
    threshold: int,
    partition: int,
    offsets_and_counts: Sequence[tuple[int, bool]],
    at: datetime,
    topic: str = "feedback.triplets",
) -> tuple[DomainCounter, list[TrainTrigger]]:
    """Advance the counter over units written at (partition, offset), in order.

    Each unit opens the range if none is open; a counting unit adds one to pending and total;
    when pending reaches the threshold a ``threshold`` trigger covers range start..this offset
    and the counter starts afresh. Several crossings give several triggers with consecutive
    sequences. A unit at or before the last offset seen on the same partition is a re-delivery
    and is skipped. A domain's units stay on one partition (the triplets topic is keyed by
    domain) until its partition count changes: a unit on another partition than the open range's
    closes that range with a ``repartition`` trigger (its pending units, possibly fewer than the
    threshold, or none if only uncounted units are in it) and opens a new range there.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, got {threshold}")
    triggers: list[TrainTrigger] = []
    for offset, counts in offsets_and_counts:
        if (
            state.last_partition == partition
            and state.last_offset is not None
            and offset <= state.last_offset
        ):
            continue
        if state.range_partition is not None and state.range_partition != partition:
            # feedback.triplets got more partitions and the domain's key hashes elsewhere now: one
            # range cannot span partitions, so close the open one where it is (a ``repartition``
            # trigger with what it holds, counted or not) and open a new one here.
            end = state.last_offset if state.last_partition == state.range_partition else None
            state, trigger = _emit(
                state,
                domain=domain,
                reason="repartition",
                threshold=threshold,
                end_offset=end if end is not None else state.range_start or 0,
                at=at,
                topic=topic,
            )
            triggers.append(trigger)
        opens = state.range_start is None
        state = replace(
            state,
            last_partition=partition,
            last_offset=offset,
            range_start=offset if opens else state.range_start,
            range_partition=partition if opens else state.range_partition,
            pending=state.pending + 1 if counts else state.pending,
            total=state.total + 1 if counts else state.total,
            pending_since=at if counts and state.pending == 0 else state.pending_since,
        )
        if counts and state.pending >= threshold:
            state, trigger = _emit(
                state,
                domain=domain,
                reason="threshold",
                threshold=threshold,
                end_offset=offset,
                at=at,
                topic=topic,
            )
            triggers.append(trigger)
    return state, triggers


def force_trigger(
    state: DomainCounter,
    *,
    domain: str,
    threshold: int,
    at: datetime,
    last_offset: int | None,
    topic: str = "feedback.triplets",
) -> tuple[DomainCounter, TrainTrigger | None]:
    """A manual (POST /train) trigger over everything pending; None when nothing is pending.

    The range ends at ``last_offset`` (the last unit written for the domain) when the caller
    knows it, else at the last unit this counter has seen.
    """
    if state.pending == 0:
        return state, None
    end = last_offset if last_offset is not None else state.last_offset
    if end is None:
        raise ValueError(f"domain {domain!r}: pending units but no offset seen (inconsistent state)")
    new_state, trigger = _emit(
        state, domain=domain, reason="manual", threshold=threshold, end_offset=end, at=at, topic=topic
    )
    return new_state, trigger


def due_trigger(
    state: DomainCounter,
    *,
    domain: str,
    threshold: int,
    now: datetime,
    max_wait_s: float,
    min_units: int,
    topic: str = "feedback.triplets",
) -> tuple[DomainCounter, TrainTrigger | None]:
    """A ``max_wait`` trigger over everything pending when at least ``min_units`` are pending and
    the oldest of them was received ``max_wait_s`` or more before ``now``; else None.

    It is an ordinary trigger (next sequence, the open range up to the last unit seen) and clears
    ``pending_since``, so it fires once per wait: the next one needs new units that wait as long.
    """
    since = state.pending_since
    if since is None or state.pending < min_units or (now - since).total_seconds() < max_wait_s:
        return state, None
    if state.last_offset is None:
        raise ValueError(f"domain {domain!r}: pending units but no offset seen (inconsistent state)")
    return _emit(
        state,
        domain=domain,
        reason="max_wait",
        threshold=threshold,
        end_offset=state.last_offset,
        at=now,
        topic=topic,
    )


def apply_changelog(
    domains: MutableMapping[str, DomainCounter], key: bytes | None, value: bytes | None
) -> None:
    """One record of the count stage's changelog into its readers' view of the domains (the ingest's,
    ``feedstream status``): a counter or a tombstone; the stage's input offset is not a domain."""
    if key is None or input_offset_topic(key) is not None:
        return
    if value is None:
        domains.pop(key.decode(), None)
    else:
        domains[key.decode()] = from_json(DomainCounter, value)
