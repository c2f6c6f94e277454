"""A step released by the reconciler counts one crash per delivery that died holding it,
not one per reconciler pass (found by tests/chaos/test_hosts.py: a worker cut off for a
minute made every pass count another crash, and runs failed as poison after one death).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestration.store.repository import PlannedStep, Store
from orchestration.store.workers import WorkerInfo

STEPS = [PlannedStep("a", "a", "q.a", None, True)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.ensure_schema()
    yield store
    store.dispose()


def _run(store: Store) -> str:
    return store.create_run(str(uuid.uuid4()), "wf", "v1", {"x": 1}, STEPS)


def _crashes(store: Store, run_id: str) -> int:
    return store.get_run(run_id).steps["a"].crashes


def test_passes_over_a_run_whose_redispatch_is_not_consumed_yet_count_one_crash(
        store: Store) -> None:
    run_id = _run(store)
    store.workers.beat(WorkerInfo("w-dead", "w@host", "host", 1, []), datetime.now(UTC))
    store.claim_step(run_id, "a", worker="w", task_id="t1", holder="w-dead")
    later = datetime.now(UTC) + timedelta(seconds=60)
    # Three reconciler passes; no worker consumes the re-dispatched message in between.
    assert all(store.workers.release_run(run_id, later) for _ in range(3))
    assert _crashes(store, run_id) == 1


def test_the_sweep_then_the_reconciler_count_one_crash(store: Store) -> None:
    run_id = _run(store)
    store.workers.beat(WorkerInfo("w-dead", "w@host", "host", 1, []), datetime.now(UTC))
    store.claim_step(run_id, "a", worker="w", task_id="t1", holder="w-dead")
    later = datetime.now(UTC) + timedelta(seconds=60)
    assert [r.run_id for r in store.workers.release_dead(later, ["wf"], later)] == [run_id]
    assert store.workers.release_run(run_id, later)
    assert _crashes(store, run_id) == 1


def test_each_delivery_that_dies_holding_the_step_counts(store: Store) -> None:
    run_id = _run(store)
    later = datetime.now(UTC) + timedelta(seconds=60)
    for n, holder in enumerate(("w-dead-1", "w-dead-2"), start=1):
        store.claim_step(run_id, "a", worker="w", task_id=f"t{n}", holder=holder)
        assert store.workers.release_run(run_id, later)
        assert _crashes(store, run_id) == n
