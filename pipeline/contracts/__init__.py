"""The contract registry: one :class:`ContractSpec` per contract, in one table, and what uses it.

Everything that differs between contracts is a field of its spec (:mod:`pipeline.contracts.spec`);
everything here is the same for all of them:

* :func:`accept`, the one intake entry point of the HTTP ingest and the publisher library:
  edge checks, classification, validation, the contract's intake (raises ``Refused``);
* the stream's dispatch: :func:`decode`, :func:`kafka_key`, :func:`raw_records`,
  :func:`request_records`, :func:`split_record`,
  :func:`signal_records`, :func:`expand_event`.

The registry imports the API, wire, rules and Kafka modules; none of the rules or wire modules
imports it (``tests/unit/test_registry.py`` checks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from pipeline.api import answers
from pipeline.api.intake import Context, Hints, Intake, Refused, check_edge
from pipeline.contracts import builtin
from pipeline.contracts.classify import Classified, ClassifyOutcome, classify, sniff
from pipeline.contracts.spec import (
    CONTRACTS,
    ContractSpec,
    codec,
    on_route,
    register,
    registered,
    spec_named,
    spec_of,
    unregister,
)
from pipeline.kafka.io import OutRecord
from pipeline.rules.expansion import ExpandState, Expansion, expand_with
from pipeline.rules.triplets import Limits
from pipeline.wire.envelope import (
    Envelope,
    ScoredOutputEnvelope,
    array_parts,
    encode,
    encode_array,
    is_array,
    kafka_headers,
    stamped,
)

__all__ = [
    "CONTRACTS",
    "FEEDBACK_ROUTE",
    "SCORED_ROUTE",
    "Accepted",
    "Classified",
    "ClassifyOutcome",
    "ContractSpec",
    "accept",
    "classify",
    "codec",
    "decode",
    "expand_event",
    "kafka_key",
    "on_route",
    "raw_records",
    "register",
    "registered",
    "request_records",
    "signal_records",
    "sniff",
    "spec_named",
    "spec_of",
    "split_record",
    "stored_entry",
    "unregister",
]

FEEDBACK_ROUTE = builtin.FEEDBACK_ROUTE
SCORED_ROUTE = builtin.SCORED_ROUTE

for _spec in builtin.BUILTIN:
    register(_spec)


class Accepted:
    """A body accepted under one contract: what to write and what its answer is made from."""

    __slots__ = ("contract", "intake")

    def __init__(self, contract: ContractSpec, intake: Intake) -> None:
        self.contract, self.intake = contract, intake


def accept(
    ctx: Context,
    body: Any,
    *,
    route: str = FEEDBACK_ROUTE,
    contract: str | None = None,
    hints: Hints | None = None,
) -> Accepted:
    """Classify, validate and take in one parsed body posted to ``route`` (raises :class:`Refused`).

    ``contract`` (the publisher's hint) selects its route and must be what the body is. On a route
    with one contract the body is validated against it directly; on a shared one it is classified
    first, so a refusal names the contract whose error shape the answer takes.
    """
    if contract is not None:
        route = spec_named(contract).route
    specs = on_route(route)
    if not specs:
        raise Refused(404, "NOT_FOUND", f"No feedback contract is posted to {route}.")
    if len(specs) == 1:
        (spec,) = specs
        check_edge_in(spec.name, body)
        try:
            model: Any = spec.request.model_validate(body) if not spec.array else body
        except ValidationError as err:
            raise _invalid(spec, err) from None
    else:
        found = classify(body, specs)
        check_edge_in(found.contract, body)
        if found.outcome is not ClassifyOutcome.MATCHED or found.contract is None:
            code = (
                "NO_MATCHING_CONTRACT"
                if found.outcome is ClassifyOutcome.NO_CONTRACT
                else "AMBIGUOUS_CONTRACT"
            )
            details = {"tried": {str(c): why for c, why in found.reasons.items()}}
            raise Refused(400, code, found.message, details, reason=found.outcome.value)
        spec = spec_named(found.contract)
        if contract is not None and spec.name != contract:
            raise Refused(400, "INVALID_REQUEST", f"Body is a {spec.name} request, not {contract}.")
        if found.error is not None:
            raise _invalid(spec, found.error)
        model = body if spec.array else found.model
    try:
        return Accepted(spec, spec.intake(ctx, model, hints or Hints()))
    except Refused as refused:
        refused.contract = refused.contract or spec.name
        raise


def check_edge_in(contract: str | None, body: Any) -> None:
    try:
        check_edge(body)
    except Refused as refused:
        refused.contract = contract
        raise


def _invalid(spec: ContractSpec, err: ValidationError) -> Refused:
    refused = spec.invalid(err)
    refused.contract, refused.reason = spec.name, "invalid"
    return refused


# --- the stream's side ------------------------------------------------------------------------------


def decode(data: bytes) -> Envelope:
    """Bytes of ``feedback.raw`` as the envelope of a registered contract (raises msgspec.ValidationError,
    a ValueError, when they are not one)."""
    return codec().decode(data)


def kafka_key(event: Envelope) -> bytes:
    """Everything the stream must see in order shares a key (so a partition)."""
    return spec_of(event).key(event).encode()


def raw_records(
    topic: str, events: Sequence[Envelope], trace: Sequence[tuple[str, bytes]] = ()
) -> list[OutRecord]:
    """The Kafka records of one request's events, each stamped with how many the request became
    (so any reader of the stream's results, on any ingest, can tell when the request is complete).

    ``trace``: the request's W3C trace headers (:mod:`pipeline.tracing`), on every record, so the
    stages carry the caller's trace onto everything derived from them."""
    n = len(events)
    return [
        OutRecord(topic, kafka_key(e), encode(stamped(e, n)), [*kafka_headers(e), *trace]) for e in events
    ]


def request_records(
    topic: str, events: Sequence[Envelope], trace: Sequence[tuple[str, bytes]] = ()
) -> list[OutRecord]:
    """The Kafka records of one request, as the ingest and the publisher write them: a record per
    event (:func:`raw_records`), except that the events of a ``one_record`` contract (seed 002's
    items) become one record, the array of their envelopes, keyed like the first: one acknowledged
    write instead of a transaction, and the stream splits it (:func:`split_record`)."""
    n, first = len(events), events[0] if events else None
    if (
        first is None
        or n < 2
        or not spec_of(first).one_record
        or any(type(e) is not type(first) for e in events)
    ):
        return raw_records(topic, events, trace)
    value = encode_array([encode(stamped(e, n)) for e in events])
    # the request's headers as each envelope's (kafka_headers) but its own event id, and their number
    headers = [*(h for h in kafka_headers(first) if h[0] != "event_id"), ("events", str(n).encode()), *trace]
    return [OutRecord(topic, kafka_key(first), value, headers)]


def split_record(value: bytes) -> list[bytes]:
    """The envelopes of a ``feedback.raw`` value, each as its own bytes: the value itself, or the
    parts of an array record (raises msgspec.ValidationError for an array that is not one)."""
    return array_parts(value) if is_array(value) else [value]


def signal_records(event: Envelope) -> list[dict[str, Any]]:
    """The signals of one event as JSON-ready dicts in ``Signal``'s field order."""
    return spec_of(event).signals(event)


def expand_event(
    event: Envelope,
    history_of: Mapping[bytes, ExpandState],
    *,
    limits: Limits,
    shared_pool: str,
    stream_time: datetime | None = None,
) -> Expansion:
    """Pure: the signals, unit batches and new anchor history of one event (its contract's rules).

    Histories are cut at ``max(received_at, stream_time) - max_age`` (the stage passes its stream time;
    a history cut to nothing is deleted: ``history`` None with a ``state_key``).
    """
    spec = spec_of(event)
    plan = spec.expansion(event, shared_pool)
    return expand_with(event, plan, spec.signals(event), history_of, limits=limits, stream_time=stream_time)


def stored_entry(event: ScoredOutputEnvelope) -> bytes:
    """The seed 003 list item of a scored entry: exactly what its POST answered (the store stage
    keeps it as the row's document, so ``GET /api/v1/feedback`` answers it as it was)."""
    return orjson.dumps(answers.scored_entry(event).model_dump(mode="json"))
