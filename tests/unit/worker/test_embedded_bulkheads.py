"""Bulkheads on the embedded default: every queue has its own threads pool.

Steps hung on one queue must not hold up another queue's steps, as with one worker per
queue in production; pools are sized by ORCH_EMBEDDED_CONCURRENCY, per queue by
ORCH_EMBEDDED_QUEUE_CONCURRENCY.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from config.settings import Settings
from orchestration import RunStatus, StepStatus
from orchestration.testing import embedded_orchestrator
from tests.support.polling import wait_until
from tests.unit.worker.embedded_workflows import Gate, define_echo, define_hung

DEFAULT_THREADS = 2
SLOW_THREADS = 3
HUNG_RUNS = 8  # more than every thread the slow queue has, and than the default pool


@pytest.fixture
def bulkheads(tmp_path: Path) -> Iterator[SimpleNamespace]:
    gate = Gate()
    with embedded_orchestrator(tmp_path, log_level="WARNING", embedded_concurrency=DEFAULT_THREADS,
                               embedded_queue_concurrency={"model.slow": SLOW_THREADS}) as app:
        slow = define_hung(app, gate, "model.slow")
        fast = define_echo(app, "fast", "model.fast")
        try:
            yield SimpleNamespace(app=app, gate=gate, slow=slow, fast=fast)
        finally:
            gate.release.set()


def test_a_fast_step_runs_while_another_queue_is_full_of_hung_steps(
        bulkheads: SimpleNamespace) -> None:
    hung = [bulkheads.slow.submit(x=i) for i in range(HUNG_RUNS)]
    gate = bulkheads.gate
    # At least as many hung steps as one shared pool of ORCH_EMBEDDED_CONCURRENCY has threads.
    wait_until(lambda: gate.inside >= DEFAULT_THREADS, timeout=30, what="hung slow steps")

    result = bulkheads.fast.run(x=1, timeout=30)

    assert result.status is RunStatus.SUCCEEDED and result.outputs == {"echo": 1}
    # Ordering, not timing: the fast run ended while every slow run was still unfinished.
    assert not gate.release.is_set()
    assert all(not handle.status().is_terminal for handle in hung)
    gate.release.set()
    assert all(handle.wait(timeout=60).status is RunStatus.SUCCEEDED for handle in hung)


def test_a_queue_runs_as_many_steps_at_once_as_its_pool_has_threads(
        bulkheads: SimpleNamespace) -> None:
    gate = bulkheads.gate
    hung = [bulkheads.slow.submit(x=i) for i in range(HUNG_RUNS)]
    wait_until(lambda: gate.inside == SLOW_THREADS, timeout=30,
               what="the slow queue's threads all hung")
    pending = [handle.result() for handle in hung]
    assert sum(result.steps["slow"].status is StepStatus.PENDING
               for result in pending) == HUNG_RUNS - SLOW_THREADS
    gate.release.set()
    assert all(handle.wait(timeout=60).status is RunStatus.SUCCEEDED for handle in hung)
    assert gate.entered == HUNG_RUNS and gate.most_inside == SLOW_THREADS
    worker = bulkheads.app.embedded_worker()
    assert worker.concurrency("model.slow") == SLOW_THREADS
    assert worker.concurrency("model.fast") == DEFAULT_THREADS


@pytest.mark.parametrize("value, expected", [
    ("model.slow=4,model.fast=2", {"model.slow": 4, "model.fast": 2}),
    (" model.slow = 4 , ", {"model.slow": 4}),
    ("", {}),
])
def test_queue_concurrency_setting_is_parsed(value: str, expected: dict[str, int],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_EMBEDDED_QUEUE_CONCURRENCY", value)
    assert Settings().embedded_queue_concurrency == expected


@pytest.mark.parametrize("value, culprit", [
    ("model.slow", "'model.slow' is not queue=threads"),
    ("model.slow=0", "model.slow need at least 1 thread"),
    ("=3", "'=3' is not queue=threads"),
    ("model.slow=many", "model.slow"),
])
def test_bad_queue_concurrency_setting_names_the_culprit(
        value: str, culprit: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_EMBEDDED_QUEUE_CONCURRENCY", value)
    with pytest.raises(ValidationError, match="embedded_queue_concurrency") as error:
        Settings()
    assert culprit in str(error.value)
