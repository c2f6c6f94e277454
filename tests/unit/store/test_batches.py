"""The batch buffer (store/batches.py): elements buffered once per run, batches taken when
full or due, taken again when their holder died or their lease ran out, recorded elements
sent on (again, if their sender died)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from orchestration import RunStatus, StepStatus
from orchestration.core.clock import utcnow
from orchestration.store.batches import Batches, Taken
from orchestration.store.repository import PlannedStep, StepOutcome, Store
from orchestration.store.workers import WorkerInfo

STEPS = [PlannedStep("score", "score", "q", None, True)]
STEP = "resumes.score"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.ensure_schema()
    yield store
    store.dispose()


@pytest.fixture
def buffer(store: Store) -> Batches:
    return Batches(store.engine, store.reader)


def joined(store: Store, buffer: Batches, value: int, now: datetime) -> tuple[str, int]:
    run_id = store.create_run(str(uuid.uuid4()), "resumes", "v1", {"x": value}, STEPS)
    store.claim_step(run_id, "score", worker="w", task_id=f"t{value}", holder="h0")
    waiting = buffer.join(STEP, run_id, "score", kwargs={"x": value},
                          resume={"task": "resumes.score", "n": value}, prior_attempts=0,
                          claimed_at=now, now=now)
    return run_id, waiting


def take(buffer: Batches, now: datetime, *, size: int = 3, wait: float = 10.0,
         holder: str = "h1", lease: float = 60.0,
         alive_since: datetime | None = None) -> Taken | None:
    return buffer.take(STEP, size=size, wait=wait, now=now, holder=holder, lease=lease,
                       alive_since=alive_since or now - timedelta(seconds=30))


def test_joining_buffers_once_per_run_and_shows_the_run_waiting(store: Store,
                                                                buffer: Batches) -> None:
    now = utcnow()
    run_id, waiting = joined(store, buffer, 1, now)
    assert waiting == 1
    assert store.get_run(run_id).status is RunStatus.WAITING
    assert store.get_run(run_id).steps["score"].status is StepStatus.WAITING
    # The same element delivered again (a redelivered message) is not buffered twice.
    again = buffer.join(STEP, run_id, "score", kwargs={"x": 1}, resume={"n": "again"},
                        prior_attempts=0, claimed_at=now, now=now)
    assert again == 1
    assert buffer.counts(STEP) == {"waiting": 1}


def test_a_batch_is_taken_when_full_or_when_its_oldest_element_is_due(
        store: Store, buffer: Batches) -> None:
    now = utcnow()
    for value in range(2):
        joined(store, buffer, value, now)
    assert take(buffer, now) is None  # 2 of 3, not due yet
    joined(store, buffer, 2, now)
    joined(store, buffer, 3, now)
    full = take(buffer, now)
    assert full is not None
    assert [e.kwargs["x"] for e in full.elements] == [0, 1, 2]  # the oldest first
    assert take(buffer, now) is None  # one left, not due
    late = take(buffer, now + timedelta(seconds=10.5))
    assert late is not None and [e.kwargs["x"] for e in late.elements] == [3]
    assert buffer.counts(STEP) == {"taken": 4}


def test_a_batch_whose_holder_died_or_whose_lease_ran_out_is_taken_again(
        store: Store, buffer: Batches) -> None:
    now = utcnow()
    for value in range(3):
        joined(store, buffer, value, now)
    store.workers.beat(WorkerInfo("h1", "w1", "host", 1, ()), now)
    first = take(buffer, now, holder="h1")
    assert first is not None
    later = now + timedelta(seconds=5)
    # h1 beats: its batch is not taken from it while the lease runs.
    store.workers.beat(WorkerInfo("h1", "w1", "host", 1, ()), later)
    assert take(buffer, later, holder="h2", alive_since=later - timedelta(seconds=30)) is None
    # h1 stops beating: after the dead-after window its batch goes to another holder.
    dead = now + timedelta(seconds=40)
    again = take(buffer, dead, holder="h2", alive_since=dead - timedelta(seconds=30))
    assert again is not None and again.batch_id != first.batch_id
    assert [e.id for e in again.elements] == [e.id for e in first.elements]
    # A live holder whose lease ran out loses it too.
    store.workers.beat(WorkerInfo("h2", "w2", "host", 2, ()), dead)
    expired = dead + timedelta(seconds=61)
    third = take(buffer, expired, holder="h3", alive_since=dead)
    assert third is not None and [e.id for e in third.elements] == [e.id for e in first.elements]


def test_elements_already_recorded_are_only_sent_on(store: Store, buffer: Batches) -> None:
    now = utcnow()
    recorded, _ = joined(store, buffer, 0, now)
    joined(store, buffer, 1, now)
    joined(store, buffer, 2, now)
    assert store.record_step(recorded, "score", StepOutcome(StepStatus.SUCCEEDED, output=5))
    taken = take(buffer, now)
    assert taken is not None
    assert [e.run_id for e in taken.settled] == [recorded]
    assert [e.kwargs["x"] for e in taken.elements] == [1, 2]


def test_done_elements_free_their_runs_and_unsent_ones_are_sent_again(
        store: Store, buffer: Batches) -> None:
    now = utcnow()
    runs = [joined(store, buffer, value, now)[0] for value in range(3)]
    taken = take(buffer, now)
    assert taken is not None
    for run_id in runs:
        store.record_step(run_id, "score", StepOutcome(StepStatus.SUCCEEDED, output=1))
    buffer.done([e.id for e in taken.elements], now=now, lease=60)
    assert all(store.get_run(r).status is RunStatus.RUNNING for r in runs)
    assert buffer.unsent(now + timedelta(seconds=30), lease=60) == []
    resent = buffer.unsent(now + timedelta(seconds=61), lease=60)
    assert sorted(e.run_id for e in resent) == sorted(runs)
    buffer.forget([e.id for e in resent])
    assert buffer.counts(STEP) == {}


def test_due_steps_and_next_due(store: Store, buffer: Batches) -> None:
    now = utcnow()
    assert buffer.next_due(STEP, 10, now) is None
    joined(store, buffer, 0, now)
    assert buffer.next_due(STEP, 10, now) == pytest.approx(10, abs=0.01)
    assert buffer.due_steps({STEP: 10}, now=now, alive_since=now) == []
    assert buffer.due_steps({STEP: 10}, now=now + timedelta(seconds=11),
                            alive_since=now) == [STEP]


def test_a_batch_whose_call_broke_off_goes_back_to_the_buffer(store: Store,
                                                              buffer: Batches) -> None:
    now = utcnow()
    for value in range(3):
        joined(store, buffer, value, now)
    taken = take(buffer, now)
    assert taken is not None
    assert buffer.release(taken.batch_id, holder="other") == 0  # only its holder
    assert buffer.release(taken.batch_id, holder="h1") == 3
    again = take(buffer, now, holder="h2")
    assert again is not None and [e.id for e in again.elements] == [
        e.id for e in taken.elements]


def test_a_batch_s_steps_are_recorded_in_one_call_each_at_most_once(store: Store,
                                                                    buffer: Batches) -> None:
    now = utcnow()
    runs = [joined(store, buffer, value, now)[0] for value in range(3)]
    assert store.record_step(runs[1], "score", StepOutcome(StepStatus.SUCCEEDED, output=-1))
    recorded = store.record_steps(
        [(run_id, "score", StepOutcome(StepStatus.SUCCEEDED, output=n, cost_usd=0.5), now)
         for n, run_id in enumerate(runs)], worker="w")
    assert recorded == [True, False, True]
    outputs = [store.get_run(run_id).steps["score"].output for run_id in runs]
    assert outputs == [0, -1, 2]
    assert [store.get_run(run_id).cost_usd for run_id in runs] == [0.5, 0.0, 0.5]
