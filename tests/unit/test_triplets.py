"""Triplet expansion (seed 000 outcomes, seed 004 search events), corrections and scored entries."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.rules.triplets import (
    BUILTIN_GRADES,
    BUILTIN_POSITIVES,
    Limits,
    Observation,
    SeekerHistory,
    correction_unit,
    expand_outcomes,
    scored_unit,
    search_observation,
    triplet_id,
)
from pipeline.wire.records import PreferenceUnit, ScoredUnit, TripletUnit, from_json, to_json

T0 = datetime(2024, 1, 15, 10, 35, tzinfo=UTC)
GENEROUS = Limits(max_items=10_000, max_age_seconds=10 * 365 * 24 * 3600.0)
EMPTY = SeekerHistory()


def obs(
    candidate: str,
    label: str,
    *,
    weight: float = 1.0,
    event_id: str = "e1",
    at: datetime = T0,
) -> Observation:
    return Observation(
        candidate_id=candidate,
        label=label,
        grade=BUILTIN_GRADES[label],
        positive=label in BUILTIN_POSITIVES,
        weight=weight,
        event_id=event_id,
        observed_at=at,
    )


def expand(
    history: SeekerHistory,
    new: Sequence[Observation],
    *,
    now: datetime = T0,
    limits: Limits = GENEROUS,
    anchor: str = "u_alice",
) -> tuple[SeekerHistory, list[TripletUnit]]:
    return expand_outcomes(
        history, new, domain="dating", anchor=anchor, tenant="acme", now=now, limits=limits
    )


def pairs(units: Sequence[TripletUnit]) -> list[tuple[str, str, float]]:
    return [(u.positive, u.negative, u.weight) for u in units]


SEED_000 = [
    obs("u_bob", "accepted"),
    obs("u_carl", "rejected"),
    obs("u_dan", "converted", weight=2.0),
]
SEED_000_TRIPLETS = {
    ("u_dan", "u_carl", ((3 - 0) / 3) * 2 * 1),
    ("u_dan", "u_bob", ((3 - 2) / 3) * 2 * 1),
    ("u_bob", "u_carl", ((2 - 0) / 3) * 1 * 1),
}


# --- seed 000 ------------------------------------------------------------------------------------


def test_seed_000_example_gives_exactly_three_triplets() -> None:
    history, units = expand(EMPTY, SEED_000)
    assert pairs(units) == [
        ("u_bob", "u_carl", ((2 - 0) / 3) * 1 * 1),
        ("u_dan", "u_bob", ((3 - 2) / 3) * 2 * 1),
        ("u_dan", "u_carl", ((3 - 0) / 3) * 2 * 1),
    ]
    assert {(p, n): w for p, n, w in pairs(units)} == {
        ("u_bob", "u_carl"): pytest.approx(0.6667, abs=1e-4),
        ("u_dan", "u_bob"): pytest.approx(0.6667, abs=1e-4),
        ("u_dan", "u_carl"): 2.0,
    }
    unit = units[0]
    assert unit.kind == "triplet"
    assert unit.anchor == "u_alice"
    assert unit.domain == "dating"
    assert unit.tenant == "acme"
    assert unit.origin == "ranking_outcome"
    assert unit.counts is True
    assert unit.event_id == "e1"
    assert unit.received_at == T0
    assert [o.candidate_id for o in history.observations] == ["u_bob", "u_carl", "u_dan"]


def test_one_at_a_time_gives_the_same_units_as_the_batch() -> None:
    _, batch = expand(EMPTY, SEED_000)
    history, streamed = EMPTY, []
    for o in SEED_000:
        history, units = expand(history, [o])
        streamed.extend(units)
    assert set(pairs(streamed)) == SEED_000_TRIPLETS
    assert sorted(streamed, key=lambda u: u.unit_id) == sorted(batch, key=lambda u: u.unit_id)


def test_only_triplets_with_a_new_observation_are_emitted() -> None:
    history, _ = expand(EMPTY, SEED_000)
    _, units = expand(history, [obs("u_eve", "expired", event_id="e2")])
    # eve (grade 1) is below bob and dan, above nobody positive-side: only pairs with eve
    assert pairs(units) == [("u_bob", "u_eve", 1 / 3), ("u_dan", "u_eve", (2 / 3) * 2.0)]
    assert all(u.event_id == "e2" for u in units)


def test_no_new_observations_emit_nothing() -> None:
    history, _ = expand(EMPTY, SEED_000)
    again, units = expand(history, [])
    assert units == []
    assert again == history


def test_expired_is_a_negative_above_rejected() -> None:
    _, units = expand(EMPTY, [obs("x", "expired"), obs("y", "rejected")])
    assert units == []  # neither is positive


def test_ties_produce_nothing() -> None:
    _, units = expand(EMPTY, [obs("a", "accepted"), obs("b", "accepted"), obs("c", "converted")])
    assert pairs(units) == [("c", "a", 1 / 3), ("c", "b", 1 / 3)]


def test_zero_weight_produces_nothing() -> None:
    _, units = expand(EMPTY, [obs("a", "converted", weight=0.0), obs("b", "rejected")])
    assert units == []
    _, units = expand(EMPTY, [obs("a", "converted"), obs("b", "rejected", weight=0.0)])
    assert units == []


def test_registered_labels_bring_their_own_grade() -> None:
    super_like = Observation(
        candidate_id="s",
        label="super_like",
        grade=2.5,
        positive=True,
        weight=1.0,
        event_id="e1",
        observed_at=T0,
    )
    _, units = expand(EMPTY, [super_like, obs("a", "accepted"), obs("r", "rejected")])
    assert pairs(units) == [
        ("s", "a", (2.5 - 2) / 3),
        ("s", "r", 2.5 / 3),
        ("a", "r", 2 / 3),
    ]


# --- supersede -----------------------------------------------------------------------------------


def test_a_new_outcome_supersedes_the_stored_one() -> None:
    history, _ = expand(EMPTY, SEED_000)
    later = T0 + timedelta(hours=1)
    history, units = expand(history, [obs("u_carl", "converted", event_id="e2", at=later)], now=later)
    assert [(o.candidate_id, o.label) for o in history.observations] == [
        ("u_bob", "accepted"),
        ("u_dan", "converted"),
        ("u_carl", "converted"),
    ]
    # carl is now grade 3: above bob only; ties with dan
    assert pairs(units) == [("u_carl", "u_bob", 1 / 3)]
    assert units[0].event_id == "e2"
    assert units[0].received_at == later


def test_within_a_batch_the_later_observation_wins() -> None:
    history, units = expand(
        EMPTY,
        [obs("a", "converted"), obs("b", "rejected"), obs("a", "rejected", event_id="e2")],
    )
    assert [(o.candidate_id, o.label) for o in history.observations] == [("b", "rejected"), ("a", "rejected")]
    assert units == []


def test_superseding_with_a_new_event_gives_new_ids() -> None:
    _, first = expand(EMPTY, [obs("a", "accepted"), obs("b", "rejected")])
    history, _ = expand(EMPTY, [obs("b", "rejected")])
    _, second = expand(history, [obs("a", "accepted", event_id="e9")])
    assert pairs(first) == pairs(second)
    assert first[0].unit_id != second[0].unit_id


def test_replay_gives_identical_units() -> None:
    history1, units1 = expand(EMPTY, SEED_000)
    history2, units2 = expand(EMPTY, SEED_000)
    assert units1 == units2
    assert history1 == history2
    assert units1[0].unit_id == triplet_id(
        domain="dating", anchor="u_alice", positive=SEED_000[0], negative=SEED_000[1]
    )


def test_ids_depend_on_domain_and_anchor() -> None:
    _, a = expand(EMPTY, SEED_000)
    _, b = expand(EMPTY, SEED_000, anchor="u_zed")
    _, c = expand_outcomes(
        EMPTY, SEED_000, domain="jobs", anchor="u_alice", tenant="acme", now=T0, limits=GENEROUS
    )
    assert len({u.unit_id for u in a} | {u.unit_id for u in b} | {u.unit_id for u in c}) == 9


# --- limits --------------------------------------------------------------------------------------


def test_observations_older_than_max_age_are_dropped() -> None:
    limits = Limits(max_items=100, max_age_seconds=3600)
    history, _ = expand(EMPTY, [obs("old", "rejected", at=T0)], limits=limits)
    exactly = T0 + timedelta(seconds=3600)
    kept, units = expand(
        history, [obs("p", "accepted", event_id="e2", at=exactly)], now=exactly, limits=limits
    )
    assert [o.candidate_id for o in kept.observations] == ["old", "p"]  # at the cutoff: kept
    assert pairs(units) == [("p", "old", 2 / 3)]

    later = exactly + timedelta(microseconds=1)
    kept, units = expand(history, [obs("p", "accepted", event_id="e2", at=later)], now=later, limits=limits)
    assert [o.candidate_id for o in kept.observations] == ["p"]
    assert units == []


def test_a_stale_new_observation_is_dropped_too() -> None:
    limits = Limits(max_items=100, max_age_seconds=60)
    history, units = expand(
        EMPTY,
        [obs("p", "accepted", at=T0), obs("n", "rejected", at=T0 - timedelta(minutes=5))],
        limits=limits,
    )
    assert [o.candidate_id for o in history.observations] == ["p"]
    assert units == []


def test_only_the_newest_max_items_are_kept() -> None:
    limits = Limits(max_items=2, max_age_seconds=1e9)
    history, _ = expand(
        EMPTY,
        [
            obs("n1", "rejected", at=T0),
            obs("n2", "rejected", at=T0 + timedelta(seconds=1)),
        ],
        limits=limits,
    )
    now = T0 + timedelta(seconds=2)
    history, units = expand(history, [obs("p", "accepted", event_id="e2", at=now)], now=now, limits=limits)
    assert [o.candidate_id for o in history.observations] == ["n2", "p"]
    assert pairs(units) == [("p", "n2", 2 / 3)]


def test_equal_times_keep_the_later_arrivals() -> None:
    limits = Limits(max_items=2, max_age_seconds=1e9)
    history, units = expand(
        EMPTY, [obs("a", "rejected"), obs("b", "rejected"), obs("c", "accepted")], limits=limits
    )
    assert [o.candidate_id for o in history.observations] == ["b", "c"]
    assert pairs(units) == [("c", "b", 2 / 3)]


def test_history_round_trips_compactly_through_json() -> None:
    history, _ = expand(EMPTY, SEED_000)
    raw = to_json(history)
    assert b" " not in raw
    assert from_json(SeekerHistory, raw) == history


# --- seed 004 search events ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "grade", "positive"),
    [
        ("passage_used", 3.0, True),
        ("result_helpful", 2.0, True),
        ("result_not_helpful", 0.0, False),
        ("stale_result", 0.0, False),
        ("duplicate_result", 0.0, False),
        ("spam_or_low_quality", 0.0, False),
    ],
)
def test_search_events_that_rank(event_type: str, grade: float, positive: bool) -> None:
    o = search_observation(event_type, "doc", "passage", "e1", T0)
    assert o == Observation(
        candidate_id="passage",
        label=event_type,
        grade=grade,
        positive=positive,
        weight=1.0,
        event_id="e1",
        observed_at=T0,
    )


@pytest.mark.parametrize(
    "event_type", ["read_abandoned", "missing_expected_source", "unsafe_or_policy_issue"]
)
def test_search_events_that_are_signals_only(event_type: str) -> None:
    assert search_observation(event_type, "doc", "passage", "e1", T0) is None


def test_search_item_falls_back_to_the_document_then_none() -> None:
    o = search_observation("result_helpful", "doc", None, "e1", T0)
    assert o is not None and o.candidate_id == "doc"
    assert search_observation("result_helpful", None, None, "e1", T0) is None


def test_unknown_search_event_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown search event type"):
        search_observation("clicked", "doc", None, "e1", T0)


def test_search_events_expand_into_search_triplets() -> None:
    events = [
        ("result_not_helpful", "d1", None, "e1"),
        ("passage_used", "d2", "p2", "e2"),
        ("result_helpful", "d3", None, "e3"),
        ("read_abandoned", "d4", None, "e4"),
    ]
    history, units = SeekerHistory(), []
    for i, (event_type, doc, passage, event_id) in enumerate(events):
        at = T0 + timedelta(seconds=i)
        o = search_observation(event_type, doc, passage, event_id, at)
        if o is None:
            continue
        history, out = expand_outcomes(
            history,
            [o],
            domain="search",
            anchor="search:s1",
            tenant=None,
            now=at,
            limits=GENEROUS,
            origin="search_event",
        )
        units.extend(out)
    assert pairs(units) == [("p2", "d1", 1.0), ("p2", "d3", 1 / 3), ("d3", "d1", 2 / 3)]
    assert {u.origin for u in units} == {"search_event"}
    assert {u.tenant for u in units} == {None}
    assert [u.event_id for u in units] == ["e2", "e3", "e3"]


# --- property: batching does not matter ----------------------------------------------------------

LABELS = sorted(BUILTIN_GRADES)
CANDIDATES = [f"c{i}" for i in range(6)]


def _sequence(draw: st.DrawFn, unique: bool) -> list[Observation]:
    if unique:
        cands = draw(st.lists(st.sampled_from(CANDIDATES), unique=True, max_size=len(CANDIDATES)))
    else:
        cands = draw(st.lists(st.sampled_from(CANDIDATES), max_size=12))
    out = []
    for i, cand in enumerate(cands):
        out.append(
            Observation(
                candidate_id=cand,
                label=(label := draw(st.sampled_from(LABELS))),
                grade=BUILTIN_GRADES[label],
                positive=label in BUILTIN_POSITIVES,
                weight=draw(st.sampled_from([0.0, 0.25, 1.0, 2.0])),
                event_id=f"e{i}",
                observed_at=T0 + timedelta(seconds=draw(st.integers(0, 3))),
            )
        )
    return out


@st.composite
def chunked(draw: st.DrawFn, unique: bool) -> tuple[list[Observation], list[list[Observation]]]:
    seq = _sequence(draw, unique)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(seq) - 1)), max_size=len(seq))))
    bounds = [0, *[c for c in cuts if c < len(seq)], len(seq)]
    return seq, [seq[a:b] for a, b in itertools.pairwise(bounds)]


def _run(chunks: Sequence[Sequence[Observation]]) -> list[TripletUnit]:
    history, out = EMPTY, []
    for chunk in chunks:
        history, units = expand(history, chunk, now=T0 + timedelta(seconds=3))
        out.extend(units)
    return out


@settings(max_examples=300, deadline=None)
@given(chunked(unique=True))
def test_chunking_distinct_candidates_gives_the_same_units(
    case: tuple[list[Observation], list[list[Observation]]],
) -> None:
    seq, chunks = case
    batch, streamed = _run([seq]), _run(chunks)
    assert {u.unit_id for u in streamed} == {u.unit_id for u in batch}
    assert sorted(streamed, key=lambda u: u.unit_id) == sorted(batch, key=lambda u: u.unit_id)
    assert len(streamed) == len({u.unit_id for u in streamed})


@settings(max_examples=300, deadline=None)
@given(chunked(unique=False))
def test_chunking_with_supersedes_only_adds_pairs_that_were_later_superseded(
    case: tuple[list[Observation], list[list[Observation]]],
) -> None:
    """With repeated candidates, a chunk may pair an outcome that a later chunk supersedes; the
    batch never sees it. So streaming yields the batch's units plus only such superseded pairs."""
    seq, chunks = case
    batch, streamed = _run([seq]), _run(chunks)
    batch_ids, streamed_ids = {u.unit_id for u in batch}, {u.unit_id for u in streamed}
    assert batch_ids <= streamed_ids
    final = {o.candidate_id: o.event_id for o in seq}
    for u in streamed:
        if u.unit_id not in batch_ids:
            p_event = [o for o in seq if o.candidate_id == u.positive]
            n_event = [o for o in seq if o.candidate_id == u.negative]
            assert len(p_event) > 1 or len(n_event) > 1
            assert final[u.positive] != u.event_id or final[u.negative] != u.event_id


def test_the_literal_property_fails_when_a_chunk_is_superseded() -> None:
    """Documents why the property is split: A pairs with B in a chunk, then C supersedes A."""
    seq = [
        obs("x", "accepted", event_id="a"),
        obs("y", "rejected", event_id="b"),
        obs("x", "rejected", event_id="c"),
    ]
    assert _run([seq]) == []
    assert pairs(_run([seq[:2], seq[2:]])) == [("x", "y", 2 / 3)]


# --- corrections and scored entries ---------------------------------------------------------------


def test_correction_unit_prefers_the_corrected_output() -> None:
    unit = correction_unit(
        event_id="e1",
        tenant="faction",
        domain="intent_classifier",
        module="intent_classifier",
        case_id="case-7",
        original_output={"intent": "billing"},
        corrected_output={"intent": "refund"},
        received_at=T0,
        counts=True,
    )
    assert isinstance(unit, PreferenceUnit)
    assert unit.kind == "preference"
    assert unit.anchor == "intent_classifier:case-7"
    assert unit.chosen == {"intent": "refund"}
    assert unit.rejected == {"intent": "billing"}
    assert unit.weight == 1.0
    assert unit.counts is True
    again = correction_unit(
        event_id="e1",
        tenant="faction",
        domain="intent_classifier",
        module="intent_classifier",
        case_id="case-7",
        original_output={"intent": "billing"},
        corrected_output={"intent": "refund"},
        received_at=T0,
        counts=True,
    )
    assert again.unit_id == unit.unit_id


@pytest.mark.parametrize(
    ("source", "counts"), [("sdk", True), ("user_rating", True), ("auto_eval", True), ("seed", False)]
)
def test_scored_unit_counts_unless_seed(source: str, counts: bool) -> None:
    unit = scored_unit(
        event_id="e1",
        tenant="kaizen",
        domain="550e8400-e29b-41d4-a716-446655440000",
        task_id="550e8400-e29b-41d4-a716-446655440000",
        inputs={"ticket_text": "Login fails on Safari", "priority": "high"},
        output="Authentication issue on Safari browser. Check OAuth token handling.",
        score=0.9,
        source=source,
        metadata={"model": "gpt-4o", "latency_ms": 450},
        received_at=T0,
    )
    assert isinstance(unit, ScoredUnit)
    assert unit.kind == "scored"
    assert unit.counts is counts
    assert unit.score == 0.9
    assert unit.source == source


# --- the pair enumeration against the rule as first written (every kept x kept pair) --------------


def reference_pairs(
    history: SeekerHistory, new: Sequence[Observation], now: datetime, limits: Limits
) -> list[tuple[str, str, float, str]]:
    """The documented rule, literally: every positive against every lower-graded kept observation,
    in history order, emitted when one of the two is new."""
    latest: dict[str, Observation] = {}
    for obs in new:
        latest.pop(obs.candidate_id, None)
        latest[obs.candidate_id] = obs
    merged = [o for o in history.observations if o.candidate_id not in latest] + list(latest.values())
    cutoff = now - timedelta(seconds=limits.max_age_seconds)
    fresh = sorted(
        ((o.observed_at, i, o) for i, o in enumerate(merged) if o.observed_at >= cutoff),
        key=lambda t: (t[0], t[1]),
    )
    kept = [o for _, _, o in fresh[-limits.max_items :]]
    new_ids = {o.candidate_id for o in kept if latest.get(o.candidate_id) is o}
    out = []
    for p in kept:
        for n in kept:
            if not p.positive or p.weight == 0 or n.grade >= p.grade or n.weight == 0:
                continue
            if p.candidate_id in new_ids or n.candidate_id in new_ids:
                weight = ((p.grade - n.grade) / 3.0) * p.weight * n.weight
                if weight > 0:
                    out.append((p.candidate_id, n.candidate_id, weight, max(p, n, key=kept.index).event_id))
    return out


_LABELS = [
    ("converted", 3.0, True),
    ("accepted", 2.0, True),
    ("expired", 1.0, False),
    ("rejected", 0.0, False),
]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 9), st.integers(0, 3), st.sampled_from([0.0, 0.5, 1.0, 2.0]), st.integers(0, 50)
        ),
        max_size=25,
    ),
    st.lists(
        st.tuples(
            st.integers(0, 9), st.integers(0, 3), st.sampled_from([0.0, 1.0, 3.0]), st.integers(40, 60)
        ),
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 12),
)
def test_pairs_equal_the_rule_over_every_kept_pair(
    old: list[tuple[int, int, float, int]], new: list[tuple[int, int, float, int]], max_items: int
) -> None:
    def obs(c: int, label: int, weight: float, t: int, tag: str) -> Observation:
        name, grade, positive = _LABELS[label]
        return Observation(
            candidate_id=f"c{c}",
            label=name,
            grade=grade,
            positive=positive,
            weight=weight,
            event_id=f"{tag}{c}-{t}",
            observed_at=T0 + timedelta(seconds=t),
        )

    history: dict[str, Observation] = {}
    for c, label, weight, t in sorted(old, key=lambda x: x[3]):
        history.pop(f"c{c}", None)
        history[f"c{c}"] = obs(c, label, weight, t, "old")
    stored = SeekerHistory(observations=tuple(history.values()))
    arrivals = [obs(c, label, weight, t, "new") for c, label, weight, t in new]
    limits = Limits(max_items=max_items, max_age_seconds=30.0)
    now = T0 + timedelta(seconds=60)
    _, units = expand_outcomes(stored, arrivals, domain="d", anchor="a", tenant="t", now=now, limits=limits)
    got = [(u.positive, u.negative, u.weight, u.event_id) for u in units]
    assert got == reference_pairs(stored, arrivals, now, limits)
