"""``max_parallel`` at a step's delivery: take the run's and the step's permits, or wait.

A run of a limited workflow holds its permit from its first step until it ends (its
steps re-take it as they start, which renews it); a limited step holds a permit while
it executes. A delivery that cannot take a permit is parked (see submit/permits.py) and
ends without holding a worker slot; one whose message carries values redaction would
change (which must never be stored) goes back to the broker with a countdown instead.
While admitted steps run, this process renews their leases; afterwards the step's
permit is released, and a run's when it has ended, each waking the next waiters.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from celery.exceptions import Ignore

from orchestration.core.envelope import Envelope
from orchestration.core.redaction import changed_by_redaction
from orchestration.core.status import TERMINAL_RUN_STATUSES
from orchestration.define.step import BoundStep
from orchestration.define.workflow import Workflow
from orchestration.execute.permits import scope
from orchestration.execute.runtime import resolve
from orchestration.store.permit_waits import PermitWait
from orchestration.submit.permits import as_permit_host, park_step, release, run_scope
from orchestration.worker.engine_tasks import resume_signature
from orchestration.worker.host import WorkerHost

log = structlog.get_logger("orchestration.worker.limits")
DEFER_MIN, DEFER_MAX = 1.0, 10.0  # seconds: countdown of a delivery sent back unparked


@dataclass(frozen=True)
class Held:
    """A permit a delivery took: its scope, holder and limit."""

    scope: str
    holder: str
    limit: int


def is_limited(workflow: Workflow, bound: BoundStep) -> bool:
    """True when a delivery of this step must take a permit first."""
    return workflow.limit is not None or bound.spec.limit is not None


@contextmanager
def permits_for(task: Any, workflow: Workflow, bound: BoundStep, message: Any,
                finalize: bool) -> Iterator[None]:
    """Run the block holding this delivery's permits; park the delivery without them.

    Raises Ignore (parked) or Celery's Retry (sent back) when a permit is not free.
    """
    host: WorkerHost = task.orchestrator
    envelope = Envelope.from_message(message)
    run_id = envelope.run_id
    held = _take(task, host, workflow, bound, envelope, message)
    run_permit = next((permit for permit in held if permit.holder == run_id), None)
    step_permits = [permit for permit in held if permit is not run_permit]
    ended = False
    try:
        with as_permit_host(host).renewer.holding(*[(p.scope, p.holder) for p in held]):
            yield
        ended = finalize
    except Exception:
        ended = run_permit is not None and _has_ended(host, run_id)
        raise
    finally:
        for permit in step_permits:
            _release(host, permit)
        if run_permit is not None and ended:
            _release(host, run_permit)


def _take(task: Any, host: WorkerHost, workflow: Workflow, bound: BoundStep,
          envelope: Envelope, message: Any) -> list[Held]:
    permits = as_permit_host(host).permits
    run_id = envelope.run_id
    wanted: list[tuple[Held, str | None]] = []
    if workflow.limit is not None:
        inputs = _values(host, envelope, [workflow.limit.key] if workflow.limit.key else [],
                         {}, bound)
        wanted.append((Held(run_scope(workflow, inputs), run_id, workflow.limit.max_parallel),
                       None))
    limit = bound.spec.limit
    if limit is not None:
        name = bound.spec.task_name
        if limit.key is None:
            step_scope = scope("step", name)
        else:
            value = _values(host, envelope, [limit.key], bound.sources, bound)[limit.key]
            step_scope = scope("step", name, value, keyed=True)
        wanted.append((Held(step_scope, f"{run_id}/{bound.spec.name}", limit.max_parallel),
                       bound.spec.name))
    held: list[Held] = []
    for permit, step in wanted:
        if permits.take(permit.scope, permit.holder, permit.limit):
            held.append(permit)
            continue
        for taken in held:  # a step's permit is not kept while it waits for another
            if taken.holder != run_id:
                _release(host, taken)
        _wait(task, host, bound, message, permit, step)
    return held


def _values(host: WorkerHost, envelope: Envelope, names: list[str],
            sources: dict[str, str], bound: BoundStep) -> dict[str, Any]:
    """The values of inputs or parameters by name, as the step would receive them."""
    wanted = {name: sources.get(name, name) for name in names}
    return resolve(wanted, frozenset(), envelope, host.store, bound.spec.where)


def _wait(task: Any, host: WorkerHost, bound: BoundStep, message: Any, permit: Held,
          step: str | None) -> None:
    """Park this delivery until ``permit`` frees (raises Ignore), or send it back."""
    run_id = Envelope.from_message(message).run_id
    resume = resume_signature(task)
    redactor = host.workflows[bound.spec.workflow].redactor
    stored = redactor(resume)
    if changed_by_redaction(resume, stored):
        # Its values must never be stored: the broker keeps it, and it tries again.
        countdown = random.uniform(DEFER_MIN, DEFER_MAX)
        log.info("step waits for a max_parallel permit in the broker (redacted values)",
                 run_id=run_id, scope=permit.scope, retry_in_s=round(countdown, 2))
        raise task.retry(countdown=countdown, max_retries=None)
    park_step(host, PermitWait(0, permit.scope, permit.limit, run_id, step or bound.spec.name,
                               permit.holder, stored, host.store.priority_of(run_id)))
    log.info("step waits for a max_parallel permit", run_id=run_id, scope=permit.scope,
             step=bound.spec.name)
    raise Ignore()


def _has_ended(host: WorkerHost, run_id: str) -> bool:
    try:
        return host.store.run_status(run_id) in TERMINAL_RUN_STATUSES
    except Exception:  # unknown: the lease frees the permit
        return False


def _release(host: WorkerHost, permit: Held) -> None:
    try:
        release(host, permit.scope, permit.holder, permit.limit)
    except Exception as exc:  # the lease frees it; the heartbeat wakes the waiters
        log.warning("could not release a max_parallel permit", scope=permit.scope,
                    holder=permit.holder, error=repr(exc))
