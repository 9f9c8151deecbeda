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
from typing import Any

from pipeline import metrics


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


_SECOND: list[Any] = [None, ""]  # the last whole second formatted, and its text


def iso_z(ts: float) -> str:
    """``datetime.fromtimestamp(ts, UTC).isoformat()`` with ``Z`` for ``+00:00``: the same text
    (microseconds rounded half to even, none written when zero), the date and time formatted once
    per second instead of per request."""
    second = math.floor(ts)
    micros = round((ts - second) * 1e6)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    if _SECOND[0] != second:
        _SECOND[0], _SECOND[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_SECOND[1]}.{micros:06d}Z" if micros else f"{_SECOND[1]}Z"


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
        reset_at = iso_z(time.time() + full_in)
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
    size: int = 0  # bytes counted against the tenant


class IdempotencyConflict(Exception):
    """Same Idempotency-Key, different body."""


Scope = tuple[str, str, str]  # (tenant, route, key)
#: Memory of an entry beyond the bytes of its scope, hash and answer: the entry, its future, the scope
#: tuple and str headers, slots in two ordered dicts, the StoredAnswer. Measured with tracemalloc
#: (about 750 bytes; tests/unit/test_memory_bounds.py checks the store holds no more than it counts).
_ENTRY_OVERHEAD = 800


def compact(data: bytes) -> bytes:
    """A copy of ``data`` in an allocation of its own size (``bytes(b)`` would return ``b`` itself)."""
    return bytes(memoryview(data))


def _answer_size(answer: StoredAnswer) -> int:
    return len(answer.body) + sum(len(k) + len(v) for k, v in answer.headers.items())


class IdempotencyStore:
    """Remembers the first answer per (tenant, route, key) for ``ttl_s``; concurrent twins wait for it.

    Bounded in bytes per tenant (answers, keys and an estimate of the overhead), least recently
    claimed first out, so one tenant never evicts another's answers; ``max_entries`` bounds all
    tenants together. An answer bigger than the tenant's budget is given to its waiters but not
    kept. An entry evicted while its answer is pending still answers its waiters (the owner holds
    it until ``finish``). The bytes kept per tenant are the gauge ``feedstream_idempotency_bytes``.
    """

    def __init__(
        self,
        ttl_s: float,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_bytes_per_tenant: int = 16 * 1024 * 1024,
    ):
        self._ttl = ttl_s
        self._max = max_entries
        self._max_bytes = max_bytes_per_tenant
        self._clock = clock
        self._entries: OrderedDict[Scope, _Entry] = OrderedDict()  # all tenants, for max_entries
        self._by_tenant: dict[str, OrderedDict[Scope, _Entry]] = {}
        self._bytes: dict[str, int] = {}
        self._owned: dict[Scope, _Entry] = {}  # claimed, not finished (evicted or not)
        self._headers: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}

    @staticmethod
    def digest(body: bytes) -> str:
        return hashlib.sha256(body).hexdigest()

    def bytes_of(self, tenant: str) -> int:
        return self._bytes.get(tenant, 0)

    def claim(self, scope: Scope, body: bytes) -> asyncio.Future[StoredAnswer] | None:
        """None: the caller owns this key now and must ``finish`` it. A future: the first answer."""
        now = self._clock()
        digest = self.digest(body)
        entry = self._entries.get(scope)
        if entry is not None and now - entry.created > self._ttl:
            self._drop(scope)
            entry = None
        if entry is None:
            entry = self._owned.get(scope)  # evicted while pending: its owner will still answer
        if entry is not None:
            if entry.body_hash != digest:
                raise IdempotencyConflict
            return entry.answer
        entry = _Entry(digest, now, asyncio.get_running_loop().create_future())
        entry.size = _ENTRY_OVERHEAD + sum(len(part) for part in scope) + len(digest)
        self._owned[scope] = entry
        self._add(scope, entry)
        return None

    def finish(self, scope: Scope, answer: StoredAnswer | None) -> None:
        """Store the answer; ``None`` (a failure worth retrying, e.g. 503) forgets the key instead.

        Waiters are always released, even if the entry was evicted meanwhile.
        """
        entry = self._owned.pop(scope, None) or self._entries.get(scope)
        if entry is None:
            return
        kept = self._entries.get(scope) is entry
        if answer is None:
            if kept:
                self._drop(scope)
            if not entry.answer.done():
                entry.answer.cancel()
            return
        # a compact copy: the body is often orjson's, whose bytes keep a 4 KiB buffer however short
        # the answer (a 100-byte answer held 4 KiB, ten times what the budget counted)
        # and answers' headers are few distinct dicts: share them
        headers = self._headers.setdefault(tuple(sorted(answer.headers.items())), answer.headers)
        answer = StoredAnswer(answer.status, compact(answer.body), headers)
        if not entry.answer.done():
            entry.answer.set_result(answer)
        if kept:
            tenant = scope[0]
            grow = _answer_size(answer)
            entry.size += grow
            self._bytes[tenant] = self._bytes.get(tenant, 0) + grow
            self._shrink(tenant)
            self._gauge(tenant)

    def _add(self, scope: Scope, entry: _Entry) -> None:
        tenant = scope[0]
        self._entries[scope] = entry
        self._by_tenant.setdefault(tenant, OrderedDict())[scope] = entry
        self._bytes[tenant] = self._bytes.get(tenant, 0) + entry.size
        while len(self._entries) > self._max:
            self._drop(next(iter(self._entries)))
        self._shrink(tenant)
        self._gauge(tenant)

    def _shrink(self, tenant: str) -> None:
        mine = self._by_tenant.get(tenant)
        while mine and self._bytes.get(tenant, 0) > self._max_bytes:
            self._drop(next(iter(mine)))

    def _drop(self, scope: Scope) -> None:
        entry = self._entries.pop(scope, None)
        if entry is None:
            return
        tenant = scope[0]
        mine = self._by_tenant.get(tenant)
        if mine is not None:
            mine.pop(scope, None)
            if not mine:
                del self._by_tenant[tenant]
        self._bytes[tenant] = self._bytes.get(tenant, 0) - entry.size
        if self._bytes[tenant] <= 0:
            del self._bytes[tenant]
        self._gauge(tenant)

    def _gauge(self, tenant: str) -> None:
        metrics.IDEMPOTENCY_BYTES.labels(tenant).set(self._bytes.get(tenant, 0))
