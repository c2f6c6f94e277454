"""The reconciler: runs whose messages were lost are re-dispatched, or failed with a reason.

Each test strands a run the way a broker restarted empty does: its step message sits on
``LOST_QUEUE`` (served by no worker yet) and the test drops it. The run's progress is then
moved a day into the past, and the reconciler is asked for runs idle for ``STALE_S``
(12 h): only this test's runs qualify, whatever else the session left pending.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from celery.result import AsyncResult
from sqlalchemy import update

import orchestration
from orchestration import RunStatus, StepStatus, default_orchestrator, get_run
from orchestration.core.settings import Settings
from orchestration.store.models import RunRow, StepRow
from orchestration.store.versions import VersionWaits
from orchestration.worker.engine_tasks import RECONCILE_TASK
from tests.integration.support.helpers import statuses, wait_for_step, wait_until
from tests.integration.support.workflows import reconcile as rw
from tests.integration.support.workflows.common import calls
from tests.support.processes import ROOT
from tests.support.services import waiting_messages
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

STALE_S = 12 * 3600.0  # the reconciler's idle threshold in these tests
BACKDATE = timedelta(days=1)  # how far a stranded run's progress is moved back
BEAT_ENTRY = "orchestration-reconcile"
BEAT_INTERVAL_S = 60.0  # config/celery.py: a pass every minute


def _queued(client: redis.Redis, queue: str) -> int:
    return waiting_messages(client, queue)


def _lose_messages(client: redis.Redis, queue: str, expected: int) -> None:
    """Wait for ``expected`` messages on ``queue``, then drop them (a broker that lost them)."""
    wait_until(lambda: _queued(client, queue) == expected, timeout=20,
               what=f"{expected} message(s) on {queue}")
    with default_orchestrator().celery.connection_for_write() as conn:
        assert conn.default_channel.queue_purge(queue) == expected
    assert _queued(client, queue) == 0


def _backdate(run_id: str, **changes: str) -> None:
    """Move the run's creation and its steps' progress a day back; apply column changes."""
    with default_orchestrator().store.engine.begin() as conn:
        conn.execute(update(RunRow).where(RunRow.id == run_id)
                     .values(created_at=RunRow.created_at - BACKDATE, **changes))
        conn.execute(update(StepRow).where(StepRow.run_id == run_id)
                     .values(started_at=StepRow.started_at - BACKDATE,
                             finished_at=StepRow.finished_at - BACKDATE))


def _strand(client: redis.Redis, workflow: orchestration.Workflow, **inputs: str) -> str:
    """Submit a run whose only message is then lost; returns its id."""
    run_id = workflow.submit(**inputs).run_id
    _lose_messages(client, rw.LOST_QUEUE, 1)
    return run_id


@pytest.fixture
def lost_queue_worker(workers: Workers, worker_logs: Path) -> Iterator[Workers]:
    """Start (in the test, once its messages are lost) a worker for LOST_QUEUE and BEAT_QUEUE.

    Its reconciler threshold is STALE_S, so a reconcile pass it runs touches only the
    runs a test moved a day back.
    """
    env = dict(os.environ, ORCH_RECONCILE_AFTER=str(STALE_S))
    pool = Workers(worker_logs, env=env)
    try:
        yield pool
    finally:
        pool.stop_all()


# -- failure branches: nothing re-dispatched, the run failed with a reason ----------------------


def _assert_failed_unrecoverable(run_id: str, client: redis.Redis, *names: str) -> str:
    run = get_run(run_id)
    assert run.status is RunStatus.FAILED, (run.error, statuses(run))
    assert run.error_type == "Unrecoverable", run.error
    assert run.finished_at is not None
    assert run.error is not None
    for name in names:
        assert name in run.error, run.error
    # Nothing was sent again and no step ran.
    assert _queued(client, rw.LOST_QUEUE) == 0
    assert all(step.status is StepStatus.PENDING for step in run.steps.values()), statuses(run)
    assert all(calls(run_id, step) == 0 for step in run.steps)
    return run.error


def test_stale_run_of_a_workflow_not_defined_here_is_failed(
    workers: Workers, redis_service: redis.Redis,
) -> None:
    run_id = _strand(redis_service, rw.stranded, ticket=uuid.uuid4().hex)
    gone = f"it_rec_gone_{uuid.uuid4().hex[:8]}"
    _backdate(run_id, workflow=gone)

    done = orchestration.reconcile(idle_seconds=STALE_S)

    assert (done.redispatched, done.failed) == ([], [run_id])
    error = _assert_failed_unrecoverable(run_id, redis_service, gone)
    assert "not defined in this process" in error
    # Failed once: a second pass finds nothing to do.
    again = orchestration.reconcile(idle_seconds=STALE_S)
    assert (again.redispatched, again.failed) == ([], [])


def test_stale_run_of_another_version_waits_for_a_worker_carrying_it(
    workers: Workers, redis_service: redis.Redis,
) -> None:
    """Not re-dispatched with this version's steps, not failed: left, visibly, for a
    worker of its version (docs/upgrades.md); ORCH_VERSION_GRACE fails it if none comes."""
    run_id = _strand(redis_service, rw.stranded, ticket=uuid.uuid4().hex)
    current = rw.stranded.validate().version
    older = "0" * len(current)
    assert older != current
    _backdate(run_id, workflow_version=older)

    done = orchestration.reconcile(idle_seconds=STALE_S)

    assert (done.redispatched, done.failed) == ([run_id], [])
    store = default_orchestrator().store
    [wait] = VersionWaits(store.engine, store.reader).of_run(run_id)
    assert (wait.workflow, wait.version, wait.step) == (rw.stranded.name, older, "")
    assert get_run(run_id).status in (RunStatus.PENDING, RunStatus.RUNNING)
    # It waits: a second pass leaves it alone.
    again = orchestration.reconcile(idle_seconds=STALE_S)
    assert run_id not in again.redispatched + again.failed


def test_stale_run_with_inputs_stored_redacted_is_failed_naming_them(
    workers: Workers, redis_service: redis.Redis,
) -> None:
    run_id = _strand(redis_service, rw.secret, ticket=uuid.uuid4().hex, api_key="k" * 24)
    assert get_run(run_id).inputs["api_key"] != "k" * 24  # secrets are never stored
    _backdate(run_id)

    done = orchestration.reconcile(idle_seconds=STALE_S)

    # Re-dispatching would hand the step '[REDACTED]' instead of the key it was given.
    assert (done.redispatched, done.failed) == ([], [run_id])
    _assert_failed_unrecoverable(run_id, redis_service, "api_key")


def test_fresh_run_is_left_alone(workers: Workers, redis_service: redis.Redis) -> None:
    run_id = _strand(redis_service, rw.stranded, ticket=uuid.uuid4().hex)

    done = orchestration.reconcile(idle_seconds=STALE_S)

    assert run_id not in done.redispatched + done.failed
    assert get_run(run_id).status is RunStatus.PENDING
    assert _queued(redis_service, rw.LOST_QUEUE) == 0
    default_orchestrator().store.finish_run(run_id, RunStatus.CANCELLED, error="test done")


# -- re-dispatch ----------------------------------------------------------------------------


def test_stale_run_is_redispatched_and_its_completed_step_is_not_rerun(
    workers: Workers, redis_service: redis.Redis, lost_queue_worker: Workers,
) -> None:
    ticket = uuid.uuid4().hex[:12]
    handle = rw.half_done.submit(ticket=ticket)
    run_id = handle.run_id
    wait_for_step(run_id, "first")
    _lose_messages(redis_service, rw.LOST_QUEUE, 1)  # second's message
    lost_queue_worker.start("it-rec-lost", [rw.LOST_QUEUE], pool="threads", concurrency=2)
    _backdate(run_id)
    stranded = get_run(run_id)
    assert statuses(stranded) == {"first": "succeeded", "second": "pending"}
    assert stranded.status is RunStatus.RUNNING

    done = orchestration.reconcile(idle_seconds=STALE_S)

    assert (done.redispatched, done.failed) == ([run_id], [])
    result = handle.wait(timeout=60)
    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.outputs == {"first": f"first:{ticket}", "second": f"second:first:{ticket}"}
    # The completed step was not run again: its counter and its record did not move.
    assert (calls(run_id, "first"), calls(run_id, "second")) == (1, 1)
    before, after = stranded.steps["first"], result.steps["first"]
    assert (after.attempts, after.deliveries) == (1, 1)
    assert (after.started_at, after.finished_at) == (before.started_at, before.finished_at)
    assert (result.steps["second"].attempts, result.steps["second"].deliveries) == (1, 1)
    assert result.steps["second"].worker == lost_queue_worker.started[0].nodename
    # Once finished, the run is not stale any more.
    again = orchestration.reconcile(idle_seconds=STALE_S)
    assert run_id not in again.redispatched + again.failed


# -- the beat-scheduled pass ------------------------------------------------------------------

# What `celery -A orchestration beat` does when the entry is due: build the scheduler's
# entries from the app's beat_schedule and apply the entry. Run in a process of its own,
# like beat, whose default queue (where the entry's task goes) is BEAT_QUEUE.
_BEAT_SENDS = """
import json
from celery.beat import Scheduler
from orchestration import default_orchestrator

scheduler = Scheduler(default_orchestrator().celery)
entry = scheduler.schedule[%r]
result = scheduler.apply_async(entry)
print(json.dumps({"id": result.id, "task": entry.task,
                  "every": entry.schedule.run_every.total_seconds()}))
"""


def test_beat_schedule_has_the_reconcile_entry() -> None:
    entry = default_orchestrator().celery.conf.beat_schedule[BEAT_ENTRY]
    shipped_idle = Settings.model_fields["reconcile_after"].default

    assert entry["task"] == RECONCILE_TASK
    assert entry["schedule"] == BEAT_INTERVAL_S
    # Passes come often within the shipped idle threshold: a lost run waits about that long.
    assert shipped_idle >= 5 * BEAT_INTERVAL_S


def test_beat_sent_reconcile_redispatches_a_stranded_run(
    workers: Workers, redis_service: redis.Redis, lost_queue_worker: Workers,
) -> None:
    ticket = uuid.uuid4().hex[:12]
    run_id = _strand(redis_service, rw.stranded, ticket=ticket)
    worker = lost_queue_worker.start("it-rec-beat", [rw.LOST_QUEUE, rw.BEAT_QUEUE],
                                     pool="threads", concurrency=2)
    _backdate(run_id)

    beat = subprocess.run(
        [sys.executable, "-c", _BEAT_SENDS % BEAT_ENTRY], cwd=ROOT, capture_output=True,
        text=True, timeout=60, check=False,
        env=dict(lost_queue_worker.env, ORCH_DEFAULT_QUEUE=rw.BEAT_QUEUE))
    assert beat.returncode == 0, beat.stderr[-2000:]
    sent = json.loads(beat.stdout.strip().splitlines()[-1])
    assert (sent["task"], sent["every"]) == (RECONCILE_TASK, BEAT_INTERVAL_S)

    # The worker ran one reconcile pass with its own threshold (ORCH_RECONCILE_AFTER); its
    # return value is not kept in the result backend, so the pass shows by what it did:
    # nothing else re-sends a run whose message was lost.
    AsyncResult(sent["id"], app=default_orchestrator().celery).get(timeout=60)
    result = orchestration.RunHandle(run_id, default_orchestrator().store).wait(timeout=60)
    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.outputs == {"only": f"only:{ticket}"}
    assert calls(run_id, "only") == 1
    assert result.steps["only"].worker == worker.nodename
    log = worker.log_path.read_text(errors="replace")
    assert f"Task {RECONCILE_TASK}[{sent['id']}] received" in log
    assert f"Task {RECONCILE_TASK}[{sent['id']}] succeeded" in log
