"""Per-domain counting of units in feedback.triplets and the train triggers it emits."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.rules.counters import DomainCounter, count_units, force_trigger, trigger_id
from pipeline.wire.records import TrainTrigger, TriggerRange, from_json, to_json

AT = datetime(2024, 1, 15, 10, 35, tzinfo=UTC)
LATER = datetime(2024, 1, 15, 11, 0, tzinfo=UTC)


def test_below_threshold_only_counts() -> None:
    state, triggers = count_units(
        DomainCounter(),
        domain="d",
        threshold=3,
        partition=2,
        offsets_and_counts=[(10, True), (11, True)],
        at=AT,
    )
    assert triggers == []
    assert state == DomainCounter(
        pending=2,
        total=2,
        sequence=0,
        range_start=10,
        range_partition=2,
        last_partition=2,
        last_offset=11,
        pending_since=AT,  # the first counted unit's time
    )


def test_crossing_once() -> None:
    state, _ = count_units(
        DomainCounter(),
        domain="d",
        threshold=3,
        partition=2,
        offsets_and_counts=[(10, True), (11, True)],
        at=AT,
    )
    state, triggers = count_units(
        state, domain="d", threshold=3, partition=2, offsets_and_counts=[(12, True), (13, True)], at=LATER
    )
    expected = TrainTrigger(
        trigger_id=trigger_id("d", 1),
        domain="d",
        reason="threshold",
        count=3,
        threshold=3,
        sequence=1,
        range=TriggerRange(partition=2, start_offset=10, end_offset=12),
        emitted_at=LATER,
    )
    assert triggers == [expected]
    assert state == DomainCounter(
        pending=1,
        total=4,
        sequence=1,
        range_start=13,
        range_partition=2,
        last_partition=2,
        last_offset=13,
        last_trigger=expected,
        pending_since=LATER,  # the unit after the crossing starts the wait afresh
    )


def test_several_crossings_in_one_call() -> None:
    units = [(o, True) for o in range(100, 107)]
    state, triggers = count_units(
        DomainCounter(), domain="d", threshold=3, partition=0, offsets_and_counts=units, at=AT
    )
    assert [(t.sequence, t.count, t.range.start_offset, t.range.end_offset) for t in triggers] == [
        (1, 3, 100, 102),
        (2, 3, 103, 105),
    ]
    assert [t.trigger_id for t in triggers] == [trigger_id("d", 1), trigger_id("d", 2)]
    assert len({t.trigger_id for t in triggers}) == 2
    assert state.pending == 1 and state.total == 7 and state.sequence == 2
    assert state.range_start == 106
    assert state.last_trigger == triggers[-1]


def test_non_counting_units_open_the_range_but_do_not_count() -> None:
    units = [(5, False), (6, True), (7, False), (8, True)]
    state, triggers = count_units(
        DomainCounter(), domain="d", threshold=2, partition=1, offsets_and_counts=units, at=AT
    )
    assert [(t.count, t.range) for t in triggers] == [
        (2, TriggerRange(partition=1, start_offset=5, end_offset=8)),
    ]
    assert state.pending == 0 and state.total == 2
    assert state.range_start is None and state.range_partition is None

    state, triggers = count_units(
        state, domain="d", threshold=2, partition=1, offsets_and_counts=[(9, False)], at=AT
    )
    assert triggers == []
    assert (state.pending, state.total, state.range_start, state.range_partition) == (0, 2, 9, 1)


def test_threshold_one_triggers_on_every_counted_unit() -> None:
    _, triggers = count_units(
        DomainCounter(),
        domain="d",
        threshold=1,
        partition=0,
        offsets_and_counts=[(0, True), (1, False), (2, True)],
        at=AT,
    )
    assert [(t.sequence, t.range.start_offset, t.range.end_offset) for t in triggers] == [
        (1, 0, 0),
        (2, 1, 2),
    ]


def test_redelivered_units_are_not_counted_twice() -> None:
    units = [(10, True), (11, True)]
    once, _ = count_units(
        DomainCounter(), domain="d", threshold=5, partition=0, offsets_and_counts=units, at=AT
    )
    twice, _ = count_units(once, domain="d", threshold=5, partition=0, offsets_and_counts=units, at=AT)
    assert twice == once
    state, _ = count_units(
        once, domain="d", threshold=5, partition=0, offsets_and_counts=[(11, True), (12, True)], at=AT
    )
    assert state.pending == 3 and state.last_offset == 12


def test_a_new_partition_closes_the_open_range_and_opens_one_there() -> None:
    # feedback.triplets got more partitions: the domain's units now land on partition 1
    state, _ = count_units(
        DomainCounter(),
        domain="d",
        threshold=5,
        partition=0,
        offsets_and_counts=[(10, True), (11, False), (12, True)],
        at=AT,
    )
    state, triggers = count_units(
        state, domain="d", threshold=5, partition=1, offsets_and_counts=[(3, True), (4, True)], at=LATER
    )
    assert [t.reason for t in triggers] == ["repartition"]
    assert triggers[0].count == 2 and triggers[0].sequence == 1
    assert triggers[0].range == TriggerRange(partition=0, start_offset=10, end_offset=12)
    assert state.pending == 2 and state.total == 4 and state.sequence == 1
    assert (state.range_partition, state.range_start, state.last_partition, state.last_offset) == (1, 3, 1, 4)
    # the new range then triggers as usual
    state, triggers = count_units(
        state,
        domain="d",
        threshold=5,
        partition=1,
        offsets_and_counts=[(5, True)] * 1 + [(6, True), (7, True)],
        at=LATER,
    )
    assert [(t.reason, t.count, t.range.partition, t.range.start_offset) for t in triggers] == [
        ("threshold", 5, 1, 3)
    ]


def test_a_new_partition_with_only_uncounted_units_pending_still_closes_their_range() -> None:
    state, _ = count_units(
        DomainCounter(), domain="d", threshold=5, partition=0, offsets_and_counts=[(10, False)], at=AT
    )
    state, triggers = count_units(
        state, domain="d", threshold=5, partition=2, offsets_and_counts=[(0, True)], at=AT
    )
    assert [(t.reason, t.count, t.range.partition, t.range.end_offset) for t in triggers] == [
        ("repartition", 0, 0, 10)
    ]
    assert state.pending == 1 and state.range_partition == 2


def test_after_a_trigger_the_partition_may_change() -> None:
    state, triggers = count_units(
        DomainCounter(), domain="d", threshold=1, partition=0, offsets_and_counts=[(10, True)], at=AT
    )
    assert len(triggers) == 1
    state, triggers = count_units(
        state, domain="d", threshold=1, partition=3, offsets_and_counts=[(0, True)], at=AT
    )
    assert triggers[0].range == TriggerRange(partition=3, start_offset=0, end_offset=0)


def test_invalid_threshold() -> None:
    with pytest.raises(ValueError, match="threshold"):
        count_units(DomainCounter(), domain="d", threshold=0, partition=0, offsets_and_counts=[], at=AT)


def test_manual_with_pending() -> None:
    state, _ = count_units(
        DomainCounter(),
        domain="d",
        threshold=10,
        partition=4,
        offsets_and_counts=[(20, False), (21, True)],
        at=AT,
    )
    state, trigger = force_trigger(state, domain="d", threshold=10, at=LATER, last_offset=22)
    assert trigger == TrainTrigger(
        trigger_id=trigger_id("d", 1),
        domain="d",
        reason="manual",
        count=1,
        threshold=10,
        sequence=1,
        range=TriggerRange(partition=4, start_offset=20, end_offset=22),
        emitted_at=LATER,
    )
    assert state.pending == 0 and state.total == 1 and state.sequence == 1
    assert state.range_start is None and state.last_trigger == trigger


def test_manual_defaults_to_the_last_unit_seen() -> None:
    state, _ = count_units(
        DomainCounter(),
        domain="d",
        threshold=10,
        partition=4,
        offsets_and_counts=[(20, True), (21, False)],
        at=AT,
    )
    _, trigger = force_trigger(state, domain="d", threshold=10, at=LATER, last_offset=None)
    assert trigger is not None and trigger.range.end_offset == 21


def test_manual_without_pending_is_none() -> None:
    assert force_trigger(DomainCounter(), domain="d", threshold=10, at=AT, last_offset=None) == (
        DomainCounter(),
        None,
    )
    state, _ = count_units(
        DomainCounter(), domain="d", threshold=10, partition=0, offsets_and_counts=[(1, False)], at=AT
    )
    assert force_trigger(state, domain="d", threshold=10, at=AT, last_offset=1) == (state, None)


def test_manual_then_threshold_sequences_continue() -> None:
    state, _ = count_units(
        DomainCounter(), domain="d", threshold=2, partition=0, offsets_and_counts=[(0, True)], at=AT
    )
    state, manual = force_trigger(state, domain="d", threshold=2, at=AT, last_offset=None)
    state, triggers = count_units(
        state, domain="d", threshold=2, partition=0, offsets_and_counts=[(1, True), (2, True)], at=AT
    )
    assert manual is not None and manual.sequence == 1
    assert [(t.sequence, t.reason, t.range.start_offset) for t in triggers] == [(2, "threshold", 1)]


def test_manual_end_before_start_is_an_error() -> None:
    state, _ = count_units(
        DomainCounter(), domain="d", threshold=9, partition=0, offsets_and_counts=[(5, True)], at=AT
    )
    with pytest.raises(ValueError, match="before the range start"):
        force_trigger(state, domain="d", threshold=9, at=AT, last_offset=4)


def test_trigger_ids_are_per_domain_and_sequence() -> None:
    assert trigger_id("d", 1) == trigger_id("d", 1)
    assert len({trigger_id("d", 1), trigger_id("d", 2), trigger_id("e", 1)}) == 3


def test_state_round_trips_through_json() -> None:
    state, _ = count_units(
        DomainCounter(),
        domain="d",
        threshold=2,
        partition=0,
        offsets_and_counts=[(0, True), (1, True), (2, False)],
        at=AT,
    )
    assert state.last_trigger is not None
    assert from_json(DomainCounter, to_json(state)) == state


def test_pending_since_is_the_first_counted_unit_after_a_trigger_and_clears_with_it() -> None:
    state, _ = count_units(
        DomainCounter(), domain="d", threshold=3, partition=0, offsets_and_counts=[(1, False)], at=AT
    )
    assert state.pending_since is None  # an uncounted unit does not start the wait
    state, _ = count_units(state, domain="d", threshold=3, partition=0, offsets_and_counts=[(2, True)], at=AT)
    state, _ = count_units(
        state, domain="d", threshold=3, partition=0, offsets_and_counts=[(3, True)], at=LATER
    )
    assert state.pending_since == AT
    state, trigger = force_trigger(state, domain="d", threshold=3, at=LATER, last_offset=None)
    assert trigger is not None and state.pending_since is None


def test_a_time_trigger_fires_once_when_enough_units_waited_long_enough() -> None:
    from datetime import timedelta

    from pipeline.rules.counters import due_trigger

    units = [(4, True), (5, True)]
    state, _ = count_units(
        DomainCounter(), domain="d", threshold=100, partition=0, offsets_and_counts=units, at=AT
    )
    wait = timedelta(hours=1).total_seconds()
    early = AT + timedelta(minutes=59)
    assert due_trigger(state, domain="d", threshold=100, now=early, max_wait_s=wait, min_units=1) == (
        state,
        None,
    )
    late = AT + timedelta(hours=1)
    assert due_trigger(state, domain="d", threshold=100, now=late, max_wait_s=wait, min_units=3)[1] is None
    after, trigger = due_trigger(state, domain="d", threshold=100, now=late, max_wait_s=wait, min_units=2)
    assert trigger is not None
    assert (trigger.reason, trigger.count, trigger.sequence, trigger.emitted_at) == ("max_wait", 2, 1, late)
    assert (trigger.range.start_offset, trigger.range.end_offset) == (4, 5)
    assert (after.pending, after.pending_since, after.last_trigger) == (0, None, trigger)
    # fired: nothing is pending, so nothing is due again until new units wait as long
    much_later = late + timedelta(days=9)
    assert (
        due_trigger(after, domain="d", threshold=100, now=much_later, max_wait_s=wait, min_units=1)[1] is None
    )
