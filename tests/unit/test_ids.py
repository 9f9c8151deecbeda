"""Canonical UUIDs: every spelling the edge accepts canonicalises; none raises (found by the hostile fuzz)."""

from __future__ import annotations

import pytest

from pipeline.ids import canonical_uuid

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
