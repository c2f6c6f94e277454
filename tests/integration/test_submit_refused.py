"""A submit refused by the broker creates nothing; the client's retry runs the work once.

The broker is a ``redis-server`` of the test's own on a port where nothing listens yet
(the publish retry policy cut short so a refusal takes well under a second);
the server and a worker on it are started after the refused submits, as when Redis comes
back. The results DB is the session's PostgreSQL database.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestration import RunStatus, SubmitFailed, Workflow
from orchestration.app import Orchestrator
from orchestration.core.settings import Settings
from tests.integration.support.workflows import submit_refused as module
from tests.integration.support.workflows.submit_refused import IMPORTED_BY_WORKER, QUEUE, build
from tests.support.own_redis import OwnRedis, redis_server_or_skip
from tests.support.workers import Workers

pytestmark = [pytest.mark.postgres]

FAST_FAILURE = {"max_retries": 1, "interval_start": 0, "interval_step": 0.01,
                "interval_max": 0.01}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server of this test, not started yet: its port refuses connections."""
    redis_server_or_skip()
    server = OwnRedis(tmp_path)
    try:
        yield server
    finally:
        server.kill()


def submit_refused(wf: Workflow, attempts: int) -> None:
    """The client retries on the error; Redis is still down: nothing is created."""
    for _ in range(attempts):
        with pytest.raises(SubmitFailed, match="nothing was created") as info:
            wf.submit(text="t")
        assert info.value.remaining == ()


def test_a_refused_submit_creates_nothing_and_the_retry_runs_once(
        broker: OwnRedis, postgres_database: str, worker_logs: Path) -> None:
    url = broker.url
    # What refuses is the broker; the result backend is the session's Redis.
    app = Orchestrator(Settings(broker_url=url, result_backend=os.environ["ORCH_RESULT_BACKEND"],
                                database_url=postgres_database, imports=[]))
    app.celery.conf.update(task_publish_retry_policy=FAST_FAILURE,
                           broker_connection_timeout=0.5)
    wf = build(app)
    pool = Workers(worker_logs, env={**os.environ, "ORCH_BROKER_URL": url,
                                     "ORCH_IMPORTS": module.__name__,
                                     IMPORTED_BY_WORKER: "1"})
    try:
        submit_refused(wf, 3)
        assert app.store.list_runs(workflow=wf.name) == []

        broker.start()
        pool.start("it-refused", [QUEUE], pool="threads", concurrency=2)
        result = wf.submit(text="t").wait(timeout=60)  # the retry that gets through

        assert result.status is RunStatus.SUCCEEDED, result.error
        assert result.outputs["third"] == "third(second(t:1))"
        assert [run.run_id for run in app.store.list_runs(workflow=wf.name)] == [result.run_id]
        assert {name: step.deliveries for name, step in result.steps.items()} == {
            "first": 1, "second": 1, "third": 1}
        assert app.reconcile(idle_seconds=0).redispatched == []
    finally:
        pool.stop_all()
        app.shutdown()
