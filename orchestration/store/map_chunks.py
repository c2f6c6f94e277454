"""Map chunk results parked in the results DB until the map's collector reads them.

A big map's chunks write their elements' results here (``map_chunks``, one row per chunk)
and send the collector a small summary instead, so the chord's join message stays small
at 10,000 elements. The collector reads the rows of its map in one query and drops them
once the map step is recorded: they are intermediate.

A chunk writes its row only while the map step is not terminal, under a lock on the
step's row: a chunk delivered again after the collector recorded the map (its worker was
killed after its write) leaves nothing behind, and two deliveries of one chunk overwrite
one row instead of adding a second.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Engine, Table, delete, insert, select

from orchestration.core.status import CLAIMABLE_STEP_STATUSES
from orchestration.store.models import MapChunkRow, StepRow

chunks = cast(Table, MapChunkRow.__table__)
steps = cast(Table, StepRow.__table__)
_CLAIMABLE = frozenset(status.value for status in CLAIMABLE_STEP_STATUSES)


@dataclass(frozen=True)
class ChunkResults:
    """One chunk's results as stored: each element's output (None if it failed) and
    whether it succeeded."""

    results: list[Any]
    ok: list[bool]


class MapChunks:
    """The parked chunk results of one results store."""

    def __init__(self, engine: Engine, reader: Engine) -> None:
        self._engine = engine  # the writer
        self._reader = reader

    def put(self, run_id: str, step: str, start: int, results: list[Any],
            ok: list[bool]) -> bool:
        """Write (or overwrite) the results of the chunk starting at ``start``.

        False, and nothing written, when the map step is terminal already (its collector
        ran) or does not exist. Overwriting is a delete and an insert under the lock on
        the step's row, which every delivery of the map's chunks and its record take:
        the same on PostgreSQL and SQLite, and two deliveries of one chunk never race.
        """
        with self._engine.begin() as conn:
            status = conn.execute(
                select(steps.c.status).where(steps.c.run_id == run_id, steps.c.name == step)
                .with_for_update()).scalar()
            if status not in _CLAIMABLE:
                return False
            key = (chunks.c.run_id == run_id, chunks.c.step == step, chunks.c.start == start)
            conn.execute(delete(chunks).where(*key))
            conn.execute(insert(chunks).values(run_id=run_id, step=step, start=start,
                                               results=results, ok=ok))
        return True

    def load(self, run_id: str, step: str, starts: Iterable[int]) -> dict[int, ChunkResults]:
        """The stored chunks of a map among ``starts``, by start (one query)."""
        wanted = set(starts)
        with self._reader.connect() as conn:
            rows = conn.execute(select(chunks.c.start, chunks.c.results, chunks.c.ok).where(
                chunks.c.run_id == run_id, chunks.c.step == step)).all()
        return {row.start: ChunkResults(list(row.results), list(row.ok))
                for row in rows if row.start in wanted}

    def drop(self, run_id: str, step: str) -> int:
        """Delete every stored chunk of a map; returns how many there were."""
        with self._engine.begin() as conn:
            result = conn.execute(delete(chunks).where(chunks.c.run_id == run_id,
                                                       chunks.c.step == step))
        return int(result.rowcount or 0)
