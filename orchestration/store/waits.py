"""Human waits in the results DB: park a step, deliver input, expire overdue waits.

Parking records how to continue (the step's Celery signature, with its place in the
run's chain or chord), so the run holds no worker slot while it waits and survives any
restart: delivering input (or expiring the wait) re-sends that signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update

from orchestration.core.clock import as_utc
from orchestration.core.status import CLAIMABLE_STEP_STATUSES, RunStatus, StepStatus
from orchestration.errors import NoWaitingInput
from orchestration.store.models import RunRow, StepRow, WaitRow

WAITING, DELIVERED, EXPIRED, CANCELLED = "waiting", "delivered", "expired", "cancelled"
_CLAIMABLE = [status.value for status in CLAIMABLE_STEP_STATUSES]


@dataclass(frozen=True)
class Wait:
    """One wait as recorded."""

    run_id: str
    step: str
    name: str
    status: str
    data: Any
    deadline: datetime | None
    resume: dict[str, Any]


class Waits:
    """Waits of one results store."""

    def __init__(self, engine: Engine, reader: Engine) -> None:
        self._engine = engine  # the writer
        self._reader = reader

    def lookup(self, run_id: str, step: str, name: str) -> Wait | None:
        """The wait of this step for this input, if one was recorded."""
        with self._reader.connect() as conn:
            row = conn.execute(select(WaitRow).where(
                WaitRow.run_id == run_id, WaitRow.step_name == step, WaitRow.name == name)).first()
        return None if row is None else _wait(row)

    def park(self, run_id: str, step: str, name: str, *, deadline: datetime | None,
             resume: dict[str, Any], now: datetime) -> None:
        """Record the wait; the step and run show ``waiting``."""
        with self._engine.begin() as conn:
            conn.execute(insert(WaitRow), [{
                "run_id": run_id, "step_name": step, "name": name, "status": WAITING,
                "deadline": deadline, "resume": resume, "created_at": now}])
            conn.execute(update(StepRow).where(
                StepRow.run_id == run_id, StepRow.name == step, StepRow.status.in_(_CLAIMABLE)
            ).values(status=StepStatus.WAITING.value))
            conn.execute(update(RunRow).where(
                RunRow.id == run_id, RunRow.status == RunStatus.RUNNING.value
            ).values(status=RunStatus.WAITING.value))

    def resolve(self, run_id: str, *, data: Any, name: str | None, status: str,
                now: datetime) -> list[Wait]:
        """Deliver input to (or expire) the run's waits; returns them, to be re-sent."""
        with self._engine.begin() as conn:
            query = select(WaitRow).where(WaitRow.run_id == run_id, WaitRow.status == WAITING)
            if name is not None:
                query = query.where(WaitRow.name == name)
            rows = conn.execute(query).all()
            if not rows:
                raise NoWaitingInput(f"run {run_id} has no step waiting for "
                                     f"{'input' if name is None else repr(name)}")
            for row in rows:
                conn.execute(update(WaitRow).where(WaitRow.id == row.id).values(
                    status=status, data=data, resolved_at=now))
                conn.execute(update(StepRow).where(
                    StepRow.run_id == run_id, StepRow.name == row.step_name,
                    StepRow.status == StepStatus.WAITING.value
                ).values(status=StepStatus.PENDING.value))
            conn.execute(update(RunRow).where(
                RunRow.id == run_id, RunRow.status == RunStatus.WAITING.value
            ).values(status=RunStatus.RUNNING.value))
        return [_wait(row) for row in rows]

    def due(self, now: datetime) -> list[tuple[str, str]]:
        """(run id, input name) of waits past their deadline."""
        with self._reader.connect() as conn:
            rows = conn.execute(select(WaitRow.run_id, WaitRow.name).where(
                WaitRow.status == WAITING, WaitRow.deadline.is_not(None),
                WaitRow.deadline <= now)).all()
        return [(row.run_id, row.name) for row in rows]


def _wait(row: Any) -> Wait:
    return Wait(run_id=row.run_id, step=row.step_name, name=row.name, status=row.status,
                data=row.data, deadline=as_utc(row.deadline), resume=dict(row.resume))
