"""RunHandle.wait is woken by the run's completion notice, not by polling the results DB.

Each test counts the status reads a wait makes: woken by a notice it reads the status
once before blocking, then reads the run once, however long the run takes; polling
would read it every few milliseconds.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestration import StepContext, Workflow
from orchestration.core import results
from orchestration.core.completion import LocalCompletions
from orchestration.core.results import RunHandle
from orchestration.core.status import RunStatus, StepStatus
from orchestration.store.repository import PlannedStep, RunFinish, StepOutcome, Store
from orchestration.testing import embedded_orchestrator

STEPS = [PlannedStep("a", "a", "default", None, True)]
RUN_TAKES = 0.2
MOST_READS = 1  # before blocking; after the notice the run itself is read, once


class CountingStore:
    """A store whose status reads are counted."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.completions = store.completions
        self.reads = 0

    def run_status(self, run_id: str) -> RunStatus:
        self.reads += 1
        return self.store.run_status(run_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.fixture(autouse=True)
def _rare_safety_net(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a notice can end a wait early (the safety net re-reads after 30 s)."""
    monkeypatch.setattr(results, "SAFETY_NET_SECONDS", 30.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.ensure_schema()
    store.completions = LocalCompletions(complete=True)
    yield store
    store.dispose()


def wait_while(store: Store, end: Any) -> tuple[RunHandle, CountingStore, Any]:
    """Wait for a new run while another thread ends it once the wait has read its status."""
    run_id = store.create_run(str(uuid.uuid4()), "wf", "v1", {}, STEPS)
    counting = CountingStore(store)
    handle = RunHandle(run_id, counting)  # type: ignore[arg-type]
    read_once = threading.Event()
    original = counting.run_status

    def run_status(rid: str) -> RunStatus:
        status = original(rid)
        read_once.set()
        return status

    counting.run_status = run_status  # type: ignore[method-assign]

    def finisher() -> None:
        read_once.wait(30)
        threading.Event().wait(RUN_TAKES)  # a poller would read the status many times meanwhile
        end(run_id)

    thread = threading.Thread(target=finisher)
    thread.start()
    try:
        result = handle.wait(timeout=30)
    finally:
        thread.join()
    return handle, counting, result


@pytest.mark.parametrize("how", ["finish_run", "record_step", "cancel_run"])
def test_every_way_a_run_ends_wakes_its_waiter(store: Store, how: str) -> None:
    def end(run_id: str) -> None:
        if how == "finish_run":
            store.finish_run(run_id, RunStatus.FAILED, error="boom")
        elif how == "record_step":
            store.record_step(run_id, "a", StepOutcome(StepStatus.SUCCEEDED, output=1),
                              finish=RunFinish(RunStatus.SUCCEEDED))
        else:
            store.cancel_run(run_id)

    _, counting, result = wait_while(store, end)
    assert result.status.is_terminal
    assert counting.reads <= MOST_READS


def test_without_notices_the_wait_polls(store: Store) -> None:
    store.completions = LocalCompletions(complete=False)  # a separate worker, no Redis
    _, counting, result = wait_while(
        store, lambda run_id: store.finish_run(run_id, RunStatus.SUCCEEDED))
    assert result.status is RunStatus.SUCCEEDED
    assert counting.reads > MOST_READS  # polled every few ms meanwhile


def test_a_watch_is_released_after_the_wait(store: Store) -> None:
    _, _, result = wait_while(store, lambda run_id: store.finish_run(run_id,
                                                                     RunStatus.SUCCEEDED))
    assert result.status is RunStatus.SUCCEEDED
    assert store.completions.watching() == []  # type: ignore[attr-defined]


def test_the_embedded_worker_wakes_the_caller(tmp_path: Path) -> None:
    with embedded_orchestrator(tmp_path, redis_url=None) as orch:
        wf = Workflow("wake_embedded", app=orch)
        release = threading.Event()

        @wf.task
        def slow(ctx: StepContext) -> str:
            release.wait(30)
            threading.Event().wait(RUN_TAKES)
            return "done"

        handle = wf.submit()
        counting = CountingStore(orch.store)
        waiting = RunHandle(handle.run_id, counting)  # type: ignore[arg-type]
        original = counting.run_status

        def run_status(rid: str) -> RunStatus:
            status = original(rid)
            release.set()  # the step ends only once the wait has read the status
            return status

        counting.run_status = run_status  # type: ignore[method-assign]
        result = waiting.wait(timeout=30)
        assert result.status is RunStatus.SUCCEEDED
        assert counting.reads <= MOST_READS
