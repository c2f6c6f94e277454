"""Elements of batched steps (``batch_size=``) buffered in the results DB across runs.

A run reaching a batched step *joins* its step's buffer: its arguments and its parked
message are written here, the step and the run show ``waiting``, and the message holds
no worker slot. A flush *takes* a batch (``batch_size`` elements, or fewer once the
oldest has waited ``batch_wait`` seconds) under a lease; the batch call records each
run's step (conditionally, so at most once), the elements are marked ``done`` and their
messages sent again, then *forgotten*. A batch whose holder died (no heartbeat) or whose
lease ran out is taken again; a ``done`` element whose message may not have been sent is
sent again (a duplicate message finds its step recorded and passes the outcome on).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from orchestration.core.clock import as_utc
from orchestration.core.status import CLAIMABLE_STEP_STATUSES, RunStatus, StepStatus
from orchestration.store.models import BatchElementRow, RunRow, StepRow, WorkerRow

WAITING, TAKEN, DONE = "waiting", "taken", "done"
_CLAIMABLE = [status.value for status in CLAIMABLE_STEP_STATUSES]
_B = BatchElementRow
_TABLE = BatchElementRow.__table__


@dataclass(frozen=True)
class Element:
    """One run's element of a batch: its arguments and the message that continues its run."""

    id: int
    run_id: str
    step_name: str
    kwargs: dict[str, Any]
    resume: dict[str, Any]
    prior_attempts: int = 0
    claimed_at: datetime | None = None


@dataclass(frozen=True)
class Taken:
    """A batch taken under a lease: ``elements`` to call, ``settled`` only to send on.

    ``settled`` elements need no call: their step was recorded already (a batch taken
    again after its holder recorded it and died) or their run was cancelled.
    """

    batch_id: str
    elements: list[Element]
    settled: list[Element]


class Batches:
    """The batch buffer of one results store."""

    def __init__(self, engine: Engine, reader: Engine) -> None:
        self._engine = engine  # the writer
        self._reader = reader

    def join(self, step: str, run_id: str, step_name: str, *, kwargs: dict[str, Any],
             resume: dict[str, Any], prior_attempts: int, claimed_at: datetime | None,
             now: datetime) -> int:
        """Buffer a run's element (once per run and step); how many wait now for ``step``.

        The step and the run show ``waiting``; the step's holder is cleared (no worker
        holds it while it waits). A second delivery of the same element only refreshes
        the message to send while it still waits.
        """
        try:
            self._join(step, run_id, step_name, kwargs, resume, prior_attempts, claimed_at,
                       now)
        except IntegrityError:  # the same element joined at the same moment: it is in
            self._join(step, run_id, step_name, kwargs, resume, prior_attempts, claimed_at,
                       now)
        # Counted after the commit: of joins committing at once (each unseen by the others'
        # transactions), the last to count sees them all, so a full batch is never missed.
        with self._reader.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(_B).where(
                _B.step == step, _B.status == WAITING)).scalar_one())

    def _join(self, step: str, run_id: str, step_name: str, kwargs: dict[str, Any],
              resume: dict[str, Any], prior_attempts: int, claimed_at: datetime | None,
              now: datetime) -> None:
        with self._engine.begin() as conn:
            existing = conn.execute(select(_B.id, _B.status).where(
                _B.run_id == run_id, _B.step_name == step_name)).first()
            if existing is None:
                conn.execute(insert(_B), [{
                    "step": step, "run_id": run_id, "step_name": step_name,
                    "status": WAITING, "kwargs": kwargs, "resume": resume,
                    "prior_attempts": prior_attempts, "claimed_at": claimed_at,
                    "created_at": now}])
            elif existing.status == WAITING:
                conn.execute(update(_B).where(_B.id == existing.id).values(resume=resume))
            conn.execute(update(StepRow).where(
                StepRow.run_id == run_id, StepRow.name == step_name,
                StepRow.status.in_(_CLAIMABLE),
            ).values(status=StepStatus.WAITING.value, holder=None))
            conn.execute(update(RunRow).where(
                RunRow.id == run_id, RunRow.status == RunStatus.RUNNING.value,
            ).values(status=RunStatus.WAITING.value))

    def take(self, step: str, *, size: int, wait: float, now: datetime, holder: str,
             lease: float, alive_since: datetime) -> Taken | None:
        """Take the next batch of ``step`` that is due, or None.

        First a batch whose holder died (taken before ``alive_since`` by a holder that
        has not beat since) or whose lease ran out; then the oldest ``size`` waiting
        elements, when there are ``size`` of them or the oldest has waited ``wait`` s.
        """
        until = now + timedelta(seconds=lease)
        with self._engine.begin() as conn:
            orphan = conn.execute(select(_B.batch_id).where(
                _B.step == step, _B.status == TAKEN, _orphaned(now, alive_since),
            ).order_by(_B.id).limit(1)).scalar()
            if orphan is not None:
                batch_id = uuid.uuid4().hex
                taken = conn.execute(update(_B).where(
                    _B.batch_id == orphan, _B.status == TAKEN,
                ).values(batch_id=batch_id, holder=holder, taken_at=now, lease_until=until)
                    .returning(_B.id)).scalars().all()
                return _taken(conn, batch_id, list(taken))
            query = select(_B.id, _B.created_at).where(
                _B.step == step, _B.status == WAITING).order_by(_B.id).limit(size)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = conn.execute(query).all()
            if not rows:
                return None
            oldest = as_utc(rows[0].created_at)
            if len(rows) < size and oldest is not None and \
                    oldest > now - timedelta(seconds=wait):
                return None
            batch_id = uuid.uuid4().hex
            taken = conn.execute(update(_B).where(
                _B.id.in_([row.id for row in rows]), _B.status == WAITING,
            ).values(status=TAKEN, batch_id=batch_id, holder=holder, taken_at=now,
                     lease_until=until).returning(_B.id)).scalars().all()
            if not taken:
                return None
            return _taken(conn, batch_id, list(taken))

    def renew(self, batch_id: str, *, holder: str, now: datetime, lease: float) -> bool:
        """Extend a held batch's lease; False if it was taken by another holder."""
        with self._engine.begin() as conn:
            return bool(conn.execute(update(_B).where(
                _B.batch_id == batch_id, _B.holder == holder, _B.status == TAKEN,
            ).values(lease_until=now + timedelta(seconds=lease))).rowcount)

    def release(self, batch_id: str, *, holder: str) -> int:
        """Give a held batch's elements back to the buffer (its call broke off)."""
        with self._engine.begin() as conn:
            return int(conn.execute(update(_B).where(
                _B.batch_id == batch_id, _B.holder == holder, _B.status == TAKEN,
            ).values(status=WAITING, batch_id=None, holder=None, taken_at=None,
                     lease_until=None)).rowcount)

    def done(self, ids: Iterable[int], *, now: datetime, lease: float) -> None:
        """The elements' steps are recorded: mark them ``done`` and the runs running again.

        Their messages are sent next; a ``done`` element still here after ``lease`` s
        (its sender died) is sent again by :meth:`unsent`.
        """
        ids = list(ids)
        if not ids:
            return
        with self._engine.begin() as conn:
            conn.execute(update(_B).where(_B.id.in_(ids)).values(
                status=DONE, lease_until=now + timedelta(seconds=lease)))
            runs = select(_B.run_id).where(_B.id.in_(ids)).scalar_subquery()
            conn.execute(update(RunRow).where(
                RunRow.id.in_(runs), RunRow.status == RunStatus.WAITING.value,
                ~exists().where(StepRow.run_id == RunRow.id,
                                StepRow.status == StepStatus.WAITING.value),
            ).values(status=RunStatus.RUNNING.value))

    def forget(self, ids: Iterable[int]) -> None:
        """Delete elements whose messages were sent."""
        ids = list(ids)
        if ids:
            with self._engine.begin() as conn:
                conn.execute(delete(_B).where(_B.id.in_(ids)))

    def unsent(self, now: datetime, *, lease: float) -> list[Element]:
        """``done`` elements whose sender may have died: to send again (and renewed)."""
        with self._engine.begin() as conn:
            rows = conn.execute(select(_TABLE).where(
                _B.status == DONE, _B.lease_until < now).limit(500)).all()
            if rows:
                conn.execute(update(_B).where(_B.id.in_([row.id for row in rows])).values(
                    lease_until=now + timedelta(seconds=lease)))
        return [_element(row) for row in rows]

    def due_steps(self, waits: Mapping[str, float], *, now: datetime,
                  alive_since: datetime) -> list[str]:
        """Which of these steps (task name -> batch_wait) have a batch to take now."""
        if not waits:
            return []
        with self._reader.connect() as conn:
            rows = conn.execute(select(_B.step, _B.status, func.min(_B.created_at),
                                       func.count()).where(
                _B.step.in_(list(waits)),
                or_(_B.status == WAITING, and_(_B.status == TAKEN,
                                               _orphaned(now, alive_since))),
            ).group_by(_B.step, _B.status)).all()
        due: set[str] = set()
        for step, status, oldest, _count in rows:
            created = as_utc(oldest)
            if status == TAKEN or created is None or \
                    created <= now - timedelta(seconds=waits[step]):
                due.add(step)
        return sorted(due)

    def next_due(self, step: str, wait: float, now: datetime) -> float | None:
        """Seconds until the oldest waiting element of ``step`` is due (None: none waits)."""
        with self._reader.connect() as conn:
            oldest = conn.execute(select(func.min(_B.created_at)).where(
                _B.step == step, _B.status == WAITING)).scalar()
        created = as_utc(oldest)
        if created is None:
            return None
        return max(0.0, (created + timedelta(seconds=wait) - now).total_seconds())

    def of_run(self, run_id: str) -> list[tuple[str, str, int]]:
        """(step name, status, elements of that step waiting) of the run's elements."""
        with self._reader.connect() as conn:
            rows = conn.execute(select(_B.step_name, _B.step, _B.status)
                                .where(_B.run_id == run_id).order_by(_B.id)).all()
            return [(row.step_name, row.status, int(conn.execute(
                select(func.count()).select_from(_B).where(
                    _B.step == row.step, _B.status == WAITING)).scalar_one()))
                for row in rows]

    def counts(self, step: str) -> dict[str, int]:
        """Elements of ``step`` by status (for operators and tests)."""
        with self._reader.connect() as conn:
            rows = conn.execute(select(_B.status, func.count()).where(_B.step == step)
                                .group_by(_B.status)).all()
        return {str(status): int(count) for status, count in rows}


def _orphaned(now: datetime, alive_since: datetime) -> Any:
    live = exists().where(WorkerRow.id == _B.holder, WorkerRow.beat_at >= alive_since,
                          WorkerRow.stopped_at.is_(None))
    return or_(_B.lease_until < now, and_(_B.taken_at < alive_since, ~live))


def _taken(conn: Connection, batch_id: str, ids: list[int]) -> Taken | None:
    if not ids:
        return None
    rows = conn.execute(select(_TABLE, StepRow.status.label("step_status"),
                               RunRow.status.label("run_status"))
                        .join(StepRow, and_(StepRow.run_id == _B.run_id,
                                            StepRow.name == _B.step_name))
                        .join(RunRow, RunRow.id == _B.run_id)
                        .where(_B.id.in_(ids)).order_by(_B.id)).all()
    elements, settled = [], []
    for row in rows:
        element = _element(row)
        if row.step_status in _CLAIMABLE and row.run_status != RunStatus.CANCELLED.value:
            elements.append(element)
        else:
            settled.append(element)
    return Taken(batch_id, elements, settled)


def _element(row: Any) -> Element:
    return Element(id=row.id, run_id=row.run_id, step_name=row.step_name,
                   kwargs=dict(row.kwargs), resume=dict(row.resume),
                   prior_attempts=int(row.prior_attempts or 0),
                   claimed_at=as_utc(row.claimed_at))
