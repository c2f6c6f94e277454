"""Workflow versions in the results DB: what live workers carry, and parked step messages.

A step message names the version of its run's workflow. A worker whose definition of
that workflow has another version does not run it: it parks the message here (a
``version_waits`` row) and acknowledges it. Workers advertise the versions they carry in
their heartbeat row (``workers.workflows``: ``{workflow: [version, ...]}``); the heartbeat
of a worker carrying a parked message's version takes the message and sends it to a
queue of that version, which only its carriers consume. Rows parked longer than the grace
period with no carrier are taken by any worker, which fails their runs saying why.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, or_, select, tuple_, update

from orchestration.store.models import RunRow, VersionWaitRow, WorkerRow


@dataclass(frozen=True)
class VersionWait:
    """One parked step message."""

    run_id: str
    workflow: str
    version: str
    step: str
    queue: str
    message: dict[str, Any]
    parked_by: str
    created_at: datetime | None = None
    id: int = 0


class VersionWaits:
    """Version queries of one results store."""

    def __init__(self, engine: Engine, reader: Engine) -> None:
        self._engine = engine  # the writer
        self._reader = reader

    def park(self, wait: VersionWait, now: datetime) -> None:
        """Record a parked message (``wait.id`` and ``created_at`` are ignored)."""
        with self._engine.begin() as conn:
            conn.execute(insert(VersionWaitRow), [{
                "run_id": wait.run_id, "workflow": wait.workflow, "version": wait.version,
                "step_name": wait.step, "queue": wait.queue, "message": wait.message,
                "parked_by": wait.parked_by, "created_at": now}])

    def take(self, carried: Mapping[str, str], queues: Collection[str],
             limit: int = 100) -> list[VersionWait]:
        """Delete and return messages of these (workflow, version)s on these queues.

        Each row is returned to one caller only (deleted in the caller's transaction);
        the caller sends each message on, or parks it again if it cannot.
        """
        pairs = [(name, version) for name, version in carried.items()]
        if not pairs:
            return []
        # A run to re-dispatch (queue "") goes to any carrier of its version.
        where = and_(tuple_(VersionWaitRow.workflow, VersionWaitRow.version).in_(pairs),
                     or_(VersionWaitRow.queue.in_(list(queues)), VersionWaitRow.queue == ""))
        return self._take(where, limit)

    def any_expired(self, before: datetime) -> bool:
        """True when some message was parked before ``before``."""
        with self._reader.connect() as conn:
            return conn.execute(select(VersionWaitRow.id).where(
                VersionWaitRow.created_at < before).limit(1)).first() is not None

    def expired(self, before: datetime, carried: Mapping[str, Collection[str]],
                limit: int = 100) -> list[VersionWait]:
        """Delete and return messages parked before ``before`` (their grace is over)
        whose version is not in ``carried`` (a live carrier will take those)."""
        where = VersionWaitRow.created_at < before
        pairs = [(name, version) for name, versions in carried.items() for version in versions]
        if pairs:
            where = and_(where, tuple_(VersionWaitRow.workflow,
                                       VersionWaitRow.version).not_in(pairs))
        return self._take(where, limit)

    def _take(self, where: Any, limit: int) -> list[VersionWait]:
        with self._engine.begin() as conn:
            ids = [row.id for row in conn.execute(
                select(VersionWaitRow.id).where(where).order_by(VersionWaitRow.id)
                .limit(limit)).all()]
            if not ids:
                return []
            rows = conn.execute(delete(VersionWaitRow).where(VersionWaitRow.id.in_(ids))
                                .returning(*VersionWaitRow.__table__.c)).all()
        return sorted((_wait(row) for row in rows), key=lambda wait: wait.id)

    def has_run(self, run_id: str) -> bool:
        """True when something of the run is parked for its version."""
        with self._reader.connect() as conn:
            return conn.execute(select(VersionWaitRow.id).where(
                VersionWaitRow.run_id == run_id).limit(1)).first() is not None

    def of_run(self, run_id: str) -> list[VersionWait]:
        """A run's parked messages, oldest first (what ``orchestrate show`` prints)."""
        with self._reader.connect() as conn:
            rows = conn.execute(select(*VersionWaitRow.__table__.c)
                                .where(VersionWaitRow.run_id == run_id)
                                .order_by(VersionWaitRow.id)).all()
        return [_wait(row) for row in rows]

    def waiting(self) -> list[tuple[str, str, int, datetime]]:
        """(workflow, version, parked messages, oldest) per version that has some."""
        with self._reader.connect() as conn:
            rows = conn.execute(select(VersionWaitRow.workflow, VersionWaitRow.version,
                                       func.count(), func.min(VersionWaitRow.created_at))
                                .group_by(VersionWaitRow.workflow, VersionWaitRow.version)
                                .order_by(VersionWaitRow.workflow, VersionWaitRow.version)
                                ).all()
        return [(row[0], row[1], int(row[2]), row[3]) for row in rows]

    def carriers(self, alive_since: datetime) -> dict[str, set[str]]:
        """{workflow: versions} carried by workers that beat since ``alive_since``."""
        with self._reader.connect() as conn:
            rows = conn.execute(select(WorkerRow.workflows).where(
                WorkerRow.beat_at >= alive_since, WorkerRow.stopped_at.is_(None))).all()
        carried: dict[str, set[str]] = {}
        for (workflows,) in rows:
            for name, versions in dict(workflows or {}).items():
                carried.setdefault(str(name), set()).update(str(v) for v in versions or ())
        return carried


def _wait(row: Any) -> VersionWait:
    return VersionWait(row.run_id, row.workflow, row.version, row.step_name, row.queue,
                       dict(row.message or {}), row.parked_by, row.created_at, row.id)


def set_run_version(engine: Engine, run_id: str, version: str) -> None:
    """Move a run to another workflow version (``resume --upgrade``)."""
    with engine.begin() as conn:
        conn.execute(update(RunRow).where(RunRow.id == run_id).values(workflow_version=version))
