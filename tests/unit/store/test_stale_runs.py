"""The reconciler's scan: which pending/running runs made no progress since the cutoff."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from orchestration.store.models import RunRow, StepRow
from orchestration.store.repository import PlannedStep, Store

STEPS = [PlannedStep("a", "a", "default", None, True), PlannedStep("b", "b", "default", None,
                                                                     True)]
NOW = datetime.now(UTC)
OLD = NOW - timedelta(hours=1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.ensure_schema()
    yield store
    store.dispose()


def run(store: Store, status: str, *, created: datetime = OLD,
        steps: dict[str, tuple[datetime | None, datetime | None]] | None = None) -> str:
    """A run created at ``created`` whose steps were claimed/finished at the given times."""
    run_id = str(uuid.uuid4())
    store.create_run(run_id, "wf", "v1", {"x": 1}, STEPS)
    with store.engine.begin() as conn:
        conn.execute(update(RunRow).where(RunRow.id == run_id)
                     .values(status=status, created_at=created))
        for name, (started, finished) in (steps or {}).items():
            conn.execute(update(StepRow).where(StepRow.run_id == run_id, StepRow.name == name)
                         .values(started_at=started, finished_at=finished))
    return run_id


def test_only_idle_pending_and_running_runs_are_stale(store: Store) -> None:
    never_claimed = run(store, "pending")
    idle = run(store, "running", steps={"a": (OLD, OLD + timedelta(minutes=1)),
                                        "b": (OLD + timedelta(minutes=2), None)})
    claimed_lately = run(store, "running", steps={"a": (OLD, OLD), "b": (NOW, None)})
    finished_lately = run(store, "running", steps={"a": (OLD, NOW)})
    created_lately = run(store, "pending", created=NOW)
    done = run(store, "succeeded")
    waiting = run(store, "waiting")

    stale = {run_id for run_id, *_ in store.recovery.stale_runs(NOW - timedelta(minutes=5))}

    assert never_claimed in stale and idle in stale
    assert not stale & {claimed_lately, finished_lately, created_lately, done, waiting}


def test_a_stale_run_comes_with_its_workflow_version_and_inputs(store: Store) -> None:
    run_id = run(store, "running", steps={"a": (OLD, None)})

    assert store.recovery.stale_runs(NOW) == [(run_id, "wf", "v1", {"x": 1})]
