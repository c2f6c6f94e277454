"""Liveness: a results-DB outage is no crash, and a dead worker's steps come back fast.

- A PostgreSQL cluster of the test's own is stopped while a step runs: the worker keeps
  the finished step and records it when the DB answers (the body runs once, no crash is
  counted); a longer outage hands steps back to the broker and none is lost.
- A worker's main process is SIGKILLed mid-step: the heartbeat sweep of the next worker
  re-dispatches the run within seconds (not the visibility timeout or the reconciler).
- A step that ends its worker process every time is failed as a poison step, although
  each re-delivery is a new message.
- A cancelled run's step whose worker died is not run again when re-delivered.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from orchestration import RunStatus, StepStatus, cancel, default_orchestrator, get_run, reconcile
from orchestration.app import Orchestrator
from orchestration.core.clock import utcnow
from orchestration.core.results import RunResult
from orchestration.store.workers import WorkerInfo
from tests.integration.support.helpers import backdate_run, wait_until
from tests.integration.support.workflows.common import _redis, calls
from tests.integration.support.workflows.liveness import (
    BACKLOG_QUEUE,
    EXIT_QUEUE,
    LIVENESS_QUEUE,
    OUTAGE_QUEUE,
    backlog,
    define_outage,
    exits,
    liveness,
    started_key,
)
from tests.support.own_postgres import OwnPostgres, own_postgres
from tests.support.services import queue_lists, waiting_messages
from tests.support.workers import Worker, Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

FAST_BEATS = {"ORCH_HEARTBEAT_INTERVAL": "1", "ORCH_WORKER_DEAD_AFTER": "4"}
OUTAGE_S = 5.0


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **FAST_BEATS, **extra}


def _started(run_id: str, step: str) -> list[str]:
    return [pid.decode() for pid in _redis().lrange(started_key(run_id, step), 0, -1)]


def _terminal(app: Orchestrator | None, run_id: str, timeout: float) -> RunResult:
    def probe() -> RunResult | None:
        run = app.store.get_run(run_id) if app is not None else get_run(run_id)
        return run if run.status.is_terminal else None

    return wait_until(probe, timeout=timeout, what=f"run {run_id} to end", interval=0.2)


# -- results-DB outages ------------------------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[OwnPostgres]:
    with own_postgres() as server:
        yield server


@pytest.fixture
def outage_app(cluster: OwnPostgres) -> Iterator[Orchestrator]:
    """An orchestrator of the test process on the cluster (broker: the session's Redis)."""
    from orchestration.core.settings import Settings

    redis_url = os.environ["ORCH_BROKER_URL"]  # the session's DB (set by the conftest)
    app = Orchestrator(Settings(broker_url=redis_url, result_backend=redis_url,
                                redis_url=redis_url, database_url=cluster.url))
    app.store.ensure_schema()
    try:
        yield app
    finally:
        app.shutdown()


def _outage_worker(extra_workers: Workers, cluster: OwnPostgres, label: str,
                   **extra: str) -> Worker:
    extra_workers.env = _env(ORCH_DATABASE_URL=cluster.url, **extra)
    return extra_workers.start(label, [OUTAGE_QUEUE], pool="threads", concurrency=4)


def test_short_db_outages_mid_step_are_not_crashes(
        outage_app: Orchestrator, cluster: OwnPostgres, extra_workers: Workers) -> None:
    """Three runs, the DB stopped as each body starts: each body runs once, 0 crashes."""
    worker = _outage_worker(extra_workers, cluster, "outage-short")
    workflow = define_outage(outage_app)
    for index in range(3):
        run_id = workflow.submit(ticket=f"T-{index}").run_id
        wait_until(lambda run_id=run_id: _started(run_id, "slow_write"), timeout=30,
                   what="the step to start")
        cluster.stop()
        time.sleep(OUTAGE_S)  # the outage itself: the step finishes while the DB is down
        cluster.start()
        run = _terminal(outage_app, run_id, timeout=60)
        step = run.steps["slow_write"]
        assert run.status is RunStatus.SUCCEEDED, (run.error, worker.log_tail())
        assert (step.crashes, step.attempts, calls(run_id, "slow_write")) == (0, 1, 1)
    assert "results database unreachable" in worker.log_path.read_text()


def test_long_db_outage_hands_steps_back_and_loses_none(
        outage_app: Orchestrator, cluster: OwnPostgres, extra_workers: Workers) -> None:
    """Longer than the worker's hold: steps go back to the broker; every run succeeds."""
    worker = _outage_worker(extra_workers, cluster, "outage-long", ORCH_DB_OUTAGE_HOLD="1")
    workflow = define_outage(outage_app)
    run_ids = [workflow.submit(ticket=f"L-{index}").run_id for index in range(6)]
    wait_until(lambda: _started(run_ids[0], "slow_write"), timeout=30, what="a step to start")
    cluster.stop()
    # Long enough for running steps to finish, give up holding, and be handed back twice.
    time.sleep(OUTAGE_S + 8)
    cluster.start()
    runs = [_terminal(outage_app, run_id, timeout=120) for run_id in run_ids]
    assert [run.status for run in runs] == [RunStatus.SUCCEEDED] * len(runs), worker.log_tail()
    assert [run.steps["slow_write"].crashes for run in runs] == [0] * len(runs)
    log = worker.log_path.read_text()
    assert "step handed back to the broker" in log
    assert "results database reachable again" in log


def test_worker_started_during_an_outage_says_so(
        cluster: OwnPostgres, extra_workers: Workers) -> None:
    cluster.stop()
    extra_workers.env = _env(ORCH_DATABASE_URL=cluster.url)
    worker = extra_workers.start("outage-start", [OUTAGE_QUEUE], pool="threads",
                                 concurrency=1)
    wait_until(lambda: "results database unreachable at start-up"
               in worker.log_path.read_text(), timeout=20, what="the start-up warning")
    cluster.start()


# -- dead workers ------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_dead_main_process_steps_are_swept_without_the_reconciler(
        pool: str, extra_workers: Workers) -> None:
    """SIGKILL the worker mid-step, start another: the run ends within seconds."""
    extra_workers.env = _env()
    first = extra_workers.start(f"live-a-{pool}", [LIVENESS_QUEUE], pool=pool, concurrency=2)
    run_id = liveness.submit(ticket=f"K-{pool}").run_id
    wait_until(lambda: _started(run_id, "hang_once"), timeout=30, what="hang_once to start")
    os.kill(first.process.pid, signal.SIGKILL)  # the main process only
    first.process.wait()
    extra_workers.start(f"live-b-{pool}", [LIVENESS_QUEUE], pool=pool, concurrency=2)
    # Visibility timeout 3600 s and reconcile_after 600 s: only the sweep can do this.
    run = _terminal(None, run_id, timeout=60)
    with contextlib.suppress(ProcessLookupError):  # an orphaned prefork child
        os.killpg(first.process.pid, signal.SIGKILL)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.outputs["last"] == f"K-{pool}-done".upper()
    assert run.steps["hang_once"].crashes == 1
    assert calls(run_id, "hang_once") == 2


def test_a_step_that_kills_its_worker_becomes_a_poison_step(extra_workers: Workers) -> None:
    """os._exit under threads: each re-dispatch is a new message, crashes still add up."""
    extra_workers.env = _env(ORCH_MAX_CRASHES="2")
    run_id = exits.submit(ticket="X").run_id
    deadline = time.monotonic() + 90
    starts = 0
    while not get_run(run_id).status.is_terminal:
        alive = [w for w in extra_workers.started if w.alive]
        if not alive:  # a supervisor's job: restart the worker that died
            starts += 1
            assert starts <= 4, "the poison step was delivered again and again"
            extra_workers.start(f"exit-{starts}", [EXIT_QUEUE], pool="threads",
                                concurrency=2)
        assert time.monotonic() < deadline, "the run never ended"
        time.sleep(0.2)
    run = get_run(run_id)
    step = run.steps["exit_process"]
    assert run.status is RunStatus.FAILED
    assert step.error_type == "PoisonStep", step.error
    assert calls(run_id, "exit_process") == 2


def test_cancelled_runs_step_is_not_run_again_after_its_worker_died(
        extra_workers: Workers) -> None:
    extra_workers.env = _env()
    extra_workers.start("live-cancel", [LIVENESS_QUEUE], pool="prefork", concurrency=1)
    run_id = liveness.submit(ticket="C").run_id
    pids = wait_until(lambda: _started(run_id, "hang_once"), timeout=30,
                      what="hang_once to start")
    cancel(run_id)
    os.kill(int(pids[0]), signal.SIGKILL)  # the pool child: the message is re-delivered
    run = wait_until(lambda: (r := get_run(run_id)).steps["hang_once"].status
                     is StepStatus.CANCELLED and r, timeout=30,
                     what="the re-delivered step to be refused")
    assert run.status is RunStatus.CANCELLED
    assert calls(run_id, "hang_once") == 1
    assert run.steps["last"].status is StepStatus.CANCELLED


# -- the reconciler's backlog check ------------------------------------------------------

STALE_S = 12 * 3600.0  # only runs this test moved a day back are stale


def _waiting(client: Any, queue: str) -> int:
    return waiting_messages(client, queue)


def test_a_backlog_that_no_live_worker_consumes_is_no_progress(redis_service: Any) -> None:
    store = default_orchestrator().store
    run_id = backlog.submit(ticket="B").run_id
    consumer = WorkerInfo("backlog-consumer", "backlog@test", "test", 1, [BACKLOG_QUEUE])
    try:
        wait_until(lambda: _waiting(redis_service, BACKLOG_QUEUE) == 1, timeout=20,
                   what="the run's message on the unserved queue")
        backdate_run(run_id)
        # Messages wait on the queue, but no live worker consumes it: they never drain.
        assert run_id in reconcile(idle_seconds=STALE_S).redispatched
        wait_until(lambda: _waiting(redis_service, BACKLOG_QUEUE) == 2, timeout=20,
                   what="the re-dispatched message")
        # Once a live worker consumes the queue, the backlog may be the run's turn coming.
        store.workers.beat(consumer, utcnow())
        assert run_id not in reconcile(idle_seconds=STALE_S).redispatched
    finally:
        store.workers.stopped(consumer.instance, utcnow())
        redis_service.delete(*queue_lists(BACKLOG_QUEUE))
        cancel(run_id)
