"""Batching across runs (``batch_size=``) on Redis and PostgreSQL with real workers.

100 runs in batches of 10 make exactly 10 calls; a worker SIGKILLed while a batch forms
or while its call runs loses no element and records no step twice; a poisoned element
falls back alone while its neighbours succeed; ``batch_wait`` calls a partly filled
batch. The batched steps count their calls in Redis (support/workflows/batching.py);
the tests' workers beat every second and are dead after 4 s, so a killed worker's batch
is taken again quickly.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from itertools import pairwise

import pytest
from sqlalchemy import func, select

from orchestration import RunStatus, StepStatus, default_orchestrator
from orchestration.store.models import AttemptRow, BatchElementRow
from tests.integration.support.helpers import statuses, wait_until
from tests.integration.support.workflows.batching import (
    BATCH_QUEUE,
    POISON,
    SCORED,
    TIMED,
    after_key,
    calls_key,
    elements_key,
    hold_key,
    pid_key,
)
from tests.integration.support.workflows.common import _redis
from tests.support.workers import Worker, Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

MODULE = "tests.integration.support.workflows.batching"


@pytest.fixture
def batch_workers(extra_workers: Workers) -> Iterator[Workers]:
    """Workers that import the batching workflows, with a 1 s heartbeat."""
    extra_workers.env = {**extra_workers.env,
                         "ORCH_IMPORTS": f"{os.environ['ORCH_IMPORTS']},{MODULE}",
                         "ORCH_HEARTBEAT_INTERVAL": "1", "ORCH_WORKER_DEAD_AFTER": "4"}
    yield extra_workers


def _calls(tag: str) -> int:
    return int(_redis().get(calls_key(tag)) or 0)


def _elements(tag: str) -> list[list[int]]:
    return [json.loads(raw) for raw in _redis().lrange(elements_key(tag), 0, -1)]


def _buffered(status: str) -> int:
    with default_orchestrator().store.reader.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(BatchElementRow).where(
            BatchElementRow.step == SCORED.validate().steps["score"].spec.task_name,
            BatchElementRow.status == status)).scalar_one())


def _attempt_workers(run_id: str, step: str) -> list[str]:
    with default_orchestrator().store.reader.connect() as conn:
        return [str(worker) for worker in conn.execute(select(AttemptRow.worker).where(
            AttemptRow.run_id == run_id, AttemptRow.step_name == step)).scalars()]


def _kill(worker: Worker) -> None:
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait()


def test_a_hundred_runs_in_batches_of_ten_make_ten_calls(batch_workers: Workers) -> None:
    tag = uuid.uuid4().hex
    batch_workers.start("batching-a", [BATCH_QUEUE], concurrency=2)
    handles = SCORED.submit_many([{"tag": tag, "n": n} for n in range(100)])
    results = [handle.wait(timeout=120) for handle in handles]
    assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 100
    assert _calls(tag) == 10
    calls = _elements(tag)
    assert [len(call) for call in calls] == [10] * 10
    assert sorted(n for call in calls for n in call) == list(range(100))
    for n, result in enumerate(results):
        assert result.outputs == {"score": 2 * n, "after": 2 * n + 1}
        assert result.steps["score"].attempts == 1
    assert int(_redis().get(after_key(tag)) or 0) == 100


def test_a_worker_killed_while_a_batch_forms_loses_no_element(batch_workers: Workers) -> None:
    tag = uuid.uuid4().hex
    first = batch_workers.start("batching-forming-1", [BATCH_QUEUE], concurrency=2)
    handles = SCORED.submit_many([{"tag": tag, "n": n} for n in range(5)])
    # Five of ten buffered (a partly filled batch waits two minutes), then the worker dies.
    wait_until(lambda: _buffered("waiting") == 5, timeout=30, what="5 elements buffered")
    run = default_orchestrator().store.get_run(handles[0].run_id)
    assert run.status is RunStatus.WAITING and run.steps["score"].status is StepStatus.WAITING
    _kill(first)
    batch_workers.start("batching-forming-2", [BATCH_QUEUE], concurrency=2)
    handles += SCORED.submit_many([{"tag": tag, "n": n} for n in range(5, 10)])
    results = [handle.wait(timeout=60) for handle in handles]
    assert [r.outputs["score"] for r in results] == [2 * n for n in range(10)]
    assert _calls(tag) == 1
    assert sorted(_elements(tag)[0]) == list(range(10))


def test_a_worker_killed_mid_batch_call_loses_no_element_and_records_none_twice(
        batch_workers: Workers) -> None:
    tag = uuid.uuid4().hex
    _redis().set(hold_key(tag), 1, ex=300)
    first = batch_workers.start("batching-kill-1", [BATCH_QUEUE], concurrency=2)
    handles = SCORED.submit_many([{"tag": tag, "n": n} for n in range(10)])
    wait_until(lambda: _calls(tag) == 1, timeout=60, what="the batch call to start")
    assert _buffered("taken") == 10
    _kill(first)  # in the middle of the batch call
    _redis().delete(hold_key(tag))
    batch_workers.start("batching-kill-2", [BATCH_QUEUE], concurrency=2)
    results = [handle.wait(timeout=90) for handle in handles]
    for n, result in enumerate(results):
        assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
        assert result.outputs == {"score": 2 * n, "after": 2 * n + 1}
        assert result.steps["score"].attempts == 1
        # Recorded once, by the worker that took the batch again.
        workers = _attempt_workers(result.run_id, "score")
        assert len(workers) == 1 and workers[0].startswith("batching-kill-2@"), workers
    assert _calls(tag) == 2  # the killed call, then the call taken again
    assert int(_redis().get(after_key(tag)) or 0) == 10  # every run went on once
    assert _buffered("waiting") == _buffered("taken") == _buffered("done") == 0


def test_a_pool_process_killed_mid_batch_call_loses_no_element(batch_workers: Workers) -> None:
    tag = uuid.uuid4().hex
    _redis().set(hold_key(tag), 1, ex=300)
    worker = batch_workers.start("batching-child", [BATCH_QUEUE], concurrency=2)
    handles = SCORED.submit_many([{"tag": tag, "n": n} for n in range(10)])
    wait_until(lambda: _calls(tag) == 1, timeout=60, what="the batch call to start")
    child = int(_redis().get(pid_key(tag)) or 0)
    assert child and child != worker.process.pid
    # Only the pool process making the call dies (as the OOM killer would pick it): the
    # main process lives on and keeps beating, so the batch comes back when its lease,
    # no longer renewed, lapses (ORCH_WORKER_DEAD_AFTER, 4 s here).
    os.kill(child, signal.SIGKILL)
    _redis().delete(hold_key(tag))
    results = [handle.wait(timeout=90) for handle in handles]
    for n, result in enumerate(results):
        assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
        assert result.outputs == {"score": 2 * n, "after": 2 * n + 1}
        assert len(_attempt_workers(result.run_id, "score")) == 1  # recorded once
    assert _calls(tag) == 2
    assert worker.alive


def test_a_poisoned_element_falls_back_alone_and_its_neighbours_succeed(
        batch_workers: Workers) -> None:
    tag = uuid.uuid4().hex
    batch_workers.start("batching-poison", [BATCH_QUEUE], concurrency=2)
    values = [1, 2, 3, POISON, 5, 6, 7, 8, 9, 10]
    handles = SCORED.submit_many([{"tag": tag, "n": n} for n in values])
    results = {n: handle.wait(timeout=60) for n, handle in zip(values, handles, strict=True)}
    for n, result in results.items():
        step = result.steps["score"]
        if n == POISON:
            assert step.status is StepStatus.FALLBACK
            assert step.output == 0
            assert f"element {POISON} cannot be scored" in (step.error or "")
        else:
            assert step.status is StepStatus.SUCCEEDED, (n, step.error)
            assert step.output == 2 * n
        assert result.status is RunStatus.SUCCEEDED
    # Halved until the poisoned element was alone (10 -> 5 -> 3 or 2 -> ... -> 1, as the
    # elements happened to be ordered); every other element succeeded in exactly one call.
    calls = _elements(tag)
    poisoned = [call for call in calls if POISON in call]
    assert len(poisoned[0]) == 10 and poisoned[-1] == [POISON]
    for bigger, half in pairwise(poisoned):
        assert set(half) < set(bigger)
        assert len(half) in (len(bigger) // 2, len(bigger) - len(bigger) // 2)
    clean = [n for call in calls if POISON not in call for n in call]
    assert sorted(clean) == sorted(n for n in values if n != POISON)


def test_batch_wait_calls_a_partly_filled_batch(batch_workers: Workers) -> None:
    tag = uuid.uuid4().hex
    batch_workers.start("batching-timed", [BATCH_QUEUE], concurrency=2)
    handles = TIMED.submit_many([{"tag": tag, "n": n} for n in range(3)])
    results = [handle.wait(timeout=60) for handle in handles]
    assert [r.outputs["quick"] for r in results] == [0, 3, 6]
    assert _calls(tag) == 1
    assert sorted(_elements(tag)[0]) == [0, 1, 2]
