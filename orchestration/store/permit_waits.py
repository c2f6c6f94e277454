"""Runs and steps waiting for a ``max_parallel`` permit, kept in the results DB.

A waiter holds no worker slot and sits in no queue: it is a row here until a permit of
its scope frees. Wakers take rows in order (highest priority first, then oldest), mark
them woken, send them, and delete them; a waker that dies between marking and deleting
leaves a row that :meth:`PermitWaits.scopes` makes wakeable again after ``stale_after``
seconds (a duplicate send is harmless: step claims run each step once).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update

from orchestration.store.models import PermitWaitRow


@dataclass(frozen=True)
class PermitWait:
    """One waiter."""

    id: int
    scope: str
    max_parallel: int
    run_id: str
    step: str | None
    holder: str
    resume: dict[str, Any] | None
    priority: int


class PermitWaits:
    """Permit waiters of one results store."""

    def __init__(self, engine: Engine, reader: Engine) -> None:
        self._engine = engine  # the writer
        self._reader = reader

    def park(self, wait: PermitWait, now: datetime) -> None:
        """Record a waiter (``wait.id`` is ignored)."""
        with self._engine.begin() as conn:
            conn.execute(insert(PermitWaitRow), [{
                "scope": wait.scope, "max_parallel": wait.max_parallel, "run_id": wait.run_id,
                "step_name": wait.step, "holder": wait.holder, "resume": wait.resume,
                "priority": wait.priority, "created_at": now}])

    def park_many(self, waits: list[PermitWait], now: datetime) -> None:
        """Record several waiters in one transaction."""
        if not waits:
            return
        with self._engine.begin() as conn:
            conn.execute(insert(PermitWaitRow), [{
                "scope": w.scope, "max_parallel": w.max_parallel, "run_id": w.run_id,
                "step_name": w.step, "holder": w.holder, "resume": w.resume,
                "priority": w.priority, "created_at": now} for w in waits])

    def take(self, scope: str, count: int, now: datetime) -> list[PermitWait]:
        """Mark up to ``count`` next waiters of ``scope`` woken and return them."""
        if count <= 0:
            return []
        query = (select(PermitWaitRow).where(PermitWaitRow.scope == scope,
                                             PermitWaitRow.woken_at.is_(None))
                 .order_by(PermitWaitRow.priority.desc(), PermitWaitRow.id).limit(count))
        taken: list[PermitWait] = []
        with self._engine.begin() as conn:
            for row in conn.execute(query).all():
                marked = conn.execute(update(PermitWaitRow).where(
                    PermitWaitRow.id == row.id, PermitWaitRow.woken_at.is_(None))
                    .values(woken_at=now))
                if marked.rowcount == 1:  # another waker did not take it first
                    taken.append(_wait(row))
        return taken

    def done(self, wait_id: int) -> None:
        """The waiter was sent: forget it."""
        with self._engine.begin() as conn:
            conn.execute(delete(PermitWaitRow).where(PermitWaitRow.id == wait_id))

    def put_back(self, wait_ids: list[int]) -> None:
        """Waiters that could not take a permit after all: they wait again, in their place."""
        if not wait_ids:
            return
        with self._engine.begin() as conn:
            conn.execute(update(PermitWaitRow).where(PermitWaitRow.id.in_(wait_ids))
                         .values(woken_at=None))

    def scopes(self, now: datetime, stale_after: float) -> list[tuple[str, int]]:
        """Scopes with waiters, and their limits; waiters woken long ago wait again."""
        with self._engine.begin() as conn:
            conn.execute(update(PermitWaitRow).where(
                PermitWaitRow.woken_at < now - timedelta(seconds=stale_after))
                .values(woken_at=None))
            rows = conn.execute(
                select(PermitWaitRow.scope, func.max(PermitWaitRow.max_parallel))
                .where(PermitWaitRow.woken_at.is_(None)).group_by(PermitWaitRow.scope)).all()
        return [(row[0], int(row[1])) for row in rows]

    def of_run(self, run_id: str) -> list[tuple[str, str | None, int]]:
        """What a run waits for: (scope, step or None, waiters ahead of it in that scope)."""
        with self._reader.connect() as conn:
            mine = conn.execute(select(PermitWaitRow).where(
                PermitWaitRow.run_id == run_id)).all()
            result = []
            for row in mine:
                ahead = conn.execute(select(func.count()).select_from(PermitWaitRow).where(
                    PermitWaitRow.scope == row.scope,
                    (PermitWaitRow.priority > row.priority)
                    | ((PermitWaitRow.priority == row.priority) & (PermitWaitRow.id < row.id))
                )).scalar_one()
                result.append((row.scope, row.step_name, int(ahead)))
        return result


def _wait(row: Any) -> PermitWait:
    return PermitWait(id=row.id, scope=row.scope, max_parallel=row.max_parallel,
                      run_id=row.run_id, step=row.step_name, holder=row.holder,
                      resume=dict(row.resume) if row.resume is not None else None,
                      priority=row.priority)
