"""Remove runs whose submit failed on the broker, unless a worker already started them.

A submit writes the run rows first and publishes their messages second. When the
publish fails, the rows are deleted in the same call so that neither the reconciler nor
a retrying client ever runs them twice (README, "Submitting runs"). A message that did
get through before the failure finds no run and runs nothing; a run a worker already
claimed from such a message is left for the caller to cancel.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, delete, select

from orchestration.core.status import RunStatus
from orchestration.store.models import RunRow, StepRow

_CHUNK = 500  # ids per statement (SQLite's bound-parameter limit is far above)


def discard_unstarted(engine: Engine, run_ids: Sequence[str]) -> list[str]:
    """Delete the runs still ``pending`` (no step claimed); returns the ids not deleted.

    The first claim of a run moves it to ``running`` in the claim's transaction, so
    ``pending`` means no step has started. Step rows are locked first, in the order a
    claim locks them (step, then run), so a concurrent claim waits instead of
    deadlocking; it then finds no run, and runs nothing.
    """
    kept: list[str] = []
    for start in range(0, len(run_ids), _CHUNK):
        chunk = list(run_ids[start:start + _CHUNK])
        with engine.begin() as conn:
            conn.execute(select(StepRow.id).where(StepRow.run_id.in_(chunk))
                         .order_by(StepRow.id).with_for_update())
            deleted = set(conn.execute(
                select(RunRow.id)
                .where(RunRow.id.in_(chunk), RunRow.status == RunStatus.PENDING.value)
                .with_for_update()).scalars())
            if deleted:
                conn.execute(delete(StepRow).where(StepRow.run_id.in_(deleted)))
                conn.execute(delete(RunRow).where(RunRow.id.in_(deleted)))
        kept.extend(run_id for run_id in chunk if run_id not in deleted)
    return kept
