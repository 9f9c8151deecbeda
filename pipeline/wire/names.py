"""The built-in contracts' names: the ``contract`` tag of ``feedback.raw`` (no imports, so the
tenants file's model can name contracts without depending on the envelope)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Contract"]


class Contract(StrEnum):
    """The built-in contracts (seed number in the comment); a registered contract may add others."""

    RANKING_OUTCOME = "ranking_outcome"  # seed 000
    CORRECTION = "correction"  # seed 001
    INFERENCE_FEEDBACK = "inference_feedback"  # seed 002
    SCORED_OUTPUT = "scored_output"  # seed 003
    SEARCH_EVENT = "search_event"  # seed 004
