"""What the beat reads and writes about schedule ticks in the results DB.

A tick's idempotency key (``schedule:<name>:<tick>``) is what makes it start at most one
run; the events rows record what each beat process did with it. On PostgreSQL a beat
also holds an advisory lock per tick while it decides, so two beat processes started by
mistake record one ``started`` (or ``skipped`` / ``queued``) and one ``duplicate``,
instead of racing to both record a decision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine, func, select, update

from orchestration.store.models import EventRow, RunRow

SOURCE = "schedule"


@dataclass(frozen=True)
class TickRow:
    """A tick already recorded by some beat: its outcome and run."""

    outcome: str
    run_id: str | None


@contextmanager
def tick_lock(engine: Engine, key: str) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock on ``key`` (a no-op on other databases)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
    with engine.connect() as conn:
        conn.execute(select(func.pg_advisory_lock(number)))
        conn.commit()
        try:
            yield
        finally:
            conn.execute(select(func.pg_advisory_unlock(number)))
            conn.commit()


def recorded(engine: Engine, key: str) -> TickRow | None:
    """The first row recorded for tick ``key`` (an event id), if any beat recorded one."""
    query = (select(EventRow.outcome, EventRow.run_id)
             .where(EventRow.event_id == key, EventRow.source == SOURCE)
             .order_by(EventRow.id).limit(1))
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return TickRow(row.outcome, row.run_id) if row is not None else None


def last_tick(engine: Engine, schedule: str) -> str | None:
    """The event id of the newest tick recorded for ``schedule``, if any."""
    query = (select(EventRow.event_id)
             .where(EventRow.source == SOURCE, EventRow.trigger == schedule)
             .order_by(EventRow.id.desc()).limit(1))
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def previous_run(engine: Engine, workflow: str, prefix: str,
                 exclude: str) -> tuple[str, str] | None:
    """(id, status) of the newest run whose idempotency key starts with ``prefix``.

    ``exclude`` is the key of the tick being decided: another beat may have started it
    a moment ago, and it is not this tick's "previous" run.
    """
    query = (select(RunRow.id, RunRow.status)
             .where(RunRow.workflow == workflow,
                    RunRow.idempotency_key.startswith(prefix, autoescape=True),
                    RunRow.idempotency_key != exclude)
             .order_by(RunRow.created_at.desc()).limit(1))
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return (row.id, row.status) if row is not None else None


def queued_ticks(engine: Engine, schedule: str) -> list[str]:
    """Event ids of ``schedule``'s queued ticks, oldest first (each once)."""
    query = (select(EventRow.event_id, func.min(EventRow.id).label("first"))
             .where(EventRow.source == SOURCE, EventRow.trigger == schedule,
                    EventRow.outcome == "queued")
             .group_by(EventRow.event_id).order_by("first"))
    with engine.connect() as conn:
        return [row.event_id for row in conn.execute(query)]


def mark_started(engine: Engine, key: str, run_id: str) -> None:
    """A queued tick's run has started: its rows say ``started`` and name the run."""
    with engine.begin() as conn:
        conn.execute(update(EventRow)
                     .where(EventRow.event_id == key, EventRow.source == SOURCE,
                            EventRow.outcome == "queued")
                     .values(outcome="started", run_id=run_id))
