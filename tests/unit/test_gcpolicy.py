"""The garbage collector's policy for the services (pipeline.gcpolicy): applied, or left alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from pipeline import gcpolicy


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """The policy is process-wide: put Python's state back for the rest of the suite."""
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tuned_freezes_what_startup_built_and_collects_young_objects_less_often(restored_gc: None) -> None:
    _, older, oldest = gc.get_threshold()
    gcpolicy.tune("test")
    assert gc.get_freeze_count() > 0  # the modules imported so far, out of every walk
    assert gc.get_threshold() == (gcpolicy.YOUNG_THRESHOLD, older, oldest)


def test_cycles_are_still_collected_when_tuned(restored_gc: None) -> None:
    gcpolicy.tune("test")

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the cyclic collector frees it
    del a, b
    before = sum(1 for o in gc.get_objects() if type(o).__name__ == "Node")
    gc.collect()
    after = sum(1 for o in gc.get_objects() if type(o).__name__ == "Node")
    assert (before, after) == (2, 0)


def test_disabled_leaves_the_defaults(restored_gc: None) -> None:
    before = gc.get_threshold()
    gcpolicy.tune("test", enabled=False)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
