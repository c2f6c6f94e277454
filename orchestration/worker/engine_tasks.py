"""The engine's own Celery tasks, beside the steps: finalise, collect a map, finish a
child run's parent step, expire human waits."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery import chain
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from orchestration.compile.canvas import FINALIZE_TASK
from orchestration.core.envelope import Envelope
from orchestration.core.status import RunStatus, StepStatus
from orchestration.define.children import CHILD_DONE_TASK
from orchestration.execute.attempts import fallback_value
from orchestration.execute.maps import MAP_COLLECT_TASK, collect, drop_parked
from orchestration.execute.runtime import (
    StartChild,
    arguments,
    finalize_run,
    record_and_pass,
)
from orchestration.store.repository import StepOutcome
from orchestration.submit.submission import send_runs
from orchestration.submit.waits import expire_due_waits
from orchestration.worker.host import WorkerHost

if TYPE_CHECKING:
    from orchestration.define.step import BoundStep

EXPIRE_WAITS_TASK = "orchestration.expire_waits"
RECONCILE_TASK = "orchestration.reconcile"
DISPATCH_RUNS_TASK = "orchestration.dispatch_runs"


def register_engine_tasks(host: WorkerHost) -> None:
    """Register finalize, map_collect, child_done, expire_waits, reconcile and dispatch_runs.

    The bodies are module-level functions; the host they serve is set on each task class.
    """
    for name, fn in ((FINALIZE_TASK, finalize), (MAP_COLLECT_TASK, map_collect),
                     (CHILD_DONE_TASK, child_done), (EXPIRE_WAITS_TASK, expire_waits),
                     (RECONCILE_TASK, reconcile), (DISPATCH_RUNS_TASK, dispatch_runs)):
        host.celery.task(name=name, bind=True, shared=False, acks_late=True,
                         orchestrator=host)(fn)


def finalize(task: Any, message: Any, run_id: str | None = None) -> str:
    """End the run: its status from its steps' outcomes."""
    orchestrator: WorkerHost = task.orchestrator
    return finalize_run(Envelope.from_message(message), orchestrator.store,
                        orchestrator.delivery(task).stream).value


def map_collect(task: Any, parts: list[dict[str, Any]], *, message: dict[str, Any],
                run_id: str, step: str, total: int, finalize: bool,
                claimed_at: str | None) -> dict[str, Any]:
    """Join a map's chunks: record the map step and pass its envelope on.

    Results the chunks parked in the results DB are read back, and dropped once the
    step is recorded (also by a duplicate delivery of this message, which passes the
    recorded outcome on).
    """
    orchestrator: WorkerHost = task.orchestrator
    bound = orchestrator.bound_step(step)
    outcome = collect(bound, parts, total, run_id, orchestrator.store)
    passed = record_and_pass(bound, Envelope.from_message(message), outcome,
                             orchestrator.store, orchestrator.delivery(task),
                             claimed_at=datetime.fromisoformat(claimed_at) if claimed_at
                             else None, finalize=finalize)
    drop_parked(bound, parts, run_id, orchestrator.store)
    return passed


def child_done(task: Any, child_message: Any, *, parent: dict[str, Any], run_id: str,
               step: str, child_run: str, finalize: bool) -> dict[str, Any]:
    """Record the parent step from its child run's outcome; pass the parent's envelope on."""
    orchestrator: WorkerHost = task.orchestrator
    bound = orchestrator.bound_step(step)
    envelope = Envelope.from_message(parent)
    child = orchestrator.store.get_run(child_run)
    if child.status is RunStatus.SUCCEEDED:
        outcome = StepOutcome(StepStatus.SUCCEEDED, output=child.outputs)
    elif child.status is RunStatus.CANCELLED:
        outcome = StepOutcome(StepStatus.CANCELLED, error=f"child run {child_run} cancelled",
                              error_type="Cancelled")
    else:
        outcome = _child_failed(bound, envelope, orchestrator, child_run,
                                child.status.value, child.error)
    return record_and_pass(bound, envelope, outcome, orchestrator.store,
                           orchestrator.delivery(task), finalize=finalize)


def expire_waits(task: Any) -> int:
    """Expire human waits past their deadline."""
    return expire_due_waits(task.orchestrator)


def dispatch_runs(task: Any, workflow: str, run_ids: list[str]) -> int:
    """Build and send the canvases of runs written by a deferred submit_many."""
    orchestrator: WorkerHost = task.orchestrator
    flow = orchestrator.workflows[workflow]
    inputs = orchestrator.store.inputs_of(run_ids)
    send_runs(orchestrator, flow, [flow.canvas(run_id, inputs[run_id]) for run_id in run_ids])
    return len(run_ids)


def reconcile(task: Any) -> dict[str, Any]:
    """Re-dispatch runs that made no progress, expire waits, prune memory past its
    retention (the beat schedule sends this)."""
    orchestrator: WorkerHost = task.orchestrator
    done = orchestrator.reconcile()
    return {"redispatched": done.redispatched, "failed": done.failed,
            "waits_expired": done.waits_expired, "memory_pruned": done.memory_pruned}


def _child_failed(bound: BoundStep, envelope: Envelope, orchestrator: WorkerHost,
                  child_run: str, status: str, error: str | None) -> StepOutcome:
    message = f"child run {child_run} ended {status}: {error or ''}".strip()
    fallback = bound.spec.fallback
    if fallback is not None:
        kwargs = arguments(bound, envelope, orchestrator.store)
        value, failed = fallback_value(bound, kwargs)
        if failed is not None:
            return StepOutcome(StepStatus.FAILED, error=f"{message}\nfallback failed: {failed}",
                               error_type="ChildRunFailed")
        return StepOutcome(StepStatus.FALLBACK, output=value, error=message,
                           error_type="ChildRunFailed")
    return StepOutcome(StepStatus.FAILED, error=message, error_type="ChildRunFailed")


def child_canvas(orchestrator: WorkerHost, bound: BoundStep, signal: StartChild) -> Any:
    """The child run's canvas, then child_done for the parent step."""
    parent_run = signal.envelope.run_id
    child = signal.child
    child_id = child.workflow.create_child(parent_run, bound.spec.name, child.inputs)
    # The child's canvas carries the inputs it was given: stored ones are redacted.
    done = orchestrator.celery.signature(CHILD_DONE_TASK, args=(), kwargs={
        "parent": signal.envelope.to_message(), "run_id": parent_run,
        "step": bound.spec.task_name, "child_run": child_id, "finalize": signal.finalize,
    }, queue=bound.queue)
    return chain(child.workflow.canvas(child_id, child.inputs, followed=True), done)


def resume_signature(task: Any) -> dict[str, Any]:
    """The current step message as JSON, to re-send it exactly (its chain/chord included)."""
    signature = task.signature_from_request(task.request)
    # kombu's JSON round trip turns what it would send (ids, dates) into plain JSON.
    result: dict[str, Any] = kombu_loads(kombu_dumps(dict(signature)))  # type: ignore[no-untyped-call]
    return result
