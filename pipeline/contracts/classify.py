"""Which contract a body posted to a shared route is for (``POST /v1/feedback``: seeds 000, 001, 002, 004).

An array is the route's array contract (seed 002). For an object, signature keys pick the contract
even when the body is invalid, so the caller can answer in that contract's error shape; with no or
several signatures, full validation decides, and failure explains itself per contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ValidationError

from pipeline.api.wording import describe_validation_error
from pipeline.contracts.spec import ContractSpec

__all__ = ["Classified", "ClassifyOutcome", "classify", "sniff"]


class ClassifyOutcome(StrEnum):
    MATCHED = "matched"  # one contract; ``model`` or ``error`` tells whether the body is valid
    NO_CONTRACT = "no_contract"  # no signature key and no contract validates
    AMBIGUOUS = "ambiguous"  # several contracts signalled, and not exactly one validates


@dataclass(frozen=True)
class Classified:
    """Which contract a body is for; on failure, per contract tried, why it did not fit.

    For an array contract both ``model`` and ``error`` are None: its items are validated one by
    one by its intake.
    """

    outcome: ClassifyOutcome
    contract: str | None = None
    signalled: tuple[str, ...] = ()
    model: BaseModel | None = None
    error: ValidationError | None = None
    reasons: Mapping[str, str] = field(default_factory=dict)
    hint: str | None = None

    @property
    def message(self) -> str:
        """One human sentence (or a few) for a 400 answer when no single contract fits."""
        if self.outcome is ClassifyOutcome.MATCHED:
            assert self.contract is not None
            why = self.reasons.get(self.contract)
            return f"Body is a {self.contract} request" + (f" but invalid: {why}" if why else ".")
        head = (
            "Body matches no feedback contract."
            if self.outcome is ClassifyOutcome.NO_CONTRACT
            else "Body mixes fields of several feedback contracts (" + ", ".join(self.signalled) + ")."
        )
        tried = " ".join(f"[{c}] {why}" for c, why in self.reasons.items())
        return " ".join(part for part in (head, tried, self.hint) if part)


def _validate(spec: ContractSpec, body: Any) -> tuple[BaseModel | None, ValidationError | None]:
    try:
        return spec.request.model_validate(body), None
    except ValidationError as err:
        return None, err


def classify(body: Any, specs: Sequence[ContractSpec]) -> Classified:
    """Decide which of ``specs`` (the contracts of one route) a body is meant for."""
    objects = [s for s in specs if not s.array]
    if isinstance(body, list):
        arrays = [s for s in specs if s.array]
        if arrays:
            return Classified(ClassifyOutcome.MATCHED, arrays[0].name, (arrays[0].name,))
    if not isinstance(body, Mapping):
        kind = "null" if body is None else type(body).__name__
        return Classified(
            ClassifyOutcome.NO_CONTRACT,
            reasons={s.name: f"Body must be a JSON object, not {kind}." for s in objects},
            hint="Send a JSON object, or a JSON array of inference feedback events.",
        )
    keys = {k for k in body if isinstance(k, str)}
    signalled = tuple(s for s in objects if keys & s.signature)
    if len(signalled) == 1:
        (spec,) = signalled
        model, error = _validate(spec, body)
        reasons = {spec.name: describe_validation_error(error)} if error is not None else {}
        return Classified(ClassifyOutcome.MATCHED, spec.name, (spec.name,), model, error, reasons)

    valid: dict[str, BaseModel] = {}
    reasons = {}
    for spec in objects:
        model, error = _validate(spec, body)
        if model is not None:
            valid[spec.name] = model
        elif error is not None:
            reasons[spec.name] = describe_validation_error(error, max_errors=3)
    names = tuple(s.name for s in signalled)
    if len(valid) == 1:
        ((name, model),) = valid.items()
        return Classified(ClassifyOutcome.MATCHED, name, names, model)
    for name in valid:
        reasons[name] = "Valid, but so is another contract."
    hint = None
    if "task_id" in keys:
        hint = "Scored outputs (task_id) go to POST /api/v1/feedback."
    outcome = ClassifyOutcome.AMBIGUOUS if signalled or valid else ClassifyOutcome.NO_CONTRACT
    return Classified(outcome, None, names, reasons=reasons, hint=hint)


def sniff(body: Any, specs: Sequence[ContractSpec]) -> str | None:
    """Which contract a body is, by shape only (never validated): to answer an unauthenticated
    request in its contract's error shape."""
    if isinstance(body, list):
        return next((s.name for s in specs if s.array), None)
    if not isinstance(body, dict):
        return None
    signalled = [s.name for s in specs if not s.array and s.signature & body.keys()]
    return signalled[0] if len(signalled) == 1 else None
