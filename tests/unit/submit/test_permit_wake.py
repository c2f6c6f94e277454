"""A waker that loses a permit race puts back every waiter it had marked, not just one.

Two processes release at once: the first waker marks three waiters woken, then finds the
permit taken by the other process. Every waiter it had not sent must wait again right
away (woken_at cleared), or they would sit marked until the 60 s stale sweep.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace

from sqlalchemy import select

from orchestration.core.clock import utcnow
from orchestration.execute.permits import LocalPermits
from orchestration.store.models import PermitWaitRow
from orchestration.store.permit_waits import PermitWait
from orchestration.store.repository import PlannedStep, Store
from orchestration.submit.permits import wake


class LosingPermits(LocalPermits):
    """Free permits are seen, but the first take for a waiter fails (another waker won)."""

    def take(self, scope: str, holder: str, limit: int) -> bool:
        return False


def test_every_marked_waiter_is_put_back_when_the_race_is_lost(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'w.db'}")
    store.ensure_schema()
    runs = [str(uuid.uuid4()) for _ in range(3)]
    for run_id in runs:
        store.create_run(run_id, "w", "v1", {}, [PlannedStep("s", "s", "q", None, True)])
    store.permit_waits.park_many([PermitWait(0, "wf:w", 1, run_id, None, run_id, None, 0)
                                  for run_id in runs], utcnow())
    host = SimpleNamespace(store=store, permits=LosingPermits(lease=30), workflows={})
    permits = host.permits
    assert permits.free("wf:w", 3) == 3
    assert wake(host, "wf:w", 3) == 0  # type: ignore[arg-type]
    with store.engine.connect() as conn:
        woken = conn.execute(select(PermitWaitRow.woken_at)).scalars().all()
    assert woken == [None, None, None]
    store.dispose()
