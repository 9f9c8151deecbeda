"""The contract spec and the registry table (like :data:`pipeline.kafka.topics.TOPICS`).

A :class:`ContractSpec` says everything feedstream does with one contract: where it is posted and
how a body is recognised, its request model (API) and envelope type (wire), its Kafka key, its
intake, signals, expansion and answer. The built-in five are registered by
:mod:`pipeline.contracts.builtin`; :func:`registered` adds one for a while (tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from pipeline.api.answers import Answer, Answering
from pipeline.api.intake import Context, Hints, Intake, Refused
from pipeline.api.wording import describe_validation_error, validation_details
from pipeline.rules.expansion import Plan
from pipeline.wire.envelope import Envelope, RawCodec

__all__ = [
    "CONTRACTS",
    "ContractSpec",
    "codec",
    "invalid_request",
    "on_route",
    "register",
    "registered",
    "spec_named",
    "spec_of",
    "unregister",
]


def invalid_request(err: ValidationError) -> Refused:
    """The usual answer to a body its contract's model refuses: 400 with pydantic's errors as details."""
    return Refused(400, "INVALID_REQUEST", describe_validation_error(err), validation_details(err))


@dataclass(frozen=True, eq=False)
class ContractSpec:
    """One contract, end to end. Functions take and return plain values (no I/O)."""

    name: str  # the ``contract`` tag on the wire, metric label, error wording
    route: str  # the HTTP path it is posted to (POST)
    request: type[BaseModel]  # validates the body (each item's when ``array``); OpenAPI
    response: type[BaseModel] | None  # the success answer's model (OpenAPI)
    wire: type[Envelope]  # the envelope type on feedback.raw
    key: Callable[[Any], str]  # envelope -> Kafka key (everything to see in order shares one)
    intake: Callable[[Context, Any, Hints], Intake]  # validated request -> wire events, item rejections
    signals: Callable[[Any], list[dict[str, Any]]]  # envelope -> signal records (pure)
    expansion: Callable[[Any, str], Plan]  # envelope, shared pool -> units/observations (pure)
    answer: Callable[[Answering], Answer]  # written events -> status and body
    #: top-level keys that mark an object body as this contract on a route shared by several
    signature: frozenset[str] = frozenset()
    #: the body is a JSON array whose items the intake validates one by one (seed 002)
    array: bool = False
    #: a request's events go to ``feedback.raw`` as one record, an array of their envelopes (only
    #: for a contract whose expansion keeps no keyed state: the array is keyed by its first event)
    one_record: bool = False
    #: how a body its model refuses is answered
    invalid: Callable[[ValidationError], Refused] = invalid_request
    #: the answer waits (bounded) for the stream's results of its events (seed 000's counts)
    waits_for_results: bool = False
    #: error answers in the generic shape, or seed 001's flat one with its own codes
    error_shape: Literal["generic", "seed001"] = "generic"
    #: (status, code) -> the code this contract's error answers use
    error_code: Callable[[int, str], str] = field(default=lambda status, code: code)


#: Every contract, by name, in registration order (the built-in five first).
CONTRACTS: dict[str, ContractSpec] = {}


def register(spec: ContractSpec) -> ContractSpec:
    if spec.name in CONTRACTS:
        raise ValueError(f"contract {spec.name!r} is already registered")
    if spec.wire.__struct_config__.tag != spec.name:
        raise ValueError(f"contract {spec.name!r}: its envelope type must be tagged {spec.name!r}")
    CONTRACTS[spec.name] = spec
    _changed()
    return spec


def unregister(name: str) -> None:
    del CONTRACTS[name]
    _changed()


def _changed() -> None:
    """What is derived from the registry is derived again."""
    _by_type.cache_clear()
    on_route.cache_clear()


@contextlib.contextmanager
def registered(spec: ContractSpec) -> Iterator[ContractSpec]:
    """The contract is known inside the block only (how a test adds one)."""
    register(spec)
    try:
        yield spec
    finally:
        unregister(spec.name)


@lru_cache(maxsize=1)
def _by_type() -> tuple[dict[type[Envelope], ContractSpec], RawCodec]:
    specs = {spec.wire: spec for spec in CONTRACTS.values()}
    return specs, RawCodec(tuple(specs))


def codec() -> RawCodec:
    """Decodes the envelope of any registered contract."""
    return _by_type()[1]


def spec_named(name: str) -> ContractSpec:
    return CONTRACTS[name]


def spec_of(event: Envelope) -> ContractSpec:
    return _by_type()[0][type(event)]


@lru_cache(maxsize=64)
def on_route(route: str) -> tuple[ContractSpec, ...]:
    """The contracts posted to one path, in registration order (twice per request: cached)."""
    return tuple(spec for spec in CONTRACTS.values() if spec.route == route)
