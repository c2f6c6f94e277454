"""Retention on PostgreSQL while runs keep coming: exactly the aged finished runs go.

Runs of a 3-step workflow finish on the session's workers; some are aged (finished_at
moved 40 days back). A prune in small batches (7 runs each) runs while another thread
keeps submitting runs of the same workflow: every aged run and every row naming it (a
count over each table with a run_id) is gone, and nothing else — the runs submitted
during the prune and the recent ones all finish with their rows intact.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from orchestration import RunHandle, RunStatus, default_orchestrator
from orchestration.core.clock import utcnow
from orchestration.store import pruning
from orchestration.store.models import RunRow
from orchestration.store.pruning import run_tables
from orchestration.submit.retention import prune_runs
from tests.integration.support.workflows.common import routing

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]


def _rows(run_ids: list[str]) -> dict[str, int]:
    store = default_orchestrator().store
    with store.engine.connect() as conn:
        counts = {table.name: int(conn.execute(select(func.count()).select_from(table).where(
            table.c.run_id.in_(run_ids))).scalar_one()) for table in run_tables()}
        counts["runs"] = int(conn.execute(select(func.count()).select_from(RunRow).where(
            RunRow.id.in_(run_ids))).scalar_one())
    return counts


def test_prune_in_batches_while_submissions_continue(monkeypatch: pytest.MonkeyPatch) -> None:
    orch = default_orchestrator()
    handles = [routing.submit(text=f"ticket {n} about billing") for n in range(36)]
    assert all(h.wait(timeout=60).status is RunStatus.SUCCEEDED for h in handles)
    aged = [h.run_id for h in handles[:28]]
    recent = [h.run_id for h in handles[28:]]
    with orch.store.engine.begin() as conn:
        conn.execute(update(RunRow).where(RunRow.id.in_(aged))
                     .values(finished_at=utcnow() - timedelta(days=40)))
    before = _rows(aged)
    assert before["steps"] == 3 * 28 and before["step_attempts"] >= 3 * 28

    during: list[RunHandle] = []
    stop = threading.Event()

    def keep_submitting() -> None:
        while not stop.is_set() and len(during) < 200:
            during.append(routing.submit(text="a new ticket"))

    load = threading.Thread(target=keep_submitting)
    monkeypatch.setattr(pruning, "BATCH", 7)  # four batches for the 28 aged runs
    load.start()
    try:
        pruned = prune_runs(orch, older_than=30 * 86400)
    finally:
        stop.set()
        load.join(60)
    assert sorted(pruned.runs) == sorted(aged)
    assert pruned.rows["runs"] == 28 and pruned.rows["steps"] == 3 * 28
    assert all(count == 0 for count in _rows(aged).values()), _rows(aged)
    assert during, "the load submitted nothing while the prune ran"
    for handle in during:
        assert handle.wait(timeout=120).status is RunStatus.SUCCEEDED
    kept = recent + [h.run_id for h in during]
    rows = _rows(kept)
    assert rows["runs"] == len(kept) and rows["steps"] == 3 * len(kept)
