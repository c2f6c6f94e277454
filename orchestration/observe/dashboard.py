"""The run dashboard's queries: a page of runs, the workflows seen, models' recent failures.

``orchestrate serve`` shows what ``orchestrate runs/show/stats`` print; these are the
reads it needs beyond :mod:`orchestration.store.reads` and :mod:`.queries` (an offset
page with a time window; failed model calls per model, newest first).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from orchestration.core.clock import as_utc
from orchestration.core.results import RunSummary
from orchestration.core.status import RunStatus
from orchestration.define.workflow import Host
from orchestration.store.models import AttemptRow, RunRow, StepRow


@dataclass(frozen=True)
class RunPage:
    """One page of runs, newest first, and whether an older page exists."""

    runs: list[RunSummary]
    offset: int
    limit: int
    has_next: bool


@dataclass(frozen=True)
class FailedCall:
    """One failed model call, as an attempt recorded it."""

    model: str
    at: datetime | None
    run_id: str
    step: str
    error: str | None
    error_kind: str | None


def run_page(host: Host, *, workflow: str | None = None, status: RunStatus | None = None,
             since: datetime | None = None, until: datetime | None = None,
             offset: int = 0, limit: int = 50) -> RunPage:
    """Runs created in ``[since, until)`` (filtered by workflow and status), newest first."""
    store = host.store
    store.ensure_schema()
    query = (select(RunRow.id, RunRow.workflow, RunRow.status, RunRow.created_at,
                    RunRow.finished_at, RunRow.cost_usd, RunRow.error)
             .order_by(RunRow.created_at.desc(), RunRow.id.desc())
             .offset(offset).limit(limit + 1))
    if workflow:
        query = query.where(RunRow.workflow == workflow)
    if status is not None:
        query = query.where(RunRow.status == status.value)
    if since is not None:
        query = query.where(RunRow.created_at >= _utc(since))
    if until is not None:
        query = query.where(RunRow.created_at < _utc(until))
    with store.reader.connect() as conn:
        rows = conn.execute(query).all()
    runs = [RunSummary(run_id=r.id, workflow=r.workflow, status=RunStatus(r.status),
                       created_at=as_utc(r.created_at), finished_at=as_utc(r.finished_at),
                       cost_usd=float(r.cost_usd or 0.0), error=r.error)
            for r in rows[:limit]]
    return RunPage(runs, offset, limit, has_next=len(rows) > limit)


def workflow_names(host: Host) -> list[str]:
    """Workflows registered in this process or seen in the results DB, sorted."""
    store = host.store
    store.ensure_schema()
    with store.reader.connect() as conn:
        seen = {name for (name,) in conn.execute(_distinct_workflows()) if name is not None}
    return sorted(seen | set(host.workflows))


def _distinct_workflows() -> Any:
    """Each workflow name once, by hopping the (workflow, created_at) index from one name to
    the next (a loose index scan): ``SELECT DISTINCT`` read every run (107 ms at 1M runs;
    this reads one index entry per workflow, bench/scale_db.py)."""
    first = select(func.min(RunRow.workflow).label("name")).cte("names", recursive=True)
    following = select(func.min(RunRow.workflow)).where(
        RunRow.workflow > first.c.name).scalar_subquery()
    names = first.union_all(select(following).where(first.c.name.is_not(None)))
    return select(names.c.name)


def failed_calls(host: Host, *, since: datetime, per_model: int = 5,
                 scan: int = 2000) -> dict[str, list[FailedCall]]:
    """Per model, its latest failed calls since ``since`` (at most ``per_model`` each).

    Reads the newest ``scan`` attempts that recorded model calls; a failed call is one
    whose ``ok`` is false, whichever way the attempt itself ended (a fallback model may
    have answered).
    """
    store = host.store
    store.ensure_schema()
    query = (select(AttemptRow.run_id, AttemptRow.step_name, AttemptRow.started_at,
                    AttemptRow.calls)
             .where(AttemptRow.calls.is_not(None), AttemptRow.started_at >= _utc(since))
             .order_by(AttemptRow.started_at.desc()).limit(scan))
    found: dict[str, list[FailedCall]] = {}
    with store.reader.connect() as conn:
        for run_id, step, started_at, calls in conn.execute(query):
            for call in _calls(calls):
                model = str(call.get("model"))
                kept = found.setdefault(model, [])
                if call.get("ok") or len(kept) >= per_model:
                    continue
                kept.append(FailedCall(model, as_utc(started_at), run_id, step,
                                       _text(call.get("error")), _text(call.get("error_kind"))))
    return {model: calls for model, calls in found.items() if calls}


def _calls(value: Any) -> list[dict[str, Any]]:
    return [call for call in value or () if isinstance(call, dict)]


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _utc(value: datetime) -> datetime:
    # SQLite compares timestamps as text, so every bound must be in UTC like the rows.
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def run_snapshot(host: Host, run_id: str) -> tuple[str, dict[str, tuple[str, int]]] | None:
    """A run's status and each recorded step's ``(status, attempts)``: two indexed reads
    (what the dashboard polls to stay live); None when there is no such run."""
    store = host.store
    with store.reader.connect() as conn:
        status = conn.execute(select(RunRow.status).where(RunRow.id == run_id)).scalar()
        if status is None:
            return None
        steps = conn.execute(select(StepRow.name, StepRow.status, StepRow.attempts)
                             .where(StepRow.run_id == run_id).order_by(StepRow.id)).all()
    return str(status), {name: (str(state), int(attempts or 0))
                         for name, state, attempts in steps}
