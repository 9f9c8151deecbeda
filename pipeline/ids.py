"""Identifiers: time-ordered UUIDv7 for new events, uuid5 for ids that must be reproducible."""

from __future__ import annotations

import hashlib
import os
import re
import struct
import time
import uuid
from collections.abc import Callable

from pipeline.limits import MAX_UUID_INPUT_CHARS


class _Uuid7:
    """UUIDv7 text (RFC 9562, method 1): the Unix millisecond, a 12-bit counter in ``rand_a``
    (random at each new millisecond, +1 within one, so ids sort like arrival), 62 random bits.

    Not uuid6's ``uuid7``: it kept order by bumping the millisecond itself for every id made within
    one, so a burst ran ahead of the clock (200,000 ids in 0.6 s were stamped 199 s ahead). Here only
    a 4,096th id within one millisecond moves to the next. Also a third of its cost: no UUID object.

    The random bits come from ``os.urandom`` 512 draws at a time (a syscall per id was a fifth of an
    id's cost), each taken once with ``list.pop`` (atomic under the GIL, so threads never share one);
    a forked child drops the parent's pool. The hyphenated text of the millisecond is made once per
    millisecond.
    """

    __slots__ = ("counter", "head", "ms", "pool")

    def __init__(self) -> None:
        self.ms = 0
        self.counter = 0
        self.head = ""
        self.pool: list[int] = []

    def drop_pool(self) -> None:
        self.pool.clear()

    def _random(self) -> int:
        """64 fresh random bits (never handed out twice)."""
        try:
            return self.pool.pop()
        except IndexError:
            self.pool.extend(_unpack_pool(os.urandom(_POOL * 8)))
            return self.pool.pop()

    def _tick(self) -> tuple[int, int]:
        """The next id's counter (its millisecond is then ``self.ms``) and its 62 random bits."""
        ms = time.time_ns() // 1_000_000
        if ms > self.ms:
            self.ms, self.counter = ms, self._random() >> 53  # 11 bits: headroom to count up
            self.head = ""
        else:
            self.counter += 1
            if self.counter > 0xFFF:
                self.ms, self.counter, self.head = self.ms + 1, 0, ""
        return self.counter, self._random() & _RAND_B

    def hex(self) -> str:
        counter, rand = self._tick()
        return f"{self.ms:012x}7{_HEX3[counter]}{(_VARIANT_BITS | rand).to_bytes(8).hex()}"

    def text(self) -> str:
        """The hyphenated form (8-4-4-4-12) written directly: the millisecond's part made once per
        millisecond, the counter from a table, the last 64 bits by ``bytes.hex`` (a format spec per
        field was most of an id's cost)."""
        counter, rand = self._tick()
        head = self.head
        if not head:
            self.head = head = f"{self.ms >> 16:08x}-{self.ms & 0xFFFF:04x}-7"
        return f"{head}{_HEX3[counter]}-{(_VARIANT_BITS | rand).to_bytes(8).hex('-', 6)}"


_HEX3 = [f"{i:03x}" for i in range(0x1000)]
_POOL = 512
_unpack_pool = struct.Struct(f"<{_POOL}Q").unpack
_RAND_B = 0x3FFF_FFFF_FFFF_FFFF
_VARIANT_BITS = 0x8000_0000_0000_0000
_UUID7 = _Uuid7()
os.register_at_fork(after_in_child=_UUID7.drop_pool)


def new_event_id() -> str:
    """A UUIDv7: unique and time-ordered, so ids sort like arrival."""
    return _UUID7.text()


def new_request_id() -> str:
    return "req_" + _UUID7.hex()


#: The variant nibble of RFC 4122 (10xx) for each hex digit of the digest there.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def uuid5_namer(namespace: uuid.UUID) -> Callable[[str], str]:
    """``name -> str(uuid.uuid5(namespace, name))``, fast: for the stream's ids (several per event).

    One sha1 over the namespace's 16 bytes and the name (a fresh hash of the joined bytes is cheaper
    than copying a hash state kept after the namespace: OpenSSL's context copy is the dearer part),
    and the digest's hex text cut into the 8-4-4-4-12 form with the version nibble set to 5 and the
    variant bits to 10: the same characters ``uuid.UUID`` would write (tested against it), no UUID
    object built.
    """
    return _uuid5_after(namespace.bytes)


def uuid5_names(namespace: uuid.UUID, prefix: str) -> Callable[[str], str]:
    """``name -> str(uuid.uuid5(namespace, prefix + name))``, for several names sharing a prefix
    (the feedback ids of one event): the prefix is encoded once."""
    return _uuid5_after(namespace.bytes + prefix.encode("utf-8"))


def _uuid5_after(head: bytes) -> Callable[[str], str]:
    sha1 = hashlib.sha1
    variant = _VARIANT

    def uuid5(name: str) -> str:
        h = sha1(head + name.encode("utf-8")).hexdigest()
        return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{variant[h[16]]}{h[17:20]}-{h[20:32]}"

    return uuid5


def uuid5_str(namespace: uuid.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))``; a hot path takes a :func:`uuid5_namer` once instead."""
    return uuid5_namer(namespace)(name)


_UUID_HEX = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID_SPELLINGS = re.compile(
    rf"(?:[uU][rR][nN]:[uU][uU][iI][dD]:)?(?:{_UUID_HEX}|\{{{_UUID_HEX}\}}|[0-9a-fA-F]{{32}})"
)


def is_canonical_uuid(value: str) -> bool:
    """Whether ``value`` is already a UUID's canonical form (lower-case 8-4-4-4-12)."""
    return _CANONICAL.fullmatch(value) is not None


def canonical_uuid(value: object) -> str | None:
    """The canonical lower-case hyphenated form of a UUID, or None if ``value`` is not one.

    Strict, unlike ``uuid.UUID``, which accepts hyphens anywhere (a task id padded to 1 MB with
    hyphens passed): accepted are the 8-4-4-4-12 form, the same in braces, 32 hex digits, each
    optionally after ``urn:uuid:``, in any letter case, at most ``MAX_UUID_INPUT_CHARS`` long.
    """
    if not isinstance(value, str) or len(value) > MAX_UUID_INPUT_CHARS:
        return None
    if is_canonical_uuid(value):  # the common case: no UUID object to build
        return value
    if not _UUID_SPELLINGS.fullmatch(value):
        return None
    return str(uuid.UUID(value.lower()))  # uuid.UUID strips only a lower-case 'urn:uuid:'
