"""Canonical UUIDs: every spelling the edge accepts canonicalises; none raises (found by the hostile fuzz).
Reproducible ids: the same bytes as earlier code wrote."""

from __future__ import annotations

import os
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from pipeline.ids import canonical_uuid, new_event_id, new_request_id, uuid5_str
from pipeline.rules.counters import trigger_id
from pipeline.rules.flatten import feedback_id
from pipeline.rules.triplets import Observation, triplet_id
from pipeline.wire.records import RECORD_NAMESPACE, deterministic_id, erasure_id, signal_id

AT = datetime(2024, 1, 15, 10, 35, tzinfo=UTC)
U = "6f1c2d3e-4b5a-4c7d-8e9f-a0b1c2d3e4f5"


@pytest.mark.parametrize(
    "spelling",
    [
        U,
        U.upper(),
        "{" + U + "}",
        "urn:uuid:" + U,
        "URN:UUID:" + U,
        "Urn:Uuid:" + U.upper(),
        U.replace("-", ""),
    ],
)
def test_every_accepted_spelling_is_canonical(spelling: str) -> None:
    assert canonical_uuid(spelling) == U


@pytest.mark.parametrize(
    "spelling",
    [
        "urn:uuid:{" + U + "}",
        "-".join(U.replace("-", "")),
        "-" * 300 + U,
        " " + U,
        U[:-1],
        U + "0",
        "",
        "{" + U,
    ],
)
def test_other_spellings_are_refused_without_raising(spelling: str) -> None:
    assert canonical_uuid(spelling) is None


# --- reproducible ids: byte-identical to what earlier code wrote (replays depend on it) -------------

#: Written by the code of commit 3a30166 (uuid.uuid5 semantics, before the faster uuid5_str).
STORED_IDS: list[tuple[tuple[str | int, ...], str]] = [
    (
        (
            "triplet",
            "dating",
            "u_alice",
            "u_bob",
            "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b",
            "u_carl",
            "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2c",
        ),
        "6811903b-f7fb-525c-b38c-da50453cf4be",
    ),
    (("preference", "e1"), "05b775f7-9b7c-553b-9bfb-267147786c67"),
    (("pooled-event", "e1"), "c51d8d81-22de-571d-a1f9-a57891fedbde"),
    (("scored", "e"), "8c883d8f-11ab-56c5-8e69-fcc34ed86bc2"),
    (("k",), "2cf806fa-2d59-5b7d-80fe-5275f3530d36"),
    (("k", "a|b", "c"), "a0dcf827-69b4-5c10-9988-a60315988580"),
    (("k", "ééé", 7, ""), "cb366db6-9a44-504c-a38a-e05da76bc3fe"),
]


@pytest.mark.parametrize(("parts", "stored"), STORED_IDS, ids=lambda v: str(v)[:20])
def test_deterministic_ids_are_the_stored_ones(parts: tuple[str | int, ...], stored: str) -> None:
    kind, *rest = parts
    assert deterministic_id(str(kind), *rest) == stored


def test_the_named_ids_are_the_stored_ones() -> None:
    assert signal_id(event_id="e", subject="s->t", key="outcome") == "bc3c73cb-2f9a-543e-b020-d5cd23c11ebd"
    assert trigger_id("dating", 12) == "19348c29-3def-5c67-a507-0de8422b8104"
    assert erasure_id("0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b") == "e5490ba4-25a5-5621-a907-578e19fa7db5"
    event = "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b"
    assert feedback_id(event, "accuracy.score") == "ba08e2fd-04e3-5137-9355-090a99775f36"


def test_uuid5_str_is_uuid5_for_any_name_and_namespace() -> None:
    rng = random.Random(5)
    names = ["", "x", "é" * 50, "\x00|:", "🙂" * 3] + [
        "".join(rng.choice("ab|:é0") for _ in range(rng.randrange(0, 80))) for _ in range(500)
    ]
    for namespace in (RECORD_NAMESPACE, uuid.NAMESPACE_DNS, uuid.UUID(int=0), uuid.UUID(int=(1 << 128) - 1)):
        for name in names:
            assert uuid5_str(namespace, name) == str(uuid.uuid5(namespace, name)), (namespace, name)


def test_triplet_id_is_the_deterministic_id_of_its_parts() -> None:
    rng = random.Random(9)

    def text() -> str:
        return "".join(rng.choice("ab|:é0-") for _ in range(rng.randrange(0, 40)))

    for _ in range(300):
        domain, anchor, pc, pe, nc, ne = (text() for _ in range(6))
        p = Observation(
            candidate_id=pc, label="l", grade=2.0, positive=True, weight=1.0, event_id=pe, observed_at=AT
        )
        n = Observation(
            candidate_id=nc, label="l", grade=0.0, positive=False, weight=1.0, event_id=ne, observed_at=AT
        )
        expected = deterministic_id("triplet", domain, anchor, pc, pe, nc, ne)
        assert triplet_id(domain=domain, anchor=anchor, positive=p, negative=n) == expected
    stored_parts, stored = STORED_IDS[0]
    _, domain, anchor, pc, pe, nc, ne = (str(s) for s in stored_parts)
    p = Observation(
        candidate_id=pc, label="l", grade=2.0, positive=True, weight=1.0, event_id=pe, observed_at=AT
    )
    n = Observation(
        candidate_id=nc, label="l", grade=0.0, positive=False, weight=1.0, event_id=ne, observed_at=AT
    )
    assert triplet_id(domain=domain, anchor=anchor, positive=p, negative=n) == stored


def _ms_of(event_id: str) -> int:
    return uuid.UUID(event_id).int >> 80


def test_new_ids_keep_to_the_clock_under_load() -> None:
    """A burst of ids (an ingest at thousands of items a second) must not run ahead of the clock:
    uuid6's uuid7 bumped the millisecond for every id made within one, so 200,000 ids in 0.6 s were
    stamped 199 s in the future. Within a millisecond they stay ordered by a counter (RFC 9562,
    method 1) instead."""
    ids = [new_event_id() for _ in range(50_000)]
    now_ms = int(time.time() * 1000)
    assert _ms_of(ids[-1]) <= now_ms + 1
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # time-ordered and unique
    for event_id in ids[:: len(ids) // 50]:
        parsed = uuid.UUID(event_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, event_id)


def test_request_ids_are_uuid7_hex_after_a_prefix() -> None:
    request_id = new_request_id()
    assert request_id.startswith("req_") and len(request_id) == 36
    parsed = uuid.UUID(hex=request_id[4:])
    assert parsed.version == 7 and abs(_ms_of(str(parsed)) - time.time() * 1000) < 5_000


def test_a_forked_child_draws_its_own_random_bits() -> None:
    """The random bits come from a pool drawn 512 at a time: a child forked with the parent's pool
    must not hand out the parent's next ids' bits (the same millisecond and counter would then make
    the same id)."""
    new_event_id()  # the pool is full now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, "\n".join(new_event_id()[19:] for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    parent = {new_event_id()[19:] for _ in range(100)}
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split("\n"))
    os.waitpid(pid, 0)
    assert len(child) == 100 and not parent & child  # the 62 random bits (and the variant) differ


def test_threads_never_share_random_bits() -> None:
    def burst() -> list[str]:
        return [new_event_id() for _ in range(5_000)]

    with ThreadPoolExecutor(4) as pool:
        ids = [i for ids in pool.map(lambda _: burst(), range(4)) for i in ids]
    assert len({i[19:] for i in ids}) == len(ids)
