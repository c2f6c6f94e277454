"""Ingest one event: find the triggers listening, start their runs at most once, record it.

Every source (``emit``, the webhook server, the stream consumer, schedules) hands its
events to :func:`ingest`. For each trigger on the event's name whose filter passes, the
payload is mapped to the run's inputs and the run is submitted with the idempotency key
``event:<trigger>:<dedupe key>``. The runs table's unique idempotency key is what makes
an event start **at most one run per trigger**, however many times and however
concurrently it is delivered: the losers of the race get the winner's run id back and
are recorded ``duplicate``. One events row is written per matching trigger (or one
``unmatched`` row), with the payload redacted by the deployment's rules.

Failures of the infrastructure (the broker refusing a run, the database down) are raised,
not recorded as outcomes: the source delivers the event again (the stream leaves the
entry pending; ``emit`` raises to its caller), and the idempotency key makes that safe.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from orchestration.core.clock import utcnow
from orchestration.core.envelope import dumps
from orchestration.core.names import MAX_NAME
from orchestration.core.priority import check_priority
from orchestration.core.redaction import Redactor
from orchestration.define.triggers import PathNotFound, Trigger, event_name
from orchestration.define.workflow import Host
from orchestration.errors import InvalidInput, WorkflowDefinitionError
from orchestration.events.outcomes import EventOutcome, Outcome
from orchestration.store.events import EventRecord

log = structlog.get_logger("orchestration.events")
KEY_PREFIX = "event:"
MAX_SOURCE = 32  # the events table's source column


@dataclass(frozen=True)
class Event:
    """An event as received: checked name, JSON payload, id (given or generated)."""

    name: str
    payload: Any
    event_id: str
    source: str


def ingest(host: Host, name: str, payload: Any, *, event_id: str | None = None,
           source: str = "emit", priority: int | None = None) -> list[EventOutcome]:
    """Start the runs of every trigger listening to ``name``; one outcome per trigger.

    ``event_id`` identifies the event across deliveries (without one, an id is generated
    and the event can only be deduplicated by a trigger's ``dedupe`` path). ``priority``
    overrides the triggers' own for the runs this event starts. Raises
    :class:`InvalidInput` for a bad name, id or payload (nothing recorded); infrastructure
    errors propagate after recording what was already done.
    """
    event = check_event(name, payload, event_id, source)
    if priority is not None:
        check_priority(priority, f"event {event.name!r}")
    size, limit = len(dumps(payload).encode()), host.settings.max_input_bytes
    if size > limit:
        raise InvalidInput(f"event {event.name!r}: the payload is {size} bytes of JSON, over "
                           f"the limit of {limit} (ORCH_MAX_INPUT_BYTES)")
    host.store.ensure_schema()
    listening = triggers_of(host, event.name)
    matching = [trigger for trigger in listening if trigger.matches(event.payload)]
    if not matching:
        reason = (f"no trigger listens to event {event.name!r}" if not listening else
                  "filtered out by trigger(s) " + ", ".join(t.name for t in listening))
        outcomes = [EventOutcome(None, Outcome.UNMATCHED, reason=reason,
                                 event_id=event.event_id)]
        record(host, event, outcomes)
        return outcomes
    outcomes = []
    try:
        for trigger in matching:
            outcomes.append(start(host, trigger, event, priority))
    finally:
        record(host, event, outcomes)
    return outcomes


def start(host: Host, trigger: Trigger, event: Event,
          priority: int | None = None) -> EventOutcome:
    """Start ``trigger``'s run for ``event`` once per dedupe key; its outcome (not recorded)."""
    workflow = host.workflows.get(trigger.workflow)
    if workflow is None:
        return _rejected(trigger, event, f"workflow {trigger.workflow!r} is not loaded here")
    try:
        inputs = trigger.run_inputs(event.payload)
    except PathNotFound as exc:
        return _rejected(trigger, event, str(exc))
    try:
        key = run_key(trigger.name, trigger.dedupe_key(event.event_id, event.payload))
    except PathNotFound as exc:
        return _rejected(trigger, event, f"{exc} (the dedupe key)")
    try:
        handle = host.submit(workflow, inputs, idempotency_key=key,
                             priority=trigger.priority if priority is None else priority)
    except (InvalidInput, WorkflowDefinitionError) as exc:
        return _rejected(trigger, event, str(exc))
    outcome = Outcome.DUPLICATE if handle.existing else Outcome.STARTED
    return EventOutcome(trigger.name, outcome, handle.run_id, event_id=event.event_id)


def reject(host: Host, name: object, payload: Any, *, reason: str,
           event_id: object = None, source: str = "emit") -> EventOutcome:
    """Record an event that could not even be read (a malformed stream entry, say)."""
    host.store.ensure_schema()
    if not _is_json(payload):
        payload = repr(payload)[:2000]
    elif len(dumps(payload).encode()) > host.settings.max_input_bytes:
        payload = f"(not stored: {len(dumps(payload).encode())} bytes of JSON)"
    event = Event(name=str(name)[:MAX_NAME] if name is not None else "?",
                  payload=payload,
                  event_id=str(event_id)[:MAX_NAME] if event_id else new_event_id(),
                  source=source[:MAX_SOURCE])
    outcome = EventOutcome(None, Outcome.REJECTED, reason=reason, event_id=event.event_id)
    record(host, event, [outcome])
    return outcome


def check_event(name: object, payload: Any, event_id: object, source: object) -> Event:
    """The event, checked; :class:`InvalidInput` names what is wrong."""
    try:
        checked = event_name(name, "event")
    except WorkflowDefinitionError as exc:
        raise InvalidInput(str(exc)) from None
    if event_id is not None and (not isinstance(event_id, str) or not event_id.strip()
                                 or len(event_id) > MAX_NAME):
        raise InvalidInput(f"event {checked!r}: event_id must be a non-empty string of at "
                           f"most {MAX_NAME} characters, got {event_id!r:.80}")
    if not isinstance(source, str) or not 0 < len(source) <= MAX_SOURCE:
        raise InvalidInput(f"event {checked!r}: source must be a name of at most "
                           f"{MAX_SOURCE} characters, got {source!r:.80}")
    if not _is_json(payload):
        raise InvalidInput(f"event {checked!r}: the payload must be JSON, got "
                           f"{type(payload).__name__}")
    return Event(checked, payload, event_id or new_event_id(), source)


def triggers_of(host: Host, name: str) -> list[Trigger]:
    """The triggers of the host's workflows listening to event ``name``."""
    return [trigger for workflow in list(host.workflows.values())
            for trigger in workflow.triggers if trigger.event == name]


def run_key(trigger: str, dedupe_key: str) -> str:
    """The idempotency key of a trigger's run for one dedupe key (hashed when too long)."""
    key = f"{KEY_PREFIX}{trigger}:{dedupe_key}"
    if len(key) <= MAX_NAME:
        return key
    return f"{KEY_PREFIX}sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def new_event_id() -> str:
    """A fresh event id, for events delivered without one."""
    return f"evt-{uuid.uuid4()}"


def _rejected(trigger: Trigger, event: Event, reason: str) -> EventOutcome:
    return EventOutcome(trigger.name, Outcome.REJECTED, reason=reason, event_id=event.event_id)


def record(host: Host, event: Event, outcomes: Iterable[EventOutcome]) -> None:
    """Write one events row per outcome (the payload redacted by the deployment's rules).

    For sources that decide an outcome themselves (a schedule's ``skipped`` tick).
    """
    redactor = Redactor(host.settings.redact_fields)
    payload = redactor(event.payload)
    now = utcnow()
    records = [EventRecord(
        event_id=event.event_id, name=event.name, source=event.source, payload=payload,
        received_at=now, outcome=outcome.outcome.value, trigger=outcome.trigger,
        run_id=outcome.run_id, reason=redactor.text(outcome.reason)) for outcome in outcomes]
    host.store.events.record(records)
    for row in records:
        log.info("event received", event_name=row.name, event_id=row.event_id,
                 source=row.source, outcome=row.outcome, trigger=row.trigger,
                 run_id=row.run_id, reason=row.reason)


def _is_json(value: Any) -> bool:
    try:
        dumps(value)
    except (TypeError, ValueError):
        return False
    return True
