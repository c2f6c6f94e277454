"""Real workers, both pools: a poison message or a step's BaseException never stops a worker.

1. Raw messages published with kombu on a step queue, with valid task headers and a
   body Celery cannot unpack (``{"a": 1}``, ``[1, 2, 3, 4, 5]``, ``null``, not JSON...),
   for a step task, each of the engine's own tasks, a Celery built-in and an unknown
   name: each is rejected with an ERROR log naming its task and id, and the worker goes
   on serving the queue. Before, the first such message made the worker exit, and its
   re-delivery killed the next one.
2. Steps raising ``SystemExit``, ``KeyboardInterrupt`` or a bare ``BaseException`` end
   ``failed`` after their retries (or take their fallback), every attempt recorded, no
   crash counted, and the worker serves the next run. Before, under threads they were
   never acknowledged and the worker stopped consuming; under prefork a bare
   BaseException left the step ``running``.

Each pool's worker serves a queue of its own (``REL_QUEUES``), started by this module.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestration import RunStatus, StepStatus, default_orchestrator
from orchestration.compile.canvas import FINALIZE_TASK
from orchestration.worker.engine_tasks import DISPATCH_RUNS_TASK, EXPIRE_WAITS_TASK, RECONCILE_TASK
from tests.integration.support.workflows.common import calls
from tests.integration.support.workflows.reliability import (
    FATAL_KINDS,
    FATAL_TYPES,
    FLOWS,
    REL_QUEUES,
)
from tests.support.services import waiting_messages
from tests.support.workers import Worker, Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

POOLS = sorted(REL_QUEUES)
RUNS_PER_KIND = 3  # 9 fatal runs: far more than the 2 slots of each worker
BODIES = ['{"a": 1}', "[1, 2, 3, 4, 5]", '"a string"', "null", "[5, {}, {}]",
          "[[], [1], {}]", "[[], {}, null]", "[[], {}, []]", "this is not json"]
ENGINE_TASKS = [FINALIZE_TASK, "orchestration.map_collect", "orchestration.child_done",
                EXPIRE_WAITS_TASK, RECONCILE_TASK, DISPATCH_RUNS_TASK]


@pytest.fixture(scope="module")
def rel_workers(workers: Workers, worker_logs: Path) -> Iterator[dict[str, Worker]]:
    """One prefork and one threads worker (2 slots each), each on its own queue."""
    pool = Workers(worker_logs)
    try:
        started = {name: pool.start(f"it-rel-{name}", [REL_QUEUES[name]], pool=name,
                                    concurrency=2, wait=False) for name in POOLS}
        for worker in started.values():
            pool.wait_ready(worker)
        yield started
    finally:
        pool.stop_all()


def _serves(worker: Worker, pool: str, text: str) -> None:
    assert worker.alive, worker.log_tail()
    result = FLOWS[pool].healthy.submit(text=text).wait(timeout=30)
    assert result.status is RunStatus.SUCCEEDED, (result.error, worker.log_tail())
    assert result.outputs == {"ping": f"pong:{text}"}
    assert result.steps["ping"].worker == worker.nodename


def _publish(queue: str, body: str, headers: dict[str, object]) -> None:
    with default_orchestrator().celery.connection_for_write() as conn:
        conn.Producer().publish(body.encode(), routing_key=queue, exchange="",
                                content_type="application/json", content_encoding="utf-8",
                                headers=headers, serializer=None)


def _rejections(worker: Worker) -> dict[str, int]:
    """How many times each task id was logged as a rejected malformed message."""
    seen: dict[str, int] = {}
    for line in worker.log_path.read_text(errors="replace").splitlines():
        if "malformed task message rejected" not in line or not line.startswith("{"):
            continue
        task_id = str(json.loads(line).get("task_id"))
        seen[task_id] = seen.get(task_id, 0) + 1
    return seen


@pytest.mark.parametrize("pool", POOLS)
def test_malformed_messages_are_rejected_and_the_worker_serves_on(
        rel_workers: dict[str, Worker], redis_service: redis.Redis, pool: str) -> None:
    worker, queue = rel_workers[pool], REL_QUEUES[pool]
    step_task = f"{FLOWS[pool].healthy.name}.ping"
    sent: dict[str, str] = {}
    for task in [step_task, *ENGINE_TASKS, "celery.chord_unlock", "no_such.task"]:
        for body in BODIES:
            task_id = f"poison-{uuid.uuid4()}"
            sent[task_id] = task
            _publish(queue, body, {"task": task, "id": task_id, "lang": "py"})
    # Headers Celery cannot use: no id (known and unknown task), no task header at all.
    good_body = json.dumps([[], {}, {"callbacks": None, "errbacks": None, "chain": None,
                                     "chord": None}])
    _publish(queue, good_body, {"task": step_task})
    _publish(queue, '{"task": "no_such.task"}', {})

    _serves(worker, pool, f"after-poison-{pool}")  # queued behind every poison message

    rejected = _rejections(worker)
    assert {task_id: rejected.get(task_id) for task_id in sent} == dict.fromkeys(sent, 1)
    assert rejected.get("None", 0) >= 2  # the two without an id
    assert waiting_messages(redis_service, queue) == 0  # rejected for good, not re-queued
    log = worker.log_path.read_text(errors="replace")
    assert "Unrecoverable error" not in log
    assert "Trying to re-establish the connection" not in log
    assert worker.alive


@pytest.mark.parametrize("pool", POOLS)
def test_base_exceptions_fail_their_steps_and_free_the_slots(
        rel_workers: dict[str, Worker], pool: str) -> None:
    worker, flows = rel_workers[pool], FLOWS[pool]
    fatal = {kind: [flows.fatal.submit(kind=kind) for _ in range(RUNS_PER_KIND)]
             for kind in FATAL_KINDS}
    rescued = {kind: flows.rescued.submit(kind=kind) for kind in FATAL_KINDS}

    for kind, handles in fatal.items():
        for handle in handles:
            result = handle.wait(timeout=60)
            step = result.steps["blow_up"]
            assert result.status is RunStatus.FAILED, (kind, result.error)
            assert (step.status, step.error_type) == (StepStatus.FAILED, FATAL_TYPES[kind])
            assert step.attempts == 2  # retries=1 applied
            assert [a["error_type"] for a in step.attempt_log] == [FATAL_TYPES[kind]] * 2
            assert step.crashes == 0 and step.deliveries == 1
            assert calls(result.run_id, "blow_up") == 2
    for kind, handle in rescued.items():
        result = handle.wait(timeout=60)
        assert result.status is RunStatus.SUCCEEDED, (kind, result.error)
        step = result.steps["blow_up"]
        assert (step.status, step.output) == (StepStatus.FALLBACK, f"rescued:{kind}")
        assert step.error_type == FATAL_TYPES[kind]
        assert result.outputs["then"] == f"then:rescued:{kind}"

    _serves(worker, pool, f"after-fatal-{pool}")
    assert "exited with" not in worker.log_path.read_text(errors="replace")  # no child died
