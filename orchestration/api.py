"""Module-level operations on the default orchestrator (or the one passed as ``orchestrator=``).

``app=`` is the old name of ``orchestrator=`` and still accepted; "app" alone means the
Celery application (``orchestrator.celery``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from orchestration.app import Orchestrator, default_orchestrator
from orchestration.core.results import RunHandle, RunResult, RunSummary, cancel_run
from orchestration.core.status import RunStatus
from orchestration.events.ingest import ingest
from orchestration.events.outcomes import EventOutcome
from orchestration.submit.durability import Reconciled


def get_run(run_id: str, *, orchestrator: Orchestrator | None = None,
            app: Orchestrator | None = None) -> RunResult:
    """Read a run (any process, any time) from the results database."""
    return _chosen(orchestrator, app).store.get_run(run_id)


def cancel(run_id: str, *, orchestrator: Orchestrator | None = None,
           app: Orchestrator | None = None) -> list[str]:
    """Cancel a run and its unfinished child runs (steps not yet started never start)."""
    return cancel_run(_chosen(orchestrator, app).store, run_id)


def approve(run_id: str, data: Any = None, *, name: str | None = None,
            orchestrator: Orchestrator | None = None,
            app: Orchestrator | None = None) -> int:
    """Deliver a person's input to a run waiting in ``ctx.wait_for_input``."""
    return _chosen(orchestrator, app).approve(run_id, data, name)


def resume(run_id: str, *, inputs: dict[str, Any] | None = None,
           orchestrator: Orchestrator | None = None,
           app: Orchestrator | None = None, upgrade: bool = False) -> RunHandle:
    """Continue a failed or cancelled run: only its failed, skipped and cancelled steps run.

    ``inputs`` replace stored ones; secret inputs were stored redacted and must be given.
    A run of another workflow version than this process's is refused, unless
    ``upgrade=True`` moves it to this version (same steps only; docs/upgrades.md).
    Returns the run's handle (same run id), as ``submit`` does: ``resume(id).wait()``.
    """
    return _chosen(orchestrator, app).resume(run_id, inputs, upgrade=upgrade)


def reconcile(*, idle_seconds: float | None = None,
              orchestrator: Orchestrator | None = None,
              app: Orchestrator | None = None) -> Reconciled:
    """Re-dispatch runs with no progress for ``idle_seconds``; expire overdue waits."""
    return _chosen(orchestrator, app).reconcile(idle_seconds)


def list_runs(*, workflow: str | None = None, status: RunStatus | None = None,
              since: datetime | None = None, limit: int = 50,
              orchestrator: Orchestrator | None = None,
              app: Orchestrator | None = None) -> list[RunSummary]:
    """Recent runs, newest first, optionally filtered."""
    return _chosen(orchestrator, app).store.list_runs(
        workflow=workflow, status=status, since=since, limit=limit)


def emit(name: str, payload: Any = None, event_id: str | None = None, *,
         priority: int | None = None, orchestrator: Orchestrator | None = None,
         app: Orchestrator | None = None) -> list[EventOutcome]:
    """Deliver event ``name`` to the triggers listening to it; one outcome per trigger.

    Each matching trigger starts at most one run per dedupe key (``event_id`` unless the
    trigger names a ``dedupe`` path), however often the event is emitted; an event no
    trigger matches is recorded ``unmatched``; a payload missing a mapped path is recorded
    ``rejected`` with the path. Without ``event_id`` an id is generated (so only a
    ``dedupe`` path can tell two emits apart). ``priority`` (0..9, 9 the most urgent)
    overrides the triggers' own. Raises :class:`InvalidInput` for a bad
    name, id, payload or priority (nothing recorded) and :class:`SubmitFailed` if the broker
    refused a run (emitting again is safe).
    """
    return ingest(_chosen(orchestrator, app), name, payload, event_id=event_id,
                  source="emit", priority=priority)


def _chosen(orchestrator: Orchestrator | None, app: Orchestrator | None) -> Orchestrator:
    return orchestrator or app or default_orchestrator()
