"""Module-level reads of the default orchestrator's results database."""

from __future__ import annotations

from datetime import datetime

from orchestration.app import Orchestrator, default_orchestrator
from orchestration.results import RunResult, RunSummary
from orchestration.status import RunStatus


def get_run(run_id: str, *, app: Orchestrator | None = None) -> RunResult:
    """Read a run (any process, any time) from the results database."""
    return (app or default_orchestrator()).store.get_run(run_id)


def list_runs(*, workflow: str | None = None, status: RunStatus | None = None,
              since: datetime | None = None, limit: int = 50,
              app: Orchestrator | None = None) -> list[RunSummary]:
    """Recent runs, newest first, optionally filtered."""
    return (app or default_orchestrator()).store.list_runs(
        workflow=workflow, status=status, since=since, limit=limit)
