"""A long-lived embedded process never strands a run.

The in-process broker drops the messages a stopped consumer had taken (kombu's memory
transport restores nothing), so the embedded worker must never restart a consumer
while runs are in flight: a queue that appears later gets a consumer of its own. A
consumer that dies anyway is replaced, and a reconciler thread re-dispatches runs that
still make no progress.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kombu.pools
import pytest
from celery import signals

from orchestration import RunHandle, RunStatus, default_orchestrator
from orchestration.app import Orchestrator
from orchestration.store.repository import PlannedStep
from orchestration.testing import embedded_orchestrator
from tests.support.polling import wait_until
from tests.unit.worker.embedded_workflows import define_agent, define_echo, define_retrying

AT_ONCE = 5  # runs submitted together, as the report had it
BATCHES = 40


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Orchestrator]:
    with embedded_orchestrator(tmp_path, log_level="WARNING") as orchestrator:
        yield orchestrator


def test_agent_runs_submitted_at_once_all_end_while_queues_appear(app: Orchestrator) -> None:
    agent = define_agent(app)
    handles: list[RunHandle] = []
    with ThreadPoolExecutor(AT_ONCE) as submitters:
        for batch in range(BATCHES):
            handles += submitters.map(lambda i: agent.submit(goal="g" * (i % 3 + 1)),
                                      range(AT_ONCE))
            if batch % 10 == 5:
                # A workflow on a queue nobody consumed yet, while agent runs are in
                # flight: it used to restart the one in-process consumer, dropping them.
                late = define_echo(app, f"late{batch}", f"late.{batch}")
                handles.append(late.submit(x=batch))
    results = [handle.wait(timeout=60) for handle in handles]
    stranded = [result.run_id for result in results if not result.status.is_terminal]
    assert stranded == []
    assert all(result.status is RunStatus.SUCCEEDED for result in results)
    joins = {result.outputs["join"] for result in results if "join" in result.outputs}
    assert joins == {"act/None", "None/ask"}


def test_a_new_queue_does_not_drop_a_step_waiting_to_retry(app: Orchestrator) -> None:
    attempts: list[int] = []
    retrying = define_retrying(app, backoff=4.0, attempts=attempts)
    app.embedded_worker()
    waiting = threading.Event()

    def on_received(request: Any = None, **_: Any) -> None:
        if request is not None and request.name == "retrying.flaky" and request.eta:
            waiting.set()  # the second attempt's message waits in the consumer's timer

    signals.task_received.connect(on_received, weak=False)
    try:
        handle = retrying.submit(x=7)
        assert waiting.wait(30), "the retry never reached the consumer"
        late = define_echo(app, "late", "late.queue")
        assert late.run(x=1, timeout=30).status is RunStatus.SUCCEEDED
    finally:
        signals.task_received.disconnect(on_received)
    result = handle.wait(timeout=30)
    assert result.status is RunStatus.SUCCEEDED and result.outputs == {"flaky": 7}
    assert attempts == [1, 2]


def test_a_queue_whose_consumer_died_is_consumed_again(app: Orchestrator) -> None:
    echo = define_echo(app, "echo", "echo.queue")
    assert echo.run(x=1, timeout=30).status is RunStatus.SUCCEEDED
    worker = app.embedded_worker()
    dead = worker._workers["echo.queue"].controller
    assert dead is not None
    dead.stop(in_sighandler=False, exitcode=1)  # as if its consumer had crashed
    wait_until(lambda: worker._workers["echo.queue"].controller is not dead,
               timeout=30, what="a replacement consumer")
    assert echo.run(x=2, timeout=30).outputs == {"echo": 2}


def test_the_embedded_process_reconciles_periodically(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with embedded_orchestrator(tmp_path, log_level="WARNING", reconcile_interval=0.05) as app:
        passes = threading.Semaphore(0)
        monkeypatch.setattr(app, "reconcile", lambda idle_seconds=None: passes.release())
        worker = app.embedded_worker()
        for _ in range(3):
            assert passes.acquire(timeout=30), "no reconciler pass"
        worker.stop()
        while passes.acquire(blocking=False):  # passes that overlapped the stop
            pass
        assert not passes.acquire(timeout=0.3), "the reconciler outlived its worker"


def test_a_run_whose_message_was_lost_still_ends(tmp_path: Path) -> None:
    with embedded_orchestrator(tmp_path, log_level="WARNING", reconcile_interval=0.2,
                               reconcile_after=0.5) as app:
        echo = define_echo(app, "echo", "echo.queue")
        assert echo.run(x=1, timeout=30).status is RunStatus.SUCCEEDED
        # A run written by this live process whose message never reached a consumer:
        # start-up recovery leaves it alone (it is this process's own run).
        compiled = echo.validate()
        run_id = str(uuid.uuid4())
        app.store.create_run(run_id, "echo", compiled.version, {"x": 5}, [
            PlannedStep(name, bound.spec.output, bound.queue, bound.spec.model,
                        bound.spec.critical) for name, bound in compiled.steps.items()])
        result = RunHandle(run_id, app.store).wait(timeout=60)
        assert result.status is RunStatus.SUCCEEDED and result.outputs == {"echo": 5}


@pytest.fixture
def fresh_broker_pools() -> Iterator[None]:
    """Undo what re-pointing the default orchestrator breaks (see test_testing.py)."""
    yield
    kombu.pools.reset()
    celery_app = default_orchestrator().celery
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


def test_a_replaced_consumer_keeps_the_default_process_beating(
        fresh_broker_pools: None, embedded_default: Orchestrator) -> None:
    echo = define_echo(embedded_default, f"beat_{uuid.uuid4().hex[:8]}", "beat.queue")
    assert echo.run(x=1, timeout=30).status is RunStatus.SUCCEEDED
    heartbeat = embedded_default.heartbeat
    assert heartbeat is not None
    worker = embedded_default.embedded_worker()
    dead = worker._workers["beat.queue"].controller
    assert dead is not None
    dead.stop(in_sighandler=False, exitcode=1)  # sends Celery's worker_shutdown signal
    wait_until(lambda: worker._workers["beat.queue"].controller is not dead,
               timeout=30, what="a replacement consumer")
    # The process is alive: other workers must not take it for dead and re-run its steps.
    assert embedded_default.heartbeat is heartbeat
    assert echo.run(x=2, timeout=30).outputs == {"echo": 2}
