"""The bounds every accepted body keeps, declared once and enforced at the edge (ingest and publisher).

Why here: a record the stream cannot encode, decode or fit on a topic must be refused with a 4xx
before it is accepted, never dead-lettered after a 2xx. Each bound sits below what every later
stage accepts (orjson encodes 254 levels, pydantic's JSON decoder stops at 200, topics take the
sizes declared in :mod:`pipeline.kafka.topics`), so the edge is the only place a shape can fail.
Pure constants and checks; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DOMAIN_PATTERN",
    "MAX_DEPTH",
    "MAX_DOMAIN_CHARS",
    "MAX_ID_CHARS",
    "MAX_KEYS_PER_ITEM",
    "MAX_KEYS_PER_REQUEST",
    "MAX_LABEL_CHARS",
    "MAX_TAGS",
    "MAX_TEXT_CHARS",
    "MAX_UUID_INPUT_CHARS",
    "MAX_WEIGHT",
    "DepthExceeded",
    "deepest_path",
    "is_domain_name",
]

#: Identifiers that become Kafka keys, state keys or triplet members: seeker, candidate, case,
#: module and outcome labels. 256 characters fit every real id (UUIDs, ULIDs, e-mails, URNs).
MAX_ID_CHARS = 256
#: Outcome labels (seed 000) and other short names.
MAX_LABEL_CHARS = 64
#: Free text that becomes part of a key (seed 004 ``query`` anchors a search without an id).
MAX_TEXT_CHARS = 2048
#: A UUID in any spelling Python accepts (``urn:uuid:`` + 36 characters is the longest useful one).
MAX_UUID_INPUT_CHARS = 45
#: Nesting of a whole body, counted in containers from the top (``{"a": {"b": 1}}`` is 2).
MAX_DEPTH = 32
#: Seed 000 item weights are in [0, MAX_WEIGHT]: a triplet's weight (a product of two) stays finite.
MAX_WEIGHT = 1000.0
#: Flattened keys (signals) one seed 002 item may carry, and one request in total.
MAX_KEYS_PER_ITEM = 256
MAX_KEYS_PER_REQUEST = 10_000
#: Seed 002 tags per item.
MAX_TAGS = 32
#: Domain names (the tenants file's pattern allows 128 characters).
MAX_DOMAIN_CHARS = 128
#: Domain names in the tenants file: no '/', so ``domain/anchor`` keys cannot collide.
DOMAIN_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$"
_DOMAIN = re.compile(DOMAIN_PATTERN)


class DepthExceeded(ValueError):
    """A body nests deeper than :data:`MAX_DEPTH`; ``path`` is where it first does."""

    def __init__(self, path: str, limit: int) -> None:
        super().__init__(f"Body nests deeper than {limit} levels at '{path or '$'}'.")
        self.path = path
        self.limit = limit


def deepest_path(value: Any, limit: int = MAX_DEPTH) -> None:
    """Raise :class:`DepthExceeded` if ``value`` (parsed JSON) nests deeper than ``limit``.

    Plain parsed JSON within the limit (the common case) is checked without building paths; only a
    value that fails that (too deep, or a Mapping that is not a dict) is walked again to name the
    path. Iterative, so it cannot itself hit the recursion limit.
    """
    if not _within(value, limit):
        _name_too_deep(value, limit)


_CONTAINERS = frozenset({dict, list})
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _within(value: Any, limit: int) -> bool:
    """True if ``value`` is plain parsed JSON (dicts, lists, scalars) nesting at most ``limit``
    containers; False if too deep or if it holds a Mapping that is not a dict (left to
    :func:`_name_too_deep`)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        kind = type(node)
        if kind is dict:
            children: Any = node.values()
        elif kind is list:
            children = node
        elif isinstance(node, Mapping):
            return False
        else:
            continue
        if depth > limit:
            return False
        for child in children:
            kind = type(child)
            if kind in _CONTAINERS or (kind not in _SCALARS and isinstance(child, Mapping)):
                push((child, depth + 1))
    return True


def _name_too_deep(value: Any, limit: int) -> None:
    """Raise :class:`DepthExceeded` naming the path of the first container deeper than ``limit``."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, Mapping):
            children: Any = ((str(k), v) for k, v in node.items())
        elif isinstance(node, list):
            children = ((str(i), v) for i, v in enumerate(node))
        else:
            continue
        if depth > limit:
            raise DepthExceeded(path, limit)
        for name, child in children:
            if isinstance(child, Mapping | list):
                stack.append((child, f"{path}.{name}" if path else name, depth + 1))


def is_domain_name(name: str) -> bool:
    return bool(_DOMAIN.fullmatch(name))
