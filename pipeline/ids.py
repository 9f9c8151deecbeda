"""Identifiers: time-ordered UUIDv7 for new events, uuid5 for ids that must be reproducible."""

from __future__ import annotations

import uuid6


def new_event_id() -> str:
    """A UUIDv7: unique and time-ordered, so ids sort like arrival."""
    return str(uuid6.uuid7())


def new_request_id() -> str:
    return "req_" + uuid6.uuid7().hex
