"""Submitting runs: validate, write the run rows, build the canvas and publish it.

The submission contract (README, "Submitting runs"): when a submit raises
:class:`SubmitFailed`, nothing was created unless the error names the runs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from orchestration.compile.canvas import build_canvas, fusible
from orchestration.compile.packing import pack, packable
from orchestration.core.envelope import Envelope
from orchestration.core.names import MAX_NAME
from orchestration.core.priority import DEFAULT, check_priority, message_priority
from orchestration.core.redaction import changed_by_redaction
from orchestration.core.results import RunHandle
from orchestration.define.children import child_idempotency_key
from orchestration.define.compiling import CompiledWorkflow
from orchestration.define.workflow import Host, Workflow
from orchestration.errors import InvalidInput, SubmitFailed
from orchestration.observe import tracing
from orchestration.store.discard import discard_unstarted
from orchestration.store.repository import PlannedStep
from orchestration.submit.permits import as_permit_host, park_runs, take_permits

log = structlog.get_logger("orchestration.submit.submission")


def submit(host: Host, workflow: Workflow, inputs: dict[str, Any], *,
           idempotency_key: str | None = None, priority: int | None = None) -> RunHandle:
    """Validate the inputs, write the run row and enqueue the run; returns a handle."""
    compiled = workflow.validate()
    encoded = workflow.check_inputs(compiled, inputs)
    check_idempotency_key(workflow.name, idempotency_key)
    priority = check_priority(priority, f"workflow {workflow.name!r}")
    store = host.store
    run_id = str(uuid.uuid4())
    stored = workflow.redactor(encoded)
    redacted = sorted(changed_by_redaction(encoded, stored))
    limited = workflow.limit is not None and not redacted
    if limited:
        as_permit_host(host).permits  # noqa: B018  (no shared permits: raise before writing)
    # Built before the row is written: whatever fails here leaves nothing behind.
    signature = canvas(host, workflow, run_id, encoded, stored=stored, priority=priority)
    stored_id = store.create_run(run_id, workflow.name, compiled.version, stored,
                                 planned(compiled), idempotency_key=idempotency_key,
                                 redacted=redacted, priority=priority)
    if stored_id != run_id:
        return RunHandle(stored_id, store, existing=True)

    def send() -> None:
        # A limited run without a permit waits in the results DB, in no queue. (A run
        # with redacted inputs cannot be rebuilt from its row: its first step waits.)
        if limited and not take_permits(host, workflow, [run_id], {run_id: encoded}):
            park_runs(host, workflow, [run_id], {run_id: encoded}, priority)
            return
        signature.apply_async()

    _send(host, workflow, [run_id], send)
    return RunHandle(run_id, store)


def submit_many(host: Host, workflow: Workflow, batch: Iterable[Mapping[str, Any]], *,
                defer: bool = False, priority: int | None = None) -> list[RunHandle]:
    """Submit many runs: one transaction for all their rows, then their messages."""
    compiled = workflow.validate()
    priority = check_priority(priority, f"workflow {workflow.name!r}")
    if defer and priority != DEFAULT:
        raise InvalidInput(f"workflow {workflow.name!r}: submit_many(defer=True) sends the "
                           "runs' messages from a worker, which does not know their "
                           f"priority; leave defer=False to submit with priority={priority}")
    runs: list[tuple[str, dict[str, Any]]] = []
    for position, inputs in enumerate(batch):
        try:
            runs.append((str(uuid.uuid4()), workflow.check_inputs(compiled, dict(inputs))))
        except InvalidInput as exc:
            raise InvalidInput(f"run {position} of the batch: {exc}") from None
    if not runs:
        return []
    store = host.store
    stored = {run_id: workflow.redactor(inputs) for run_id, inputs in runs}
    changed = {run_id: sorted(changed_by_redaction(inputs, stored[run_id]))
               for run_id, inputs in runs}
    if workflow.limit is not None:
        as_permit_host(host).permits  # noqa: B018  (no shared permits: raise before writing)
    store.create_runs(workflow.name, compiled.version, list(stored.items()),
                      planned(compiled), redacted=changed, priority=priority)

    def send() -> None:
        # Limited runs without a permit wait in the results DB (see submit).
        exact = {run_id: inputs for run_id, inputs in runs
                 if workflow.limit is not None and not changed[run_id]}
        admitted = take_permits(host, workflow, list(exact), exact)
        parked = [run_id for run_id in exact if run_id not in admitted]
        if parked:
            park_runs(host, workflow, parked, exact, priority)
        # A deferred run's canvas is built from its stored inputs: only runs whose stored
        # copy is exact can be deferred; the others are sent from here.
        waiting = set(parked)
        direct = [(run_id, inputs) for run_id, inputs in runs
                  if run_id not in waiting and (not defer or changed[run_id])]
        if defer and len(direct) + len(waiting) < len(runs):
            sent = {run_id for run_id, _ in direct} | waiting
            host.defer_dispatch(workflow, [run_id for run_id, _ in runs
                                           if run_id not in sent])
        if direct:
            host.before_dispatch(compiled)
            send_runs(host, workflow, [canvas(host, workflow, run_id, inputs,
                                              stored=stored[run_id], priority=priority)
                                       for run_id, inputs in direct])

    _send(host, workflow, [run_id for run_id, _ in runs], send)
    return [RunHandle(run_id, store) for run_id, _ in runs]


def send_runs(host: Host, workflow: Workflow, signatures: list[Any]) -> None:
    """Send runs' canvases through one producer; runs that are one message each share
    messages, ``ORCH_PACK_SIZE`` at most (compile/packing.py)."""
    compiled = workflow.validate()
    # Runs that wait for permits or batches keep a message each (their waits park a
    # message); a map's runs too (its message is replaced).
    packing = host.settings.pack_size > 1 and workflow.limit is None and all(
        fusible(step) for step in compiled.steps.values())
    single = [s for s in signatures if not (packing and packable(s))]
    packs = pack([s for s in signatures if packing and packable(s)], host.settings.pack_size,
                 host.celery) if packing else []
    with host.celery.producer_or_acquire() as producer:
        for signature in [*packs, *single]:
            signature.apply_async(producer=producer)


def dispatch(host: Host, workflow: Workflow, run_id: str, inputs: dict[str, Any], *,
             stored: Any = None) -> None:
    """Enqueue the run's canvas (steps already terminal in the DB will not re-run).

    At the run's own priority (as stored when it was submitted).
    """
    canvas(host, workflow, run_id, inputs, stored=stored,
           priority=host.store.priority_of(run_id)).apply_async()


def canvas(host: Host, workflow: Workflow, run_id: str, inputs: dict[str, Any], *,
           stored: Any = None, priority: int | None = None, followed: bool = False) -> Any:
    """The Celery canvas of one run (not sent).

    ``stored``: the run's inputs as stored (redacted; computed here if not given).
    A large input whose stored copy differs travels inline, never by reference.
    ``priority``: the run's (core/priority.py); without one, a canvas built while a
    worker runs a task (a child run, a map) keeps that task's message priority, and
    any other is a normal run's.
    ``followed``: the caller chains a message after the run's last one (a child run's
    parent continues there): its parallel groups are chords, since a fork's branches
    end the run by themselves, not where the canvas ends (compile/canvas.py).
    """
    compiled = workflow.validate()
    host.before_dispatch(compiled)
    envelope = Envelope.for_inputs(
        run_id, inputs, host.settings.inline_output_limit,
        stored=(lambda: stored) if stored is not None else (lambda: workflow.redactor(inputs)))
    return build_canvas(compiled.decomposition.plan, compiled.steps,
                        envelope.to_message(), run_id, host.celery,
                        priority=_broker_priority(host, priority), version=compiled.version,
                        joins=host.joins is not None and workflow.limit is None
                        and not followed,
                        bundle_size=host.settings.pack_size)


def _broker_priority(host: Host, priority: int | None) -> int:
    """The ``priority`` property of a run's messages on the host's broker."""
    if priority is None:
        current = host.celery.current_worker_task
        inherited = current.request.delivery_info.get("priority") if current else None
        if isinstance(inherited, int):
            return inherited
        priority = DEFAULT
    return message_priority(priority, host.settings.broker_url)


def create_child(host: Host, workflow: Workflow, parent_run: str, parent_step: str,
                 inputs: dict[str, Any]) -> str:
    """Write a child run of ``parent_run`` (once per parent step); returns its id.

    The child has its parent's priority (read from the message the parent step runs in).
    """
    compiled = workflow.validate()
    stored = workflow.redactor(inputs)
    sent = _broker_priority(host, None)
    return host.store.create_run(
        str(uuid.uuid4()), workflow.name, compiled.version, stored, planned(compiled),
        parent_run_id=parent_run,
        idempotency_key=child_idempotency_key(parent_run, parent_step),
        redacted=sorted(changed_by_redaction(inputs, stored)),
        # The mapping is its own inverse (9 - p, or p): the run's priority from the message's.
        priority=message_priority(sent, host.settings.broker_url))


def planned(compiled: CompiledWorkflow) -> list[PlannedStep]:
    """The step rows a run of this workflow starts with."""
    return [PlannedStep(name, bound.spec.output, bound.queue, bound.spec.model,
                        bound.spec.critical) for name, bound in compiled.steps.items()]


def check_idempotency_key(workflow: str, key: object) -> None:
    """Reject an idempotency key that is not a non-empty string of bounded length."""
    if key is None:
        return
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_NAME:
        raise InvalidInput(f"workflow {workflow!r}: idempotency_key must be a non-empty string "
                           f"of at most {MAX_NAME} characters, got {key!r:.80}")


def _send(host: Host, workflow: Workflow, run_ids: list[str], send: Callable[[], Any]) -> None:
    """Publish written runs; if that fails, remove them so that none runs later."""
    started = time.time_ns()
    try:
        send()
    except Exception as exc:
        raise _unwind(host, workflow, run_ids, exc) from exc
    tracing.runs_submitted(workflow.name, run_ids, started)  # each run's root span


def _unwind(host: Host, workflow: Workflow, run_ids: list[str], cause: Exception) -> SubmitFailed:
    store = host.store
    count = f"{len(run_ids)} run(s)" if len(run_ids) > 1 else f"run {run_ids[0]}"
    detail = " ".join(str(cause).split())
    detail = f"{type(cause).__name__}: {detail}" if detail else type(cause).__name__
    what = f"workflow {workflow.name!r}: the broker did not take {count} ({detail})"
    try:
        started = discard_unstarted(store.engine, run_ids)
    except Exception as exc:
        log.error("a run that could not be enqueued could not be removed either",
                  workflow=workflow.name, run_ids=run_ids, error=repr(exc))
        return SubmitFailed(
            f"{what}, and removing the run rows failed ({type(exc).__name__}: {exc}): "
            f"run(s) {', '.join(run_ids)} exist, pending, and the reconciler starts them "
            f"after {host.settings.reconcile_after:g} s without progress unless you "
            "cancel them (orchestrate cancel RUN). A retry with the same idempotency_key "
            "returns the existing run instead of creating another.",
            remaining=tuple(run_ids))
    if not started:
        return SubmitFailed(f"{what}; nothing was created (the run rows were removed), so "
                            "submitting again is safe")
    # A message that did get through was already taken by a worker: that run cannot
    # be removed; cancel it so that nothing more of it runs.
    for run_id in started:
        try:
            store.cancel_run(run_id, "cancelled: its submit failed on the broker")
        except Exception as exc:
            log.error("could not cancel a run whose submit failed", run_id=run_id,
                      error=repr(exc))
    return SubmitFailed(
        f"{what}; nothing was created except run(s) {', '.join(started)}, which a worker "
        "had already started from a message that got through: they were cancelled (a "
        "step already running finishes its attempt); the others were removed",
        remaining=tuple(started))
