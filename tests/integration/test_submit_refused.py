"""A submit refused by the broker creates nothing; the client's retry runs the work once.

The broker is a ``redis-server`` of the test's own on a port where nothing listens yet
(the publish retry policy cut short so a refusal takes well under a second);
the server and a worker on it are started after the refused submits, as when Redis comes
back. The results DB is the session's PostgreSQL database.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestration import RunStatus, SubmitFailed, Workflow
from orchestration.app import Orchestrator
from orchestration.core.settings import Settings
from tests.integration.submit_refused_workflows import IMPORTED_BY_WORKER, QUEUE, build
from tests.integration.workers import Workers
from tests.support.services import service_missing

pytestmark = [pytest.mark.postgres]

FAST_FAILURE = {"max_retries": 1, "interval_start": 0, "interval_step": 0.01,
                "interval_max": 0.01}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def port() -> Iterator[int]:
    if shutil.which("redis-server") is None:
        service_missing("integration", "redis-server", "PATH", FileNotFoundError("redis-server"))
    yield free_port()


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A redis-server of this test on ``port`` (no persistence), once it answers."""
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"redis-server on port {port} did not start") from None
            time.sleep(0.05)
        finally:
            client.close()


def submit_refused(wf: Workflow, attempts: int) -> None:
    """The client retries on the error; Redis is still down: nothing is created."""
    for _ in range(attempts):
        with pytest.raises(SubmitFailed, match="nothing was created") as info:
            wf.submit(text="t")
        assert info.value.remaining == ()


def test_a_refused_submit_creates_nothing_and_the_retry_runs_once(
        port: int, postgres_database: str, tmp_path: Path, worker_logs: Path) -> None:
    url = f"redis://127.0.0.1:{port}/0"
    # What refuses is the broker; the result backend is the session's Redis.
    app = Orchestrator(Settings(broker_url=url, result_backend=os.environ["ORCH_RESULT_BACKEND"],
                                database_url=postgres_database, imports=[]))
    app.celery.conf.update(task_publish_retry_policy=FAST_FAILURE,
                           broker_connection_timeout=0.5)
    wf = build(app)
    server: subprocess.Popen[bytes] | None = None
    pool = Workers(worker_logs, env={**os.environ, "ORCH_BROKER_URL": url,
                                     "ORCH_IMPORTS": "tests.integration.submit_refused_workflows",
                                     IMPORTED_BY_WORKER: "1"})
    try:
        submit_refused(wf, 3)
        assert app.store.list_runs(workflow=wf.name) == []

        server = start_redis(port, tmp_path)
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
        if server is not None:
            server.kill()
            server.wait()
        app.shutdown()
