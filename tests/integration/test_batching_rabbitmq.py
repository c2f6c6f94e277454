"""Batching across runs over RabbitMQ: 20 runs with ``batch_size=10`` make two calls.

Workers and the submitter use a virtual host of this test's own on the machine's RabbitMQ
(deleted at the end); the call counters stay in the session's Redis and the runs are
read back from the session's PostgreSQL database. Skipped without RabbitMQ (failing
loudly when ``CI`` is set), like test_rabbitmq.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import amqp
import pytest
import redis

from orchestration import RunHandle, RunStatus, default_orchestrator
from tests.integration.support.workflows import batching as bw
from tests.integration.support.workflows.common import _redis
from tests.support.processes import ROOT, child_env
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

HOST = os.environ.get("ORCH_TEST_AMQP_HOST", "127.0.0.1:5672")
CTL_TIMEOUT_S = 30.0
_SUBMIT = """
import json, sys
from tests.integration.support.workflows import batching as bw
print(json.dumps([h.run_id for h in bw.SCORED.submit_many(json.loads(sys.argv[1]))]))
"""


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and this test needs RabbitMQ. {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def vhost(redis_service: redis.Redis) -> Iterator[str]:
    """A virtual host of this module on the machine's RabbitMQ, deleted at the end."""
    connection = amqp.Connection(host=HOST, userid="guest", password="guest",
                                 connect_timeout=2.0)
    try:
        connection.connect()
    except Exception as exc:
        _unavailable(f"RabbitMQ is not reachable at amqp://{HOST}: {exc!r}")
    finally:
        connection.collect()
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        _unavailable("rabbitmqctl is not installed: cannot create a virtual host of our own")
        return
    name = f"orch_batch_{uuid.uuid4().hex[:10]}"
    for command in (["add_vhost", name], ["set_permissions", "-p", name, "guest", ".*", ".*",
                                          ".*"]):
        done = subprocess.run([ctl, *command], capture_output=True, text=True,
                              timeout=CTL_TIMEOUT_S, check=False)
        if done.returncode != 0:
            _unavailable(f"rabbitmqctl {command[0]} failed: {(done.stderr or done.stdout)[-500:]}")
    try:
        yield name
    finally:
        subprocess.run([ctl, "delete_vhost", name], capture_output=True,
                       timeout=CTL_TIMEOUT_S, check=False)


def test_twenty_runs_in_batches_of_ten_make_two_calls_over_rabbitmq(
        workers: Workers, worker_logs: Path, vhost: str) -> None:
    session_redis = os.environ["ORCH_REDIS_URL"]
    env = child_env(ORCH_BROKER_URL=f"amqp://guest:guest@{HOST}/{vhost}",
                    ORCH_RESULT_BACKEND=session_redis, ORCH_REDIS_URL=session_redis,
                    ORCH_IMPORTS=bw.__name__, ORCH_HEARTBEAT_INTERVAL="1",
                    ORCH_WORKER_DEAD_AFTER="4")
    pool = Workers(worker_logs, env=env)
    try:
        pool.start("it-rmq-batching", [bw.BATCH_QUEUE], concurrency=2)
        tag = uuid.uuid4().hex
        done = subprocess.run(
            [sys.executable, "-c", _SUBMIT, json.dumps([{"tag": tag, "n": n}
                                                        for n in range(20)])],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        run_ids = json.loads(done.stdout.strip().splitlines()[-1])
        store = default_orchestrator().store
        results = [RunHandle(run_id, store).wait(timeout=60) for run_id in run_ids]
    finally:
        pool.stop_all()
    assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 20
    assert [r.outputs for r in results] == [{"score": 2 * n, "after": 2 * n + 1}
                                            for n in range(20)]
    assert int(_redis().get(bw.calls_key(tag)) or 0) == 2
