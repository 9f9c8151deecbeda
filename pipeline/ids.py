"""Identifiers: time-ordered UUIDv7 for new events, uuid5 for ids that must be reproducible."""

from __future__ import annotations

import hashlib
import uuid

import uuid6


def new_event_id() -> str:
    """A UUIDv7: unique and time-ordered, so ids sort like arrival."""
    return str(uuid6.uuid7())


def new_request_id() -> str:
    return "req_" + uuid6.uuid7().hex


def uuid5_str(namespace: uuid.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))`` without building UUID objects (hot path of the stream)."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
