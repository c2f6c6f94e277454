"""Retention: delete finished runs and everything recorded about them, in small batches.

A batch is up to ``BATCH`` runs that ended before a cutoff, found through the
``finished_at`` index (no table scan per batch). Each batch is one short transaction:
the runs are re-checked and locked (still ended, still before the cutoff: a run resumed
meanwhile is kept), then every row that names them is deleted — steps, attempts, waits,
map chunks, permit waits, batch elements, stream rows, events — and the run rows last.
Tables are found from the models (every table with a ``run_id`` column), so a table
added later is pruned too; conversation memory has its own retention and is kept.
Runs pending, running or waiting are never selected.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from sqlalchemy import ColumnElement, Engine, Table, delete, func, select

from orchestration.core.status import TERMINAL_RUN_STATUSES
from orchestration.store.models import Base, CacheRow, RunRow

BATCH: Final = 500  # runs per transaction
KEPT_TABLES: Final = frozenset({"runs", "memory_turns", "memory_summaries"})
_ENDED = sorted(status.value for status in TERMINAL_RUN_STATUSES)


def run_tables() -> list[Table]:
    """Tables whose rows belong to a run (a ``run_id`` column), children first."""
    return [table for table in reversed(Base.metadata.sorted_tables)
            if "run_id" in table.c and table.name not in KEPT_TABLES]


@dataclass
class Pruned:
    """What a prune deleted (or, dry, would delete): rows per table."""

    runs: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)

    def add(self, other: Pruned) -> None:
        """Count another batch in."""
        self.runs.extend(other.runs)
        for table, count in other.rows.items():
            self.rows[table] = self.rows.get(table, 0) + count

    @property
    def total(self) -> int:
        """Rows of every table."""
        return sum(self.rows.values())


class Pruning:
    """Retention of one results store."""

    def __init__(self, engine: Engine, reader: Engine) -> None:
        self._engine = engine  # the writer
        self._reader = reader

    def _ended_before(self, before: datetime, workflows: Collection[str] | None,
                      exclude: Collection[str]) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = [RunRow.finished_at < before, RunRow.status.in_(_ENDED)]
        if workflows is not None:
            where.append(RunRow.workflow.in_(sorted(workflows)))
        if exclude:
            where.append(RunRow.workflow.not_in(sorted(exclude)))
        return where

    def candidates(self, before: datetime, *, workflows: Collection[str] | None = None,
                   exclude: Collection[str] = (), limit: int | None = None) -> list[str]:
        """Up to ``limit`` (``BATCH``) runs that ended before ``before``, oldest first."""
        query = (select(RunRow.id).where(*self._ended_before(before, workflows, exclude))
                 .order_by(RunRow.finished_at).limit(limit or BATCH))
        with self._reader.connect() as conn:
            return [row[0] for row in conn.execute(query)]

    def count(self, before: datetime, *, workflows: Collection[str] | None = None,
              exclude: Collection[str] = ()) -> Pruned:
        """What a prune would delete now (a dry run), rows per table."""
        ended = select(RunRow.id).where(*self._ended_before(before, workflows, exclude))
        counted = Pruned()
        with self._reader.connect() as conn:
            counted.runs = [row[0] for row in conn.execute(ended)]
            counted.rows["runs"] = len(counted.runs)
            for table in run_tables():
                counted.rows[table.name] = int(conn.execute(
                    select(func.count()).select_from(table)
                    .where(table.c.run_id.in_(ended.scalar_subquery()))).scalar_one())
        return counted

    def delete(self, run_ids: list[str], before: datetime) -> Pruned:
        """Delete these runs (those still ended before ``before``) and their rows."""
        pruned = Pruned()
        if not run_ids:
            return pruned
        with self._engine.begin() as conn:
            locked = select(RunRow.id).where(RunRow.id.in_(run_ids), RunRow.status.in_(_ENDED),
                                             RunRow.finished_at < before)
            if conn.dialect.name == "postgresql":
                locked = locked.with_for_update(skip_locked=True)
            ids = [row[0] for row in conn.execute(locked)]
            if not ids:
                return pruned
            for table in run_tables():
                deleted = conn.execute(delete(table).where(table.c.run_id.in_(ids))).rowcount
                pruned.rows[table.name] = int(deleted or 0)
            conn.execute(delete(RunRow).where(RunRow.id.in_(ids)))
            pruned.rows["runs"] = len(ids)
            pruned.runs = ids
        return pruned

    def prune_cache(self, before: datetime, now: datetime) -> int:
        """Delete cached step outputs written before ``before`` or already expired."""
        with self._engine.begin() as conn:
            deleted = conn.execute(delete(CacheRow).where(
                (CacheRow.created_at < before)
                | (CacheRow.expires_at.is_not(None) & (CacheRow.expires_at < now)))).rowcount
        return int(deleted or 0)
