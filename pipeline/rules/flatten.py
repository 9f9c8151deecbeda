"""Flattening of seed 002 feedback objects into one typed entry per dotted key.

Seed 002 lets a caller send booleans, numbers, strings, ``{"score", "reason"}`` objects and
nested dictionaries; the stream and the HTTP answer both need the same flat list of keys, so the
rules live here, once, without any I/O.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import msgspec

from pipeline.ids import uuid5_names

__all__ = [
    "FEEDBACK_ID_NAMESPACE",
    "FlatEntry",
    "FlattenError",
    "feedback_id",
    "feedback_ids",
    "feedback_namer",
    "flatten_feedback",
    "flatten_plain",
]

# uuid5(NAMESPACE_DNS, "feedback-ids.feedstream"), written out so it can never drift.
FEEDBACK_ID_NAMESPACE = uuid.UUID("2bb6ef59-a65f-5c8a-9e93-aac957ef3d38")

#: value classes that are never a nested object (checked before the slower ``Mapping`` check)
_PLAIN_SCALARS = frozenset({bool, int, float, str, type(None), list})

FlatValue = bool | float | str


class FlatEntry(msgspec.Struct, frozen=True, gc=False):
    """One flattened feedback key; ``reason`` is only set for ``{"score", "reason"}`` leaves (a
    Struct: built in C, several per item on the hot path, where a frozen dataclass's ``__init__``
    was a tenth of flattening)."""

    key: str
    value: FlatValue
    reason: str | None = None


class FlattenError(ValueError):
    """The feedback object breaks a seed 002 rule; the message names the offending key path."""


def _type_name(value: Any) -> str:
    """JSON-ish type names, so the error speaks the caller's language ("null", not "NoneType")."""
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, float):
        return "non-finite number"
    return type(value).__name__


def _is_scalar(value: Any) -> bool:
    return isinstance(value, bool | int | float | str)


def _scalar(value: Any, path: str) -> FlatValue:
    """Bool stays bool (checked first: bool is an int subclass), int becomes float, str stays str."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            raise FlattenError(f"number too large at {path!r}") from None
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise FlattenError(f"unsupported value type {_type_name(value)} at {path!r}")


def _structured(value: Mapping[str, Any], path: str) -> FlatEntry | None:
    """A ``{"score"}``/``{"score", "reason"}`` object as one leaf, or None if it is a plain nested dict.

    ``{"score": {...}}`` without a reason stays a nested dict (key ``path.score...``); once a
    ``reason`` is present the caller clearly meant a structured score, so a bad one is an error.
    """
    n = len(value)  # exactly {"score"} or {"score", "reason"} (without building a set per object)
    if not (n == 1 or n == 2) or "score" not in value or (n == 2 and "reason" not in value):
        return None
    score = value["score"]
    has_reason = n == 2
    if not _is_scalar(score):
        if not has_reason:
            return None
        raise FlattenError(
            f"structured score at {path + '.score'!r} must be a boolean, number or string, "
            f"not {_type_name(score)}"
        )
    reason = value.get("reason")
    if has_reason and not isinstance(reason, str):
        raise FlattenError(f"reason at {path + '.reason'!r} must be a string, not {_type_name(reason)}")
    return FlatEntry(key=path, value=_scalar(score, path + ".score"), reason=reason)


def _check_key(key: Any, prefix: str) -> str:
    if not isinstance(key, str) or not key:
        where = f"under {prefix!r}" if prefix else "at the top level"
        raise FlattenError(f"feedback keys must be non-empty strings; got {key!r} {where}")
    return key


def flatten_feedback(
    feedback: Mapping[str, Any], *, max_keys: int | None = None, max_key_chars: int | None = None
) -> list[FlatEntry]:
    """Seed 002 flattening: dotted keys, typed values, order of first appearance, no overwrites.

    Iterative (an explicit stack of iterators) so deep input cannot raise RecursionError:
    the only exception this raises is :class:`FlattenError`. ``max_keys`` and ``max_key_chars``
    (the edge's bounds, :mod:`pipeline.limits`) stop at the first key past them.

    Valid parsed JSON (every item at the edge, every seed 002 event in the stream) takes
    :func:`flatten_plain`; anything it does not take is flattened again by the checked loop, which
    names the error, so both give the same entries and the same errors (a property test holds it).
    """
    if feedback.__class__ is dict:
        entries = flatten_plain(feedback, max_keys, max_key_chars)
        if entries is not None:
            return entries
    return _flatten_checked(feedback, max_keys, max_key_chars)


class _NotPlain(Exception):
    """Raised inside :func:`_walk_plain` to leave the input to the checked loop."""


def flatten_plain(
    feedback: dict[str, Any], max_keys: int | None, max_key_chars: int | None
) -> list[FlatEntry] | None:
    """The entries of plain valid JSON, or None as soon as anything is not (an error, a Mapping that
    is not a dict, a subclass of a scalar, nesting past the recursion limit): no error messages, the
    bounds and collisions checked once at the end, exact classes instead of ``isinstance``."""
    out: list[FlatEntry] = []
    try:
        _walk_plain(feedback, "", out)
    except (_NotPlain, OverflowError, RecursionError):
        return None
    keys = {entry.key for entry in out}
    if len(keys) != len(out):  # a collision: the checked loop names it
        return None
    if max_keys is not None and len(out) > max_keys:
        return None
    if max_key_chars is not None and out and max(map(len, keys)) > max_key_chars:
        return None
    return out


def _walk_plain(obj: dict[str, Any], prefix: str, out: list[FlatEntry]) -> None:
    """Recursive (faster than an explicit stack; the edge bounds depth far below the limit, and a
    RecursionError only sends the input to the iterative checked loop)."""
    for key, value in obj.items():
        if key.__class__ is not str or not key:
            raise _NotPlain
        path = prefix + key
        cls = value.__class__
        if cls is bool or cls is str:
            out.append(FlatEntry(path, value))
        elif cls is float:
            if value - value != 0.0:  # inf or nan
                raise _NotPlain
            out.append(FlatEntry(path, value))
        elif cls is int:
            out.append(FlatEntry(path, float(value)))  # OverflowError past float's range
        elif cls is dict:
            n = len(value)
            if (n == 1 or n == 2) and "score" in value and (n == 1 or "reason" in value):
                score, reason = value["score"], value.get("reason")
                kind = score.__class__
                if n == 2 and reason.__class__ is not str:
                    raise _NotPlain
                if kind is bool or kind is str or (kind is float and score - score == 0.0):
                    out.append(FlatEntry(path, score, reason))
                elif kind is int:
                    out.append(FlatEntry(path, float(score), reason))
                else:  # an object score (a nested dict without a reason) or an error
                    raise _NotPlain
            else:
                _walk_plain(value, path + ".", out)
        else:
            raise _NotPlain


def _flatten_checked(
    feedback: Mapping[str, Any], max_keys: int | None, max_key_chars: int | None
) -> list[FlatEntry]:
    """The flattening with every check in place, naming the first thing wrong."""
    if not isinstance(feedback, Mapping):
        raise FlattenError(f"feedback must be an object, not {_type_name(feedback)}")
    out: dict[str, FlatEntry] = {}
    # the hot path of seed 002 (every item, at the edge and in the stream): parsed JSON is plain
    # dicts, strings and numbers, told apart by their exact class before any ABC check
    stack: list[tuple[str, Iterator[tuple[Any, Any]]]] = [("", iter(feedback.items()))]
    while stack:
        prefix, items = stack[-1]
        for raw_key, value in items:
            key = raw_key if raw_key.__class__ is str and raw_key else _check_key(raw_key, prefix)
            path = f"{prefix}.{key}" if prefix else key
            cls = value.__class__
            if cls is bool or cls is str:
                entry = FlatEntry(path, value)
            elif cls is dict or (cls not in _PLAIN_SCALARS and isinstance(value, Mapping)):
                leaf = _structured(value, path)
                if leaf is None:
                    stack.append((path, iter(value.items())))
                    break  # into the nested object; this one resumes after it
                entry = leaf
            else:
                entry = FlatEntry(path, _scalar(value, path))
            if entry.key in out:
                raise FlattenError(f"duplicate feedback key {entry.key!r} after flattening nested objects")
            if max_key_chars is not None and len(entry.key) > max_key_chars:
                raise FlattenError(
                    f"flattened feedback key {entry.key[:40]!r}... is longer than {max_key_chars} characters"
                )
            if max_keys is not None and len(out) >= max_keys:
                raise FlattenError(f"feedback has more than {max_keys} keys after flattening")
            out[entry.key] = entry
        else:
            stack.pop()
    return list(out.values())


def feedback_id(event_id: str, key: str) -> str:
    """A uuid5 of (event id, flattened key): the HTTP answer and the stream derive the same id.

    The event id's length is part of the name, so no (event id, key) pair can alias another.
    """
    return feedback_namer(event_id)(key)


def feedback_namer(event_id: str) -> Callable[[str], str]:
    """``key -> feedback_id(event_id, key)`` for the keys of one event (its name prefix encoded once)."""
    return uuid5_names(FEEDBACK_ID_NAMESPACE, f"{len(event_id)}:{event_id}:")


def feedback_ids(event_id: str, keys: Iterable[str]) -> dict[str, str]:
    """Flattened key -> feedback id for the keys of one event (seed 002's answer of an item)."""
    fid = feedback_namer(event_id)
    return {key: fid(key) for key in keys}
