"""Queries for recovery: the step result cache, resuming a run, finding stale runs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from orchestration.core.clock import as_utc
from orchestration.core.status import RunStatus, StepStatus
from orchestration.errors import NotResumable, RunNotFound
from orchestration.store.models import CacheRow, PermitWaitRow, RunRow, StepRow

RESUMABLE = (RunStatus.FAILED.value, RunStatus.CANCELLED.value)
RERUN_STEPS = (StepStatus.FAILED.value, StepStatus.SKIPPED.value, StepStatus.CANCELLED.value)


@dataclass(frozen=True)
class RunState:
    """What resume checks of a run before it changes anything."""

    workflow: str
    version: str
    status: str
    inputs: dict[str, Any]
    redacted: list[str] | None  # inputs whose stored copy redaction changed (None: not known)


class Recovery:
    """Recovery queries of one results store."""

    def __init__(self, engine: Engine, reader: Engine) -> None:
        self._engine = engine  # the writer
        self._reader = reader

    # -- step result cache --------------------------------------------------------------

    def cached(self, key: str, now: datetime) -> tuple[bool, Any]:
        """(hit, output) for a cache key that has not expired."""
        with self._reader.connect() as conn:
            row = conn.execute(select(CacheRow.output, CacheRow.expires_at)
                               .where(CacheRow.key == key)).first()
        if row is None:
            return False, None
        expires = as_utc(row.expires_at)
        if expires is not None and expires <= now:
            return False, None
        return True, row.output

    def cache(self, key: str, workflow: str, step: str, output: Any, now: datetime,
              ttl: float | None) -> None:
        """Remember a step's output under its key (first writer wins)."""
        expires = now + timedelta(seconds=ttl) if ttl else None
        try:
            with self._engine.begin() as conn:
                conn.execute(delete(CacheRow).where(CacheRow.key == key,
                                                    CacheRow.expires_at <= now))
                conn.execute(insert(CacheRow), [{"key": key, "workflow": workflow, "step": step,
                                                 "output": output, "created_at": now,
                                                 "expires_at": expires}])
        except IntegrityError:
            return  # another worker cached the same key meanwhile

    # -- resume -------------------------------------------------------------------------

    def run_state(self, run_id: str) -> RunState:
        """The run's workflow, version, status and stored inputs; RunNotFound if none."""
        with self._reader.connect() as conn:
            run = conn.execute(select(RunRow.workflow, RunRow.workflow_version, RunRow.status,
                                      RunRow.inputs, RunRow.redacted_inputs)
                               .where(RunRow.id == run_id)).first()
        if run is None:
            raise RunNotFound(f"no run {run_id!r}")
        return RunState(run.workflow, run.workflow_version, run.status, dict(run.inputs or {}),
                        None if run.redacted_inputs is None else list(run.redacted_inputs))

    def step_statuses(self, run_id: str) -> dict[str, StepStatus]:
        """Every step of the run and its status."""
        with self._reader.connect() as conn:
            rows = conn.execute(select(StepRow.name, StepRow.status)
                                .where(StepRow.run_id == run_id)).all()
        return {row.name: StepStatus(row.status) for row in rows}

    def stored_outputs(self, run_id: str, names: list[str]) -> dict[str, Any]:
        """The stored (redacted) outputs of these steps of the run."""
        with self._reader.connect() as conn:
            rows = conn.execute(select(StepRow.name, StepRow.output).where(
                StepRow.run_id == run_id, StepRow.name.in_(names))).all()
        return {row.name: row.output for row in rows}

    def reset_for_resume(self, run_id: str, inputs: dict[str, Any] | None = None,
                         redacted: list[str] | None = None) -> tuple[str, dict[str, Any]]:
        """Make a failed/cancelled run's failed, skipped and cancelled steps pending again.

        Completed steps keep their outputs (and are not run again); attempts are kept.
        ``inputs`` (the stored, redacted copy of what the run continues with) replace the
        stored ones, so a later re-dispatch reads what this one sent, and ``redacted``
        the names of those redaction changed. Returns (workflow, inputs).
        """
        with self._engine.begin() as conn:
            run = conn.execute(select(RunRow.workflow, RunRow.status, RunRow.inputs)
                               .where(RunRow.id == run_id).with_for_update()).first()
            if run is None:
                raise RunNotFound(f"no run {run_id!r}")
            if run.status not in RESUMABLE:
                raise NotResumable(f"run {run_id} is {run.status}; only failed or cancelled "
                                   "runs can be resumed")
            conn.execute(update(StepRow).where(
                StepRow.run_id == run_id, StepRow.status.in_(RERUN_STEPS)
            ).values(status=StepStatus.PENDING.value, finished_at=None, crashes=0))
            values: dict[str, Any] = {"status": RunStatus.PENDING.value, "error": None,
                                      "error_type": None, "finished_at": None}
            if inputs is not None:
                values["inputs"] = inputs
            if redacted is not None:
                values["redacted_inputs"] = redacted
            conn.execute(update(RunRow).where(RunRow.id == run_id).values(**values))
        return run.workflow, dict(inputs if inputs is not None else run.inputs or {})

    # -- stale runs ---------------------------------------------------------------------

    def stale_runs(self, idle_since: datetime) -> list[tuple[str, str, str, dict[str, Any]]]:
        """Pending/running runs with no step progress since ``idle_since``.

        Progress is the latest of the run's creation and its steps' claims and finishes.
        The latest progress is read per candidate run (its steps, by the (run_id, name)
        key): grouping every run's steps first read all of ``steps`` on each pass
        (3.8 s a pass at 1M runs, now 11 ms: bench/scale_db.py).
        """
        progress = (select(func.max(func.coalesce(StepRow.finished_at, StepRow.started_at)))
                    .where(StepRow.run_id == RunRow.id).correlate(RunRow)
                    .scalar_subquery().label("last"))
        query = (select(RunRow.id, RunRow.workflow, RunRow.workflow_version, RunRow.inputs,
                        RunRow.created_at, progress)
                 .where(RunRow.status.in_([RunStatus.PENDING.value, RunStatus.RUNNING.value]),
                        RunRow.created_at < idle_since,
                        # Waiting for a max_parallel permit is waiting its turn, not lost.
                        ~exists().where(PermitWaitRow.run_id == RunRow.id)))
        with self._reader.connect() as conn:
            rows = conn.execute(query).all()
        stale = []
        for row in rows:
            last = as_utc(row.last)
            if last is None or last < idle_since:
                stale.append((row.id, row.workflow, row.workflow_version, dict(row.inputs or {})))
        return stale
