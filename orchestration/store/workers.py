"""Worker heartbeats in the results DB, and the steps held by workers that stopped beating.

Every worker process instance (a ``celery worker`` main process, or an embedded worker)
has a row in ``workers`` whose ``beat_at`` it renews every few seconds. A step claimed by
a delivery records its ``holder`` (that instance). A holder whose beat is older than the
dead-after window has died: its running steps are released (their crash count goes up,
the holder is cleared) so that a re-dispatch runs them again, once, and a step that keeps
killing its worker ends as a poison step. A step held by a live worker is never released.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, case, delete, exists, insert, select, update

from orchestration.core.status import RunStatus, StepStatus
from orchestration.store.models import RunRow, StepRow, WorkerRow

FORGET_AFTER = timedelta(days=1)  # rows of instances dead this long are deleted
_UNFINISHED_RUN = [RunStatus.PENDING.value, RunStatus.RUNNING.value]


@dataclass(frozen=True)
class WorkerInfo:
    """Who a worker process instance is, as recorded with its heartbeat."""

    instance: str
    name: str
    host: str
    pid: int
    queues: Sequence[str]
    # The versions of each workflow it carries (store/versions.py reads them).
    workflows: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Released:
    """A run whose running steps were released from a dead holder, to re-dispatch."""

    run_id: str
    workflow: str
    version: str
    inputs: dict[str, Any]
    steps: list[str]


class Workers:
    """Heartbeat queries of one results store."""

    def __init__(self, engine: Engine, reader: Engine) -> None:
        self._engine = engine  # the writer
        self._reader = reader

    def beat(self, worker: WorkerInfo, now: datetime) -> None:
        """Renew this instance's heartbeat (its row is created by the first beat)."""
        with self._engine.begin() as conn:
            updated = conn.execute(update(WorkerRow).where(WorkerRow.id == worker.instance)
                                   .values(beat_at=now, queues=list(worker.queues),
                                           workflows=_carried(worker), stopped_at=None)
                                   ).rowcount
            if not updated:
                conn.execute(insert(WorkerRow), [{
                    "id": worker.instance, "name": worker.name, "host": worker.host,
                    "pid": worker.pid, "queues": list(worker.queues), "started_at": now,
                    "beat_at": now, "workflows": _carried(worker)}])

    def stopped(self, instance: str, now: datetime) -> None:
        """Record a clean shutdown: the instance holds nothing any more."""
        with self._engine.begin() as conn:
            conn.execute(update(WorkerRow).where(WorkerRow.id == instance)
                         .values(stopped_at=now))

    def live_queues(self, alive_since: datetime) -> set[str]:
        """Queues consumed by a worker that beat since ``alive_since``."""
        with self._reader.connect() as conn:
            rows = conn.execute(select(WorkerRow.queues).where(
                WorkerRow.beat_at >= alive_since, WorkerRow.stopped_at.is_(None))).all()
        return {str(queue) for row in rows for queue in (row.queues or [])}

    def listed(self) -> list[tuple[str, str, str, int, list[str], datetime, datetime | None]]:
        """Every recorded instance: (id, name, host, pid, queues, beat_at, stopped_at)."""
        with self._reader.connect() as conn:
            rows = conn.execute(select(WorkerRow.id, WorkerRow.name, WorkerRow.host,
                                       WorkerRow.pid, WorkerRow.queues, WorkerRow.beat_at,
                                       WorkerRow.stopped_at)
                                .order_by(WorkerRow.beat_at.desc())).all()
        return [(r.id, r.name, r.host, r.pid, list(r.queues or []), r.beat_at, r.stopped_at)
                for r in rows]

    def release_dead(self, alive_since: datetime, workflows: Iterable[str],
                     now: datetime) -> list[Released]:
        """Release the running steps of dead holders, for runs of these workflows.

        A holder is dead when its beat is older than ``alive_since`` or it has no row
        at all (a worker that never beat, e.g. one killed before its first beat). Each
        step is released by exactly one caller (a conditional update), so two sweeping
        workers never both re-dispatch it.
        """
        names = list(workflows)
        if not names:
            return []
        live = exists().where(WorkerRow.id == StepRow.holder,
                              WorkerRow.beat_at >= alive_since)
        of_workflow = exists().where(RunRow.id == StepRow.run_id,
                                     RunRow.workflow.in_(names),
                                     RunRow.status.in_(_UNFINISHED_RUN))
        # Claimed before the window: a holder that claimed just now may not have beat yet.
        query = (update(StepRow)
                 .where(StepRow.status == StepStatus.RUNNING.value,
                        StepRow.holder.is_not(None), ~live, of_workflow,
                        StepRow.started_at < alive_since)
                 # The task id goes too: when the broker re-delivers the dead worker's
                 # message, that is not a second crash (this sweep counted it).
                 .values(holder=None, celery_task_id=None, crashes=StepRow.crashes + 1)
                 .returning(StepRow.run_id, StepRow.name))
        with self._engine.begin() as conn:
            steps = conn.execute(query).all()
            # Forget instances dead for long: nothing of theirs is left to sweep.
            conn.execute(delete(WorkerRow).where(
                WorkerRow.beat_at < now - FORGET_AFTER,
                ~exists().where(and_(StepRow.holder == WorkerRow.id,
                                     StepRow.status == StepStatus.RUNNING.value))))
        return self._released(steps)

    def release_run(self, run_id: str, alive_since: datetime) -> bool:
        """Before re-dispatching a stalled run: release its running steps.

        False (nothing changed) when a live worker still holds one of them: that step
        is running, not lost. Otherwise each running step a (dead) delivery still holds
        counts a crash (it never recorded anything) and the run may be re-dispatched. A
        step released already (by the sweep, or an earlier pass whose message no worker
        has taken yet) has no holder and counts nothing more: one crash per death, however
        many passes find the run stalled.
        """
        live = exists().where(WorkerRow.id == StepRow.holder, WorkerRow.beat_at >= alive_since,
                              WorkerRow.stopped_at.is_(None))
        with self._engine.begin() as conn:
            held = conn.execute(select(StepRow.name).where(
                StepRow.run_id == run_id, StepRow.status == StepStatus.RUNNING.value,
                live).limit(1)).first()
            if held is not None:
                return False
            conn.execute(update(StepRow).where(
                StepRow.run_id == run_id, StepRow.status == StepStatus.RUNNING.value,
            ).values(holder=None, celery_task_id=None, crashes=StepRow.crashes + case(
                (StepRow.holder.is_not(None), 1), else_=0)))
        return True

    def _released(self, steps: Sequence[Any]) -> list[Released]:
        by_run: dict[str, list[str]] = {}
        for run_id, name in steps:
            by_run.setdefault(run_id, []).append(name)
        if not by_run:
            return []
        with self._reader.connect() as conn:
            runs = conn.execute(select(RunRow.id, RunRow.workflow, RunRow.workflow_version,
                                       RunRow.inputs).where(RunRow.id.in_(list(by_run)))).all()
        return [Released(row.id, row.workflow, row.workflow_version, dict(row.inputs or {}),
                         sorted(by_run[row.id])) for row in runs]


def _carried(worker: WorkerInfo) -> dict[str, list[str]]:
    return {name: list(versions) for name, versions in worker.workflows.items()}
