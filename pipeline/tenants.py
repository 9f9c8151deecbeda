"""Tenants: API keys (stored hashed), rate limits, feedback modes, domains, thresholds, labels.

Loaded once from a YAML or JSON file and validated up front, so a bad file stops the process at
start with the file, the field path and the reason, instead of failing on some later request.
Run ``feedstream tenants hash-key KEY`` to hash a key, ``feedstream tenants check FILE`` to validate
(``python -m pipeline.tenants`` does the same without the console script).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NamedTuple, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.ids import canonical_uuid
from pipeline.limits import DOMAIN_PATTERN
from pipeline.wire.names import Contract

__all__ = [
    "BUILTIN_LABELS",
    "DefaultDomains",
    "DomainConfig",
    "FeedbackMode",
    "LabelConfig",
    "OutcomeLabel",
    "TaskConfig",
    "Tenant",
    "TenantRegistry",
    "TenantsConfigError",
    "TenantsFile",
    "hash_api_key",
    "load_tenants",
    "main",
    "parse_tenants",
]

_KEY_HASH = re.compile(r"sha256:[0-9a-f]{64}")
# The contracts whose bodies carry no domain, so a tenant names one for them.
DEFAULT_CONTRACTS = frozenset({Contract.CORRECTION, Contract.INFERENCE_FEEDBACK, Contract.SEARCH_EVENT})
_HASH_HINT = "hash the key with: feedstream tenants hash-key KEY"


class TenantsConfigError(ValueError):
    """The tenants file is unreadable or invalid; the message names file, field path and reason."""


class FeedbackMode(StrEnum):
    """What is done with a tenant's feedback (seed 001); training needs an explicit opt-in."""

    OFF = "off"  # discarded
    AUDIT_ONLY = "audit_only"  # stored for analytics, never trained on (the default)
    TENANT_TUNING = "tenant_tuning"  # trains tenant-scoped models
    SHARED_IMPROVEMENT = "shared_improvement"  # also feeds anonymized shared improvement


@dataclass(frozen=True, slots=True)
class OutcomeLabel:
    """A seed 000 outcome label: its relevance grade in [0, 3] and whether it is a positive."""

    name: str
    grade: float
    positive: bool
    builtin: bool = False


BUILTIN_LABELS: Mapping[str, OutcomeLabel] = {
    "converted": OutcomeLabel("converted", 3.0, True, builtin=True),
    "accepted": OutcomeLabel("accepted", 2.0, True, builtin=True),
    "expired": OutcomeLabel("expired", 1.0, False, builtin=True),
    "rejected": OutcomeLabel("rejected", 0.0, False, builtin=True),
}


def hash_api_key(key: str) -> str:
    """The form keys are stored in (``sha256:<hex>``): a leaked tenants file leaks no key."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def _key_hash(value: str) -> str:
    """Accept only hashes; the error never echoes the value, which may be a plain key."""
    lowered = value.lower()
    if not _KEY_HASH.fullmatch(lowered):
        raise ValueError(
            "must be 'sha256:<64 hex digits>', the SHA-256 of the key, never the key itself; " + _HASH_HINT
        )
    return lowered


def _canonical_uuid(value: str) -> str:
    canon = canonical_uuid(value)
    if canon is None:
        raise ValueError("task ids must be UUIDs such as '550e8400-e29b-41d4-a716-446655440000'")
    return canon


KeyHash = Annotated[str, AfterValidator(_key_hash)]
TaskId = Annotated[str, AfterValidator(_canonical_uuid)]
Name = Annotated[str, Field(min_length=1)]
#: Domain names: no '/' (Kafka and state keys are ``domain/anchor``), at most 128 characters.
DomainName = Annotated[str, Field(pattern=DOMAIN_PATTERN)]


def _ownership_key(name: str) -> str:
    """What two names must not share across (or within) tenants: the canonical UUID of a task id
    (any spelling), else the domain name case-folded (``Dating`` and ``dating`` would be told
    apart by the stream but not by a reader)."""
    return canonical_uuid(name) or name.casefold()


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> float:
    """``24h``, ``90m``, ``30s``, ``2d`` or a number of seconds, as seconds (at least 1)."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 24h, 90m, 30s or 2d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if m is None:
            raise ValueError("must be a duration such as 24h, 90m, 30s or 2d")
        seconds = float(m.group(1)) * _SECONDS[m.group(2)]
    if seconds < 1:
        raise ValueError("must be at least 1 second")
    return seconds


class TimeTrigger(NamedTuple):
    """A domain's time-based trigger: fire when ``min_units`` are pending and the oldest has waited
    ``max_wait_s``."""

    max_wait_s: float
    min_units: int


class DomainConfig(_Config):
    threshold: int = Field(ge=1, strict=True, description="Pending training units that trigger a train.")
    max_wait: float | None = Field(
        default=None,
        description="Also trigger when the oldest pending unit has waited this long (24h, 90m, 30s...).",
    )
    min_units: int = Field(
        default=1, ge=1, strict=True, description="Pending units a max_wait trigger needs."
    )

    @field_validator("max_wait", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @property
    def time_trigger(self) -> TimeTrigger | None:
        return None if self.max_wait is None else TimeTrigger(self.max_wait, self.min_units)


class TaskConfig(_Config):
    """A seed 003 task; ``input_fields`` (if set) is the exact key set ``inputs`` must have."""

    threshold: int = Field(ge=1, strict=True)
    input_fields: frozenset[str] | None = None

    @field_validator("input_fields", mode="before")
    @classmethod
    def _no_duplicates(cls, value: Any) -> Any:
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError("must not list a field twice")
        return value


class LabelConfig(_Config):
    grade: float = Field(ge=0.0, le=3.0, strict=True, allow_inf_nan=False)
    positive: bool = Field(strict=True)


class DefaultDomains(_Config):
    """Domains for the contracts whose bodies carry none (seeds 001, 002, 004)."""

    correction: DomainName | None = None
    inference_feedback: DomainName | None = None
    search_event: DomainName | None = None


class Tenant(_Config):
    """One customer: who it is, how its keys are limited, and what it owns."""

    id: str = Field(pattern=r"^[a-z0-9_-]+$")
    api_keys: list[KeyHash] = Field(min_length=1)
    tier: Name = "standard"
    rate_limit_rps: int = Field(default=50, ge=1, strict=True, description="Per key; burst = rps.")
    feedback_mode: FeedbackMode = FeedbackMode.AUDIT_ONLY
    default_domains: DefaultDomains = DefaultDomains()
    domains: dict[DomainName, DomainConfig] = Field(default_factory=dict)
    tasks: dict[TaskId, TaskConfig] = Field(default_factory=dict)
    labels: dict[Name, LabelConfig] = Field(default_factory=dict)

    @field_validator("feedback_mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare ``off`` as false; the author meant the mode ``off``."""
        return FeedbackMode.OFF if value is False else value

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_ids_distinct(cls, value: Any) -> Any:
        """Two spellings of one UUID would silently collapse into one task after canonicalizing."""
        if isinstance(value, Mapping):
            seen: set[str] = set()
            for key in value:
                canon = canonical_uuid(key)
                if canon is None:
                    continue
                if canon in seen:
                    raise ValueError(f"task {canon} is listed twice")
                seen.add(canon)
        return value

    @field_validator("labels")
    @classmethod
    def _no_builtin_redefinition(cls, value: dict[str, LabelConfig]) -> dict[str, LabelConfig]:
        clash = sorted(set(value) & set(BUILTIN_LABELS))
        if clash:
            raise ValueError(f"may not redefine built-in label(s) {', '.join(clash)}")
        return value

    @model_validator(mode="after")
    def _defaults_are_owned(self) -> Self:
        for contract, domain in self.default_domains.model_dump().items():
            if domain is not None and domain not in self.domains:
                raise ValueError(f"default_domains.{contract}: domain {domain!r} is not listed in domains")
        seen: dict[str, str] = {}
        for name in (*self.domains, *self.tasks):
            key = _ownership_key(name)
            if key in seen:
                if canonical_uuid(name) is not None and canonical_uuid(seen[key]) is not None:
                    raise ValueError(f"{name!r} is both a domain and a task")
                raise ValueError(f"domains {seen[key]!r} and {name!r} differ only in letter case")
            seen[key] = name
        return self

    def owns_domain(self, domain: str) -> bool:
        """Domains and task ids (any UUID spelling) both count as owned domains."""
        return domain in self.domains or _canonical_or_none(domain) in self.tasks

    def task(self, task_id: str) -> TaskConfig | None:
        canon = _canonical_or_none(task_id)
        return None if canon is None else self.tasks.get(canon)

    def threshold_for(self, domain: str) -> int:
        """Training threshold of an owned domain or task; KeyError if the tenant does not own it."""
        if domain in self.domains:
            return self.domains[domain].threshold
        task = self.task(domain)
        if task is None:
            raise KeyError(f"tenant {self.id!r} does not own domain {domain!r}")
        return task.threshold

    def default_domain(self, contract: Contract | str) -> str | None:
        """Domain for a contract whose body has none; None for contracts that carry their own."""
        try:
            which = Contract(contract)
        except ValueError:
            return None
        if which not in DEFAULT_CONTRACTS:
            return None
        domain: str | None = getattr(self.default_domains, which.value)
        return domain

    def resolve_label(self, label: str) -> OutcomeLabel | None:
        """Built-in labels first (they cannot be redefined), then the tenant's own; None if unknown."""
        builtin = BUILTIN_LABELS.get(label)
        if builtin is not None:
            return builtin
        own = self.labels.get(label)
        return None if own is None else OutcomeLabel(label, own.grade, own.positive)

    def inputs_problem(self, task_id: str, inputs: Mapping[str, Any] | None) -> str | None:
        """Why ``inputs`` break the task's exact field set (seed 003's 422), or None if they fit.

        Absent ``inputs`` are allowed: the field is optional in seed 003.
        """
        task = self.task(task_id)
        if task is None or task.input_fields is None or inputs is None:
            return None
        given = set(inputs)
        missing, extra = sorted(task.input_fields - given), sorted(given - task.input_fields)
        if not missing and not extra:
            return None
        parts = [
            f"missing {', '.join(missing)}" if missing else "",
            f"unexpected {', '.join(extra)}" if extra else "",
        ]
        return "inputs do not match the task's fields: " + "; ".join(p for p in parts if p)


def _canonical_or_none(value: str) -> str | None:
    return canonical_uuid(value)


class TenantsFile(_Config):
    tenants: list[Tenant] = Field(min_length=1)


class TenantRegistry:
    """All tenants, indexed by key hash, id and owned domain, for O(1) lookups per request."""

    def __init__(self, tenants: Sequence[Tenant]) -> None:
        problems = _cross_tenant_problems(tenants)
        if problems:
            raise TenantsConfigError("\n".join(problems))
        self._tenants = tuple(tenants)
        self._by_id = {t.id: t for t in tenants}
        self._by_key = {h: t for t in tenants for h in t.api_keys}
        self._by_domain = {d: t for t in tenants for d in (*t.domains, *t.tasks)}

    @property
    def tenants(self) -> tuple[Tenant, ...]:
        return self._tenants

    def __len__(self) -> int:
        return len(self._tenants)

    def authenticate(self, key: str) -> Tenant | None:
        """The tenant owning this API key, or None. Hash then look up: no plain key is kept."""
        if not key:
            return None
        return self._by_key.get(hash_api_key(key))

    def tenant(self, tenant_id: str) -> Tenant | None:
        return self._by_id.get(tenant_id)

    def mode_for(self, tenant_id: str) -> FeedbackMode | None:
        """The tenant's feedback mode; None for an unknown tenant (callers should treat it as off)."""
        tenant = self._by_id.get(tenant_id)
        return None if tenant is None else tenant.feedback_mode

    def tenant_of(self, domain: str) -> Tenant | None:
        """The one tenant owning a domain (exact name) or task id (any UUID spelling), or None.

        Ownership is unique across tenants, also case-insensitively and across UUID spellings
        (a file breaking that is refused at load).
        """
        owner = self._by_domain.get(domain)
        if owner is None:
            canon = _canonical_or_none(domain)
            owner = None if canon is None else self._by_domain.get(canon)
        return owner

    def owner_of(self, domain: str) -> str | None:
        """The id of the tenant owning a domain or task id, or None (e.g. StreamView's ``owner_of``)."""
        owner = self.tenant_of(domain)
        return None if owner is None else owner.id

    def threshold_for(self, domain: str) -> int | None:
        """Threshold of a domain or task whoever owns it (the stream knows no tenant); None if unowned."""
        owner = self.tenant_of(domain)
        return None if owner is None else owner.threshold_for(domain)

    def time_trigger_for(self, domain: str) -> TimeTrigger | None:
        """A domain's ``max_wait``/``min_units``, if it sets them (tasks do not)."""
        owner = self.tenant_of(domain)
        config = None if owner is None else owner.domains.get(domain)
        return None if config is None else config.time_trigger


def _cross_tenant_problems(tenants: Sequence[Tenant]) -> list[str]:
    """Uniqueness across tenants: ids, key hashes, and domain/task ownership."""
    problems: list[str] = []
    ids: dict[str, int] = {}
    keys: dict[str, str] = {}
    owners: dict[str, tuple[str, str]] = {}  # ownership key -> (tenant id, name as written)
    for i, tenant in enumerate(tenants):
        if tenant.id in ids:
            problems.append(
                f"tenants.{i}.id: tenant id {tenant.id!r} is already used by tenants.{ids[tenant.id]}"
            )
        ids.setdefault(tenant.id, i)
        for j, key_hash in enumerate(tenant.api_keys):
            if key_hash in keys:
                problems.append(
                    f"tenants.{i}.api_keys.{j}: this key hash is already used by tenant {keys[key_hash]!r}"
                )
            keys.setdefault(key_hash, tenant.id)
        for kind, names in (("domains", tenant.domains), ("tasks", tenant.tasks)):
            for name in names:
                key = _ownership_key(name)
                if key in owners and owners[key][0] != tenant.id:
                    other, written = owners[key]
                    same = "" if written == name else f" (as {written!r})"
                    problems.append(f"tenants.{i}.{kind}.{name}: already owned by tenant {other!r}{same}")
                owners.setdefault(key, (tenant.id, name))
    return problems


def _format_errors(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return lines


def parse_tenants(data: Any, *, source: str = "<tenants>") -> TenantRegistry:
    """Validate already-parsed tenants data (tests and tools use this without a file)."""
    try:
        parsed = TenantsFile.model_validate(data)
    except ValidationError as err:
        raise TenantsConfigError("\n".join(f"{source}: {line}" for line in _format_errors(err))) from None
    try:
        return TenantRegistry(parsed.tenants)
    except TenantsConfigError as err:
        raise TenantsConfigError("\n".join(f"{source}: {line}" for line in str(err).splitlines())) from None


def load_tenants(path: str | Path) -> TenantRegistry:
    """Read a ``.yaml``/``.yml`` or ``.json`` tenants file and validate it completely."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise TenantsConfigError(f"{path}: unsupported extension {suffix!r} (use .yaml, .yml or .json)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise TenantsConfigError(f"{path}: cannot read: {err}") from None
    try:
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise TenantsConfigError(f"{path}: not valid {suffix[1:].upper()}: {err}") from None
    return parse_tenants(data, source=str(path))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``hash-key KEY`` prints the stored form of a key; ``check FILE`` validates a file."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.tenants", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    hash_cmd = sub.add_parser("hash-key", help="print sha256:<hex> of an API key")
    hash_cmd.add_argument("key")
    check_cmd = sub.add_parser("check", help="validate a tenants file")
    check_cmd.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.command == "hash-key":
        print(hash_api_key(args.key))
        return 0
    try:
        registry = load_tenants(args.file)
    except TenantsConfigError as err:
        print(err, file=sys.stderr)
        return 1
    names = ", ".join(t.id for t in registry.tenants)
    print(f"{args.file}: ok, {len(registry)} tenant(s): {names}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
