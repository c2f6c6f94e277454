"""Module-level reads of the default orchestrator's results database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from orchestration.app import Orchestrator, default_orchestrator
from orchestration.core.results import RunResult, RunSummary, cancel_run
from orchestration.core.status import RunStatus
from orchestration.submit.durability import Reconciled


def get_run(run_id: str, *, app: Orchestrator | None = None) -> RunResult:
    """Read a run (any process, any time) from the results database."""
    return (app or default_orchestrator()).store.get_run(run_id)


def cancel(run_id: str, *, app: Orchestrator | None = None) -> list[str]:
    """Cancel a run and its unfinished child runs (steps not yet started never start)."""
    return cancel_run((app or default_orchestrator()).store, run_id)


def approve(run_id: str, data: Any = None, *, name: str | None = None,
            app: Orchestrator | None = None) -> int:
    """Deliver a person's input to a run waiting in ``ctx.wait_for_input``."""
    return (app or default_orchestrator()).approve(run_id, data, name)


def resume(run_id: str, *, inputs: dict[str, Any] | None = None,
           app: Orchestrator | None = None) -> str:
    """Continue a failed or cancelled run: only its failed, skipped and cancelled steps run.

    ``inputs`` replace stored ones; secret inputs were stored redacted and must be given.
    """
    return (app or default_orchestrator()).resume(run_id, inputs)


def reconcile(*, idle_seconds: float | None = None,
              app: Orchestrator | None = None) -> Reconciled:
    """Re-dispatch runs with no progress for ``idle_seconds``; expire overdue waits."""
    return (app or default_orchestrator()).reconcile(idle_seconds)


def list_runs(*, workflow: str | None = None, status: RunStatus | None = None,
              since: datetime | None = None, limit: int = 50,
              app: Orchestrator | None = None) -> list[RunSummary]:
    """Recent runs, newest first, optionally filtered."""
    return (app or default_orchestrator()).store.list_runs(
        workflow=workflow, status=status, since=since, limit=limit)
