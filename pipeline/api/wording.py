"""Error wording of the API: pydantic validation errors as short human sentences and JSON details.

Shared by the ingest and the publisher (through the contract registry's refusals), so both say the
same thing about the same body. Never echoes the input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from pipeline.api.contracts import CorrectionErrorCode

__all__ = [
    "correction_error_code",
    "describe_validation_error",
    "first_missing_field",
    "is_score_range_error",
    "validation_details",
]

_SCORE_RANGE_TYPES = frozenset({"greater_than_equal", "less_than_equal", "finite_number"})


def is_score_range_error(err: ValidationError) -> bool:
    """True when a seed 003 error concerns ``score`` being outside [0, 1] (the seed's 422 case)."""
    return any(e["loc"] == ("score",) and e["type"] in _SCORE_RANGE_TYPES for e in err.errors())


def validation_details(err: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors as JSON: a validator's ``ctx`` holds the exception it raised, which orjson
    cannot serialize (the answer was a bare 500); it is given as its message instead."""
    details: list[dict[str, Any]] = []
    for error in err.errors(include_url=False, include_input=False):
        detail: dict[str, Any] = dict(error)
        ctx: dict[str, Any] = detail.get("ctx") or {}
        if ctx:
            detail["ctx"] = {
                k: v if isinstance(v, str | int | float | bool | None) else str(v) for k, v in ctx.items()
            }
        details.append(detail)
    return details


def _num(value: Any) -> str:
    """``0.0`` reads as ``0`` in messages; other values as they are."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _phrase(error: Mapping[str, Any]) -> str:
    """What is wrong with one field, as a short phrase (no field name)."""
    kind: str = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        key = {">=": "ge", ">": "gt", "<=": "le", "<": "lt"}[bounds[kind]]
        return f"must be {bounds[kind]} {_num(ctx.get(key))}"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s)"
    simple = {
        "string_type": "must be a string",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "bool_type": "must be a boolean",
        "dict_type": "must be an object",
        "model_type": "must be an object",
        "model_attributes_type": "must be an object",
        "list_type": "must be an array",
        "finite_number": "must be a finite number",
        "datetime_type": "must be a date-time",
        "datetime_parsing": "must be a date-time",
    }
    if kind in simple:
        return simple[kind]
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected')}"
    msg: str = error["msg"]
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


def _describe_one(error: Mapping[str, Any]) -> str:
    loc = _loc(error["loc"])
    if error["type"] == "missing":
        return f"Field '{loc}' is required."
    if error["type"] == "extra_forbidden":
        return f"Field '{loc}' is not allowed."
    where = f"Field '{loc}'" if loc else "Body"
    return f"{where}: {_phrase(error)}."


def describe_validation_error(err: ValidationError, *, max_errors: int = 5) -> str:
    """Human messages such as "Field 'case_id' is required." for API answers (never the input)."""
    errors = err.errors(include_url=False, include_input=False)
    parts = [_describe_one(e) for e in errors[:max_errors]]
    if len(errors) > max_errors:
        parts.append(f"({len(errors) - max_errors} more problem(s) not shown.)")
    return " ".join(parts)


def first_missing_field(err: ValidationError) -> str | None:
    """The dotted path of the first missing required field, if any (MISSING_REQUIRED_FIELD)."""
    for e in err.errors(include_url=False, include_input=False):
        if e["type"] == "missing":
            return _loc(e["loc"])
    return None


def correction_error_code(err: ValidationError) -> CorrectionErrorCode:
    """Seed 001's code for a validation failure: a missing field wins over an invalid one."""
    if first_missing_field(err) is not None:
        return CorrectionErrorCode.MISSING_REQUIRED_FIELD
    return CorrectionErrorCode.INVALID_FIELD
