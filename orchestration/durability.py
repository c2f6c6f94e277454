"""Resume failed runs, and reconcile runs that stopped making progress.

``resume(run_id)`` re-runs only the failed, skipped and cancelled steps of a failed or
cancelled run, under the same run id: completed steps pass their recorded outputs on
(a claim of a finished step never runs it again) and every earlier attempt stays in the
trace.

``reconcile()`` (also ``orchestrate reconcile`` and the ``orchestration.reconcile``
beat task) finds pending/running runs whose steps made no progress for longer than
``ORCH_RECONCILE_AFTER`` seconds — their messages were lost, e.g. Redis restarted
empty — and re-dispatches them from the results DB. A step that was mid-flight is
delivered again (at least once); a completed one is not re-run; a run is finalised once.
It also expires human waits past their deadline.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog

from orchestration.envelope import dumps
from orchestration.errors import InvalidInput, RunNotFound
from orchestration.redaction import REDACTED
from orchestration.status import RunStatus
from orchestration.store.repository import utcnow

if TYPE_CHECKING:
    from orchestration.app import Orchestrator
    from orchestration.step import StepSpec
    from orchestration.workflow import Workflow

log = structlog.get_logger("orchestration.durability")


@dataclass(frozen=True)
class Reconciled:
    """What one reconciliation pass did."""

    redispatched: list[str]
    failed: list[str]
    waits_expired: int


def redacted_inputs(inputs: dict[str, Any]) -> list[str]:
    """Inputs stored redacted: secrets are never stored, so they must be given again."""
    return sorted(name for name, value in inputs.items() if value == REDACTED)


def resume(orchestrator: Orchestrator, run_id: str, inputs: dict[str, Any] | None = None) -> str:
    """Continue a failed or cancelled run from its last good steps; returns the run id.

    ``inputs`` replace stored ones: secret inputs (deny-listed names) were stored redacted,
    so a run that had any needs them given again, or resume refuses (nothing changes).
    """
    stored = orchestrator.store.load_inputs(run_id)
    missing = [name for name in redacted_inputs(stored) if name not in (inputs or {})]
    if missing:
        raise InvalidInput(
            f"run {run_id}: input(s) {', '.join(missing)} were redacted when stored (secrets "
            f"are never stored); give them again: resume(run_id, inputs={{{missing[0]!r}: ...}})"
            f" or orchestrate resume {run_id} --inputs '{{\"{missing[0]}\": ...}}'")
    workflow_name, _ = orchestrator.store.recovery.reset_for_resume(run_id)
    inputs = {**stored, **(inputs or {})}
    workflow = orchestrator.workflows.get(workflow_name)
    if workflow is None:
        raise RunNotFound(f"run {run_id} is of workflow {workflow_name!r}, which this process "
                          f"does not define (import its module or set ORCH_IMPORTS)")
    workflow.dispatch(run_id, inputs)
    log.info("run resumed", run_id=run_id, workflow=workflow_name)
    return run_id


def reconcile(orchestrator: Orchestrator, *, idle_seconds: float | None = None) -> Reconciled:
    """Re-dispatch runs with no progress for ``idle_seconds``; expire overdue waits."""
    from orchestration.engine_tasks import expire_due_waits

    idle = orchestrator.settings.reconcile_after if idle_seconds is None else idle_seconds
    store = orchestrator.store
    redispatched: list[str] = []
    failed: list[str] = []
    backlogged: dict[str, bool] = {}
    for run_id, name, version, inputs in store.recovery.stale_runs(
            utcnow() - timedelta(seconds=idle)):
        workflow = orchestrator.workflows.get(name)
        secrets = redacted_inputs(inputs)
        if secrets:
            store.finish_run(run_id, RunStatus.FAILED, error_type="Unrecoverable", error=(
                f"made no progress for {idle:g} s and cannot be re-dispatched: its input(s) "
                f"{', '.join(secrets)} were redacted when stored; resume it with them: "
                f"orchestrate resume {run_id} --inputs '{{...}}'"))
            failed.append(run_id)
            continue
        if workflow is not None and backlogged.setdefault(name, _has_backlog(orchestrator,
                                                                              workflow)):
            # Messages are still queued for this workflow: an idle run may just be
            # waiting its turn. Lost messages are told apart once the backlog drains.
            continue
        if workflow is None or workflow.validate().version != version:
            reason = ("is not defined in this process" if workflow is None
                      else "changed since the run started")
            store.finish_run(run_id, RunStatus.FAILED, error_type="Unrecoverable",
                             error=f"made no progress for {idle:g} s and its workflow {name!r} "
                                   f"{reason}; not re-dispatched")
            failed.append(run_id)
            continue
        log.warning("re-dispatching a run that made no progress", run_id=run_id,
                    workflow=name, idle_s=idle)
        workflow.dispatch(run_id, inputs)
        redispatched.append(run_id)
    return Reconciled(redispatched, failed, expire_due_waits(orchestrator))


def _has_backlog(orchestrator: Orchestrator, workflow: Workflow) -> bool:
    from orchestration.observe import queue_depths

    if orchestrator.settings.embedded:
        return False
    queues = sorted({bound.queue for bound in workflow.validate().steps.values()})
    try:
        depths = queue_depths(orchestrator, queues)
    except Exception:  # the broker cannot say: act as before (re-dispatch is idempotent)
        return False
    return any(depth for depth in depths.values())


def cache_key(spec: StepSpec, kwargs: dict[str, Any]) -> str:
    """The result-cache key of a step call: workflow, step, its code, and its arguments."""
    from orchestration.workflow import _code_hash

    material = dumps([spec.workflow, spec.name, _code_hash(spec.fn), kwargs])
    return hashlib.sha256(material.encode()).hexdigest()
