"""Per-key rate limiting and idempotent retries for the ingest (in-process state, by design).

Both are kept in the ingest process: a deployment with several ingest instances routes each key
to one instance (sticky by API key) or accepts per-instance limits; README says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass
class Bucket:
    rate: float
    tokens: float
    updated: float


@dataclass(frozen=True)
class RateState:
    """What seed 004 reports as ``access.rate_limit``."""

    allowed: bool
    limit_rps: int
    remaining: int
    reset_at: str  # ISO time at which the bucket is full again
    retry_after_s: int  # whole seconds until one request is allowed (0 when allowed)


class RateLimiter:
    """A token bucket per API key: ``rps`` tokens a second, burst of ``rps``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()
        self._max_keys = max_keys

    def take(self, key: str, rps: int) -> RateState:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rps:
            bucket = Bucket(float(rps), float(rps), now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(key)
        bucket.tokens = min(bucket.rate, bucket.tokens + (now - bucket.updated) * bucket.rate)
        bucket.updated = now
        allowed = bucket.tokens >= 1.0
        if allowed:
            bucket.tokens -= 1.0
        full_in = (bucket.rate - bucket.tokens) / bucket.rate
        reset_at = datetime.fromtimestamp(time.time() + full_in, UTC).isoformat().replace("+00:00", "Z")
        retry = 0 if allowed else max(1, math.ceil((1.0 - bucket.tokens) / bucket.rate))
        return RateState(allowed, rps, int(bucket.tokens), reset_at, retry)


@dataclass
class StoredAnswer:
    status: int
    body: bytes
    headers: dict[str, str]


@dataclass
class _Entry:
    body_hash: str
    created: float
    answer: asyncio.Future[StoredAnswer] = field(repr=False)


class IdempotencyConflict(Exception):
    """Same Idempotency-Key, different body."""


class IdempotencyStore:
    """Remembers the first answer per (tenant, route, key) for ``ttl_s``; concurrent twins wait for it."""

    def __init__(self, ttl_s: float, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self._ttl = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str, str], _Entry] = OrderedDict()

    @staticmethod
    def digest(body: bytes) -> str:
        return hashlib.sha256(body).hexdigest()

    def claim(self, scope: tuple[str, str, str], body: bytes) -> asyncio.Future[StoredAnswer] | None:
        """None: the caller owns this key now and must ``finish`` it. A future: the first answer."""
        now = self._clock()
        digest = self.digest(body)
        entry = self._entries.get(scope)
        if entry is not None and now - entry.created > self._ttl:
            del self._entries[scope]
            entry = None
        if entry is not None:
            if entry.body_hash != digest:
                raise IdempotencyConflict
            return entry.answer
        self._entries[scope] = _Entry(digest, now, asyncio.get_running_loop().create_future())
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return None

    def finish(self, scope: tuple[str, str, str], answer: StoredAnswer | None) -> None:
        """Store the answer; ``None`` (a failure worth retrying, e.g. 503) forgets the key instead."""
        entry = self._entries.get(scope)
        if entry is None:
            return
        if answer is None:
            del self._entries[scope]
            if not entry.answer.done():
                entry.answer.cancel()
            return
        if not entry.answer.done():
            entry.answer.set_result(answer)
