"""Turning outcomes into training units: pure, deterministic rules the expand stage only calls.

Nothing here reads the clock or a random source; time is always an event's ``received_at``, so
replaying ``feedback.raw`` yields the same units with the same ids.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from pipeline.wire.records import (
    AwareDatetime,
    PreferenceUnit,
    ScoredUnit,
    TripletOrigin,
    TripletUnit,
    deterministic_id,
    record_uuid5,
)

__all__ = [
    "BUILTIN_GRADES",
    "BUILTIN_POSITIVES",
    "MAX_GRADE",
    "SEARCH_GRADES",
    "SIGNAL_ONLY_SEARCH_EVENTS",
    "Limits",
    "Observation",
    "SeekerHistory",
    "StreamClock",
    "correction_unit",
    "expand_outcomes",
    "expired",
    "pooled_copy",
    "scored_unit",
    "search_observation",
    "triplet_id",
]

MAX_GRADE = 3.0

#: Seed 000 built-in labels. Tenant-registered labels bring their own grade and polarity.
BUILTIN_GRADES: dict[str, float] = {"converted": 3.0, "accepted": 2.0, "expired": 1.0, "rejected": 0.0}
BUILTIN_POSITIVES: frozenset[str] = frozenset({"converted", "accepted"})

#: Seed 004 events that rank an item: grade and whether the item is a positive.
SEARCH_GRADES: dict[str, tuple[float, bool]] = {
    "passage_used": (3.0, True),
    "result_helpful": (2.0, True),
    "result_not_helpful": (0.0, False),
    "stale_result": (0.0, False),
    "duplicate_result": (0.0, False),
    "spam_or_low_quality": (0.0, False),
}
#: Seed 004 events that say nothing about an item's rank against others: signals only.
SIGNAL_ONLY_SEARCH_EVENTS: frozenset[str] = frozenset(
    {"read_abandoned", "missing_expected_source", "unsafe_or_policy_issue"}
)


class _State(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Stage state: immutable, unknown fields refused (its changelog is read back on restore)."""


class Observation(_State, frozen=True, kw_only=True):
    """The latest known outcome of one candidate for one anchor (seeker, search list...).

    Grades and weights come from decoded envelopes (whose types bound them) or from constants here;
    JSON cannot carry a non-finite number, so decoding keeps them finite.
    """

    candidate_id: str
    label: str
    grade: Annotated[float, Meta(ge=0, le=MAX_GRADE)]
    positive: bool
    weight: Annotated[float, Meta(ge=0)]
    event_id: str
    observed_at: AwareDatetime


class SeekerHistory(_State, frozen=True, kw_only=True):
    """Per-(domain, anchor) state in the expand stage's table: bounded, oldest first, one row per candidate.

    Domain and anchor live in the table key, not in each row, to keep the JSON small.
    """

    observations: tuple[Observation, ...] = ()


class StreamClock(_State, frozen=True, kw_only=True):
    """Per-partition stream time of the expand stage (its changelog's key ``\\x00clock``).

    ``stream_time`` is the newest ``received_at`` seen on the partition: histories are cut and
    expired by it, never by the wall clock, so a replay expires the same histories at the same input.
    """

    stream_time: AwareDatetime
    swept_at: Annotated[datetime, Meta(tz=True, description="Stream time of the last sweep.")] | None = None


def expired(history: SeekerHistory, stream_time: datetime, limits: Limits) -> bool:
    """True when every observation is older than the age limit at ``stream_time``.

    Since stream time never goes back and histories are cut at ``stream_time - max_age``, such a
    history can never pair again: deleting it changes no output.
    """
    if not history.observations:
        return True
    newest = history.observations[-1].observed_at  # histories are kept oldest first
    return newest < stream_time - timedelta(seconds=limits.max_age_seconds)


class Limits(Struct, frozen=True, kw_only=True):
    """Bounds on a history, so a hot anchor cannot grow its state (or its triplets) forever."""

    max_items: int
    max_age_seconds: float

    def __post_init__(self) -> None:
        """Configuration, built once: checked here (msgspec checks ``Meta`` only when decoding)."""
        if not (isinstance(self.max_items, int) and self.max_items >= 1):
            raise ValueError(f"max_items must be an integer of at least 1, got {self.max_items!r}")
        if not (math.isfinite(self.max_age_seconds) and self.max_age_seconds > 0):
            raise ValueError(f"max_age_seconds must be finite and above 0, got {self.max_age_seconds!r}")


def triplet_id(*, domain: str, anchor: str, positive: Observation, negative: Observation) -> str:
    """Same pair of observations -> same id (replay); a superseding outcome has a new event id.

    ``deterministic_id("triplet", domain, anchor, positive candidate and event, negative candidate
    and event)``, its name written in one f-string (the stream makes one per triplet)."""
    pc, pe, nc, ne = positive.candidate_id, positive.event_id, negative.candidate_id, negative.event_id
    return record_uuid5(
        f"7:triplet|{len(domain)}:{domain}|{len(anchor)}:{anchor}|{len(pc)}:{pc}|{len(pe)}:{pe}"
        f"|{len(nc)}:{nc}|{len(ne)}:{ne}"
    )


def expand_outcomes(
    history: SeekerHistory,
    new: Sequence[Observation],
    *,
    domain: str,
    anchor: str,
    tenant: str | None,
    now: AwareDatetime,
    limits: Limits,
    origin: TripletOrigin = "ranking_outcome",
) -> tuple[SeekerHistory, list[TripletUnit]]:
    """Merge ``new`` into ``history`` and emit the triplets the new observations make possible.

    Rules:

    * grades: converted 3, accepted 2, expired 1, rejected 0 (positives: converted, accepted);
      registered labels arrive with their own grade/positive, which are taken as given;
    * a new observation supersedes the stored one of the same candidate; within ``new`` the later
      one wins;
    * observations older than ``now - max_age_seconds`` are dropped, then only the newest
      ``max_items`` are kept (by ``observed_at``; at equal times, later arrivals are newer);
    * for every positive p and every kept n with a strictly lower grade, emit (anchor, p, n) with
      weight ((g_p - g_n) / 3) * w_p * w_n; equal grades and zero weights emit nothing;
    * only pairs with at least one new observation are emitted, so earlier pairs never repeat.

    A unit's event id and time are those of the newer observation of its pair, so the same pair
    gives the same unit however the input was batched. Output order: by positive, then negative,
    each in history order (oldest first).
    """
    latest_new: dict[str, Observation] = {}
    for obs in new:
        latest_new.pop(obs.candidate_id, None)  # re-insert so the later arrival sorts last
        latest_new[obs.candidate_id] = obs
    merged = [o for o in history.observations if o.candidate_id not in latest_new]
    merged.extend(latest_new.values())

    cutoff = now - timedelta(seconds=limits.max_age_seconds)
    fresh = [(o.observed_at, i, o) for i, o in enumerate(merged) if o.observed_at >= cutoff]
    fresh.sort()  # by time, then arrival (indexes are unique: observations are never compared)
    kept = [o for _, _, o in fresh[-limits.max_items :]]

    kept_objs = {id(o) for o in kept}
    new_ids = {c for c, o in latest_new.items() if id(o) in kept_objs}
    rank = {o.candidate_id: i for i, o in enumerate(kept)}
    # Only pairs with a new observation are emitted: enumerate those (new x kept, not kept x kept,
    # which a long history made the stage's hottest loop), then put them in the documented order.
    pairs: list[tuple[int, int, Observation, Observation]] = []
    for x in kept:
        if x.candidate_id not in new_ids or x.weight == 0:
            continue
        rx = rank[x.candidate_id]
        if x.positive:  # x as the positive, any lower-graded kept observation as the negative
            pairs.extend((rx, i, x, n) for i, n in enumerate(kept) if n.grade < x.grade and n.weight != 0)
        # x as the negative of an older positive (a pair of two new ones came from the positive's turn)
        pairs.extend(
            (i, rx, p, x)
            for i, p in enumerate(kept)
            if p.positive and p.weight != 0 and x.grade < p.grade and p.candidate_id not in new_ids
        )
    pairs.sort(key=lambda t: (t[0], t[1]))
    units: list[TripletUnit] = []
    for rp, rn, p, n in pairs:
        weight = ((p.grade - n.grade) / MAX_GRADE) * p.weight * n.weight
        if not math.isfinite(weight):  # weights off the edge's bounds: never write a null weight
            raise ValueError(
                f"triplet weight of {p.candidate_id!r} over {n.candidate_id!r} is not finite "
                f"(weights {p.weight} and {n.weight})"
            )
        if weight <= 0:  # underflow of tiny weights
            continue
        newer = p if rp > rn else n
        units.append(
            TripletUnit(  # fields computed from decoded observations, the weight checked above
                unit_id=triplet_id(domain=domain, anchor=anchor, positive=p, negative=n),
                domain=domain,
                tenant=tenant,
                event_id=newer.event_id,
                received_at=newer.observed_at,
                counts=True,
                anchor=anchor,
                positive=p.candidate_id,
                negative=n.candidate_id,
                weight=weight,
                origin=origin,
            )
        )
    return SeekerHistory(observations=tuple(kept)), units


def search_observation(
    event_type: str,
    doc_id: str | None,
    passage_id: str | None,
    event_id: str,
    at: AwareDatetime,
) -> Observation | None:
    """Map a seed 004 event to a graded item, or None when it ranks nothing (signal only).

    The item is the passage when given (the finer grain), else the document. passage_used is
    grade 3 and result_helpful grade 2 (positives); result_not_helpful, stale_result,
    duplicate_result and spam_or_low_quality are grade-0 negatives. read_abandoned,
    missing_expected_source and unsafe_or_policy_issue only become signals: abandoning is
    ambiguous, a missing source has no item in the list, and safety is not relevance.
    An unknown event type raises ValueError: a contract drift should dead-letter, not vanish.
    """
    event_type = str(event_type)
    if event_type in SIGNAL_ONLY_SEARCH_EVENTS:
        return None
    if event_type not in SEARCH_GRADES:
        raise ValueError(f"unknown search event type {event_type!r}")
    item = passage_id or doc_id
    if not item:
        return None
    grade, positive = SEARCH_GRADES[event_type]
    return Observation(
        candidate_id=item,
        label=event_type,
        grade=grade,
        positive=positive,
        weight=1.0,
        event_id=event_id,
        observed_at=at,
    )


def correction_unit(
    *,
    event_id: str,
    tenant: str | None,
    domain: str,
    module: str,
    case_id: str,
    original_output: Any,
    corrected_output: Any,
    received_at: AwareDatetime,
    counts: bool,
) -> PreferenceUnit:
    """A seed 001 correction as a preference: the corrected output is chosen over the original.

    Whether it may train at all (feedback mode) and whether it counts is the caller's decision.
    """
    return PreferenceUnit(
        unit_id=deterministic_id("preference", event_id),
        domain=domain,
        tenant=tenant,
        event_id=event_id,
        received_at=received_at,
        counts=counts,
        anchor=f"{module}:{case_id}",
        chosen=corrected_output,
        rejected=original_output,
        weight=1.0,
    )


def pooled_copy(unit: PreferenceUnit, *, module: str, pool: str) -> PreferenceUnit:
    """The shared pool's anonymized copy of a correction's unit.

    No tenant, an opaque event id (a uuid5 of the tenant's event id: the same on replay, not
    reversible, so not linkable to the tenant's event by anyone without it), the anchor without the
    case id (just the module). The outputs stay: they are the training content.
    """
    event_id = deterministic_id("pooled-event", unit.event_id)
    return msgspec.structs.replace(
        unit,
        unit_id=deterministic_id("preference", event_id),
        domain=pool,
        tenant=None,
        event_id=event_id,
        anchor=module,
    )


def scored_unit(
    *,
    event_id: str,
    tenant: str | None,
    domain: str,
    task_id: str,
    inputs: dict[str, Any] | None,
    output: str | None,
    score: float | None,
    source: str,
    metadata: dict[str, Any] | None,
    received_at: AwareDatetime,
    trace: Mapping[str, str] | None = None,
) -> ScoredUnit:
    """A seed 003 entry as a training unit; ``seed`` entries train but never advance the threshold.

    The score must be in [0, 1] (``feedback.triplets``' own rule, checked here since building a
    record does not validate it): an older event on ``feedback.raw`` may carry another, which the
    stage then dead-letters instead of writing a unit its consumers would refuse.
    """
    if score is not None and not (0.0 <= score <= 1.0):  # NaN fails too
        raise ValueError(f"a scored unit's score must be within [0, 1], got {score!r}")
    return ScoredUnit(
        unit_id=deterministic_id("scored", event_id),
        domain=domain,
        tenant=tenant,
        event_id=event_id,
        received_at=received_at,
        counts=source != "seed",
        task_id=task_id,
        inputs=inputs,
        output=output,
        score=score,
        source=source,
        metadata=metadata,
        **(trace or {}),
    )
