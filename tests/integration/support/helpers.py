"""Small helpers shared by the integration tests."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from orchestration import RunResult, default_orchestrator, get_run
from orchestration.store.models import RunRow, StepRow
from tests.support.polling import wait_until as wait_until  # re-exported: tests import it here


def wait_for_step(run_id: str, step: str, *, timeout: float = 20.0) -> RunResult:
    """Poll the results DB until ``step`` of the run is terminal; returns the run then."""
    def probe() -> RunResult | None:
        run = get_run(run_id)
        return run if run.steps[step].status.is_terminal else None

    return wait_until(probe, timeout=timeout, what=f"step {step!r} of run {run_id}")


def statuses(run: RunResult) -> dict[str, str]:
    """Step name -> status value, for compact assertions and messages."""
    return {name: record.status.value for name, record in run.steps.items()}


def snapshot(run: RunResult) -> dict[str, Any]:
    """A JSON-ready view of a run (computed the same way in both processes)."""
    return {
        "run_id": run.run_id,
        "workflow": run.workflow,
        "status": run.status.value,
        "inputs": run.inputs,
        "outputs": run.outputs,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "steps": {
            name: {
                "status": step.status.value, "attempts": step.attempts, "queue": step.queue,
                "worker": step.worker, "deliveries": step.deliveries,
                "latency_ms": step.latency_ms,
                "attempt_log": [entry["status"] for entry in step.attempt_log],
            }
            for name, step in run.steps.items()
        },
    }


def backdate_run(run_id: str, days: float = 1.0) -> None:
    """Move a run's creation and its steps' progress back (it looks stalled that long)."""
    back = timedelta(days=days)
    with default_orchestrator().store.engine.begin() as conn:
        conn.execute(update(RunRow).where(RunRow.id == run_id)
                     .values(created_at=RunRow.created_at - back))
        conn.execute(update(StepRow).where(StepRow.run_id == run_id)
                     .values(started_at=StepRow.started_at - back,
                             finished_at=StepRow.finished_at - back))
