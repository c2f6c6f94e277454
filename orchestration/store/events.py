"""Events in the results DB: one row per event and trigger, and what became of it.

Rows are written after the event was handled (a run started, found a duplicate, or was
refused); at-most-once per dedupe key rests on the runs' unique idempotency key, not on
these rows, so a row is a record, never a lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, insert, select

from orchestration.core.clock import as_utc
from orchestration.store.models import EventRow, RunRow

_COLUMNS = (EventRow.event_id, EventRow.name, EventRow.source, EventRow.payload,
            EventRow.received_at, EventRow.outcome, EventRow.trigger, EventRow.run_id,
            EventRow.reason)


@dataclass(frozen=True)
class EventRecord:
    """One row of the events table (``payload`` as stored: redacted)."""

    event_id: str
    name: str
    source: str
    payload: Any
    received_at: datetime
    outcome: str
    trigger: str | None = None
    run_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class RecordedEvent:
    """An event row as read back, with the status of the run it names (if any)."""

    record: EventRecord
    run_status: str | None
    workflow: str | None


class Events:
    """The events table of one results store."""

    def __init__(self, engine: Engine, reader: Engine) -> None:
        self._engine = engine  # the writer
        self._reader = reader

    def record(self, records: Sequence[EventRecord]) -> None:
        """Write event rows in one transaction."""
        if not records:
            return
        with self._engine.begin() as conn:
            conn.execute(insert(EventRow), [{
                "event_id": r.event_id, "name": r.name, "source": r.source,
                "payload": r.payload, "received_at": r.received_at, "outcome": r.outcome,
                "trigger": r.trigger, "run_id": r.run_id, "reason": r.reason,
            } for r in records])

    def recent(self, *, name: str | None = None, outcome: str | None = None,
               event_id: str | None = None, limit: int = 20) -> list[RecordedEvent]:
        """The newest event rows first (filtered by name, outcome or event id)."""
        query = (select(*_COLUMNS, RunRow.status, RunRow.workflow)
                 .outerjoin(RunRow, RunRow.id == EventRow.run_id)
                 .order_by(EventRow.received_at.desc(), EventRow.id.desc()).limit(limit))
        if name is not None:
            query = query.where(EventRow.name == name)
        if outcome is not None:
            query = query.where(EventRow.outcome == outcome)
        if event_id is not None:
            query = query.where(EventRow.event_id == event_id)
        with self._reader.connect() as conn:
            rows = conn.execute(query).all()
        return [RecordedEvent(_record(row), row.status, row.workflow) for row in rows]

    def count(self, *, name: str | None = None, outcome: str | None = None) -> int:
        """How many event rows (of this name, with this outcome)."""
        query = select(func.count()).select_from(EventRow)
        if name is not None:
            query = query.where(EventRow.name == name)
        if outcome is not None:
            query = query.where(EventRow.outcome == outcome)
        with self._reader.connect() as conn:
            return int(conn.execute(query).scalar() or 0)


def _record(row: Any) -> EventRecord:
    return EventRecord(
        event_id=row.event_id, name=row.name, source=row.source, payload=row.payload,
        received_at=as_utc(row.received_at) or row.received_at, outcome=row.outcome,
        trigger=row.trigger, run_id=row.run_id, reason=row.reason)
