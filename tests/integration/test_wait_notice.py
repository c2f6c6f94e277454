"""RunHandle.wait with real workers and Redis: woken by the run's completion notice.

Each test counts the status reads of the wait. Woken by a notice it reads the status
before blocking, then reads the run once (the safety net is set to 30 s); polling every few
ms would read it dozens of times during the runs used here (0.2 s and more). A lost
notice, or a listener that cannot reach Redis, still ends the wait (the safety net, or
polling).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from orchestration import RunStatus, default_orchestrator
from orchestration.core import results
from orchestration.core.results import RunHandle
from orchestration.store.completion_redis import RedisCompletions
from orchestration.store.repository import Store
from tests.integration.support.workflows.common import (
    _redis,
    sleep_release_key,
    timeout_prefork,
    uneven,
)

pytestmark = [pytest.mark.workers]
MOST_READS = 1  # before blocking; after the notice the run itself is read, once
UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.fixture
def store() -> Store:
    store = default_orchestrator().store
    assert isinstance(store.completions, RedisCompletions)
    return store


@pytest.fixture
def reads(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The run ids of every status read made through the store during the test; the
    safety net's re-reads are made rare, so only a notice ends a wait early."""
    monkeypatch.setattr(results, "SAFETY_NET_SECONDS", 30.0)
    seen: list[str] = []
    original = store.run_status

    def run_status(run_id: str) -> RunStatus:
        seen.append(run_id)
        return original(run_id)

    monkeypatch.setattr(store, "run_status", run_status)
    yield seen


def wait(handle: RunHandle, reads: list[str]) -> tuple[Any, int]:
    before = len(reads)
    result = handle.wait(timeout=60)
    return result, len(reads) - before


def test_a_finished_run_wakes_the_waiter(store: Store, reads: list[str]) -> None:
    published = store.completions.published  # type: ignore[attr-defined]
    result, count = wait(uneven.submit(), reads)
    assert result.status is RunStatus.SUCCEEDED
    assert count <= MOST_READS
    assert store.completions.published == published  # type: ignore[attr-defined]
    # (the notice came from the worker's process: this one published nothing)


def test_a_failed_run_wakes_the_waiter(reads: list[str]) -> None:
    handle = timeout_prefork.submit()  # its step times out twice: the run fails (~1 s)
    try:
        result, count = wait(handle, reads)
    finally:
        _redis().rpush(sleep_release_key(handle.run_id), "go", "go")
    assert result.status is RunStatus.FAILED
    assert count <= MOST_READS


def test_a_cancelled_run_wakes_the_waiter(reads: list[str]) -> None:
    handle = timeout_prefork.submit()
    before = len(reads)

    def cancel() -> None:  # once the wait has read the status and blocked a while
        while len(reads) == before:
            threading.Event().wait(0.005)
        threading.Event().wait(0.2)
        RunHandle(handle.run_id, default_orchestrator().store).cancel()

    canceller = threading.Thread(target=cancel)
    canceller.start()
    try:
        result, count = wait(handle, reads)
    finally:
        canceller.join(30)
        _redis().rpush(sleep_release_key(handle.run_id), "go", "go")
    assert result.status is RunStatus.CANCELLED
    assert count <= MOST_READS


def test_a_lost_notice_is_caught_by_the_safety_net(store: Store, reads: list[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "SAFETY_NET_SECONDS", 0.2)
    completions = store.completions
    assert isinstance(completions, RedisCompletions)
    woken: list[str] = []
    monkeypatch.setattr(completions, "wake", woken.append)  # every notice lost
    result, count = wait(uneven.submit(), reads)
    assert result.status is RunStatus.SUCCEEDED
    assert woken  # the notice came, and was dropped
    assert count >= 2  # found by a re-read, not by the notice


def test_without_redis_the_listener_falls_back_to_polling(
        store: Store, reads: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    unreachable = RedisCompletions(UNREACHABLE)
    monkeypatch.setattr(store, "completions", unreachable)
    try:
        watch = unreachable.watch("nobody")
        assert not watch.live
        watch.__exit__(None, None, None)
        result, count = wait(uneven.submit(), reads)
    finally:
        unreachable.close()
    assert result.status is RunStatus.SUCCEEDED
    assert count > MOST_READS  # polled
