"""Priority: a run submitted with priority=9 overtakes a backlog of normal runs.

A backlog of ``BACKLOG`` normal runs and then one urgent run are enqueued while no worker
serves their queues; one worker process (concurrency 1, prefetch 1) then starts. Each
run's last step appends its tag to a Redis list, in the order the runs finish. On Redis
the urgent run's messages sit in the ``:0`` lists, popped before the normal runs' ``:9``
lists; its second step, published mid-backlog, overtakes too. On RabbitMQ (a virtual host
of the test's own) the queues are declared with ``x-max-priority`` and the urgent run's
messages carry priority 9.
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

import pytest
import redis

from orchestration import RunHandle, RunStatus, default_orchestrator
from tests.integration.support.helpers import wait_until
from tests.integration.support.workflows.common import _redis
from tests.integration.support.workflows.priority import (
    LATER_QUEUE,
    PRIORITY_QUEUE,
    finished_key,
    prioritised,
)
from tests.integration.test_rabbitmq import (
    CTL_TIMEOUT_S,
    GUEST,
    SYSTEM_HOST,
    _amqp_reachable,
    _unavailable,
)
from tests.support.processes import ROOT, child_env
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

BACKLOG = 30
MODULE = "tests.integration.support.workflows.priority"


@pytest.fixture
def priority_workers(extra_workers: Workers) -> Iterator[Workers]:
    """Workers that import the priority workflow."""
    extra_workers.env = {**os.environ,
                         "ORCH_IMPORTS": f"{os.environ['ORCH_IMPORTS']},{MODULE}"}
    yield extra_workers


def test_an_urgent_run_overtakes_a_backlog_on_redis(priority_workers: Workers) -> None:
    batch = uuid.uuid4().hex
    backlog = prioritised.submit_many([{"batch": batch, "tag": f"normal-{n}"}
                                       for n in range(BACKLOG)])
    urgent = prioritised.submit(batch=batch, tag="urgent", priority=9)
    priority_workers.start("priority", [PRIORITY_QUEUE, LATER_QUEUE], pool="prefork",
                           concurrency=1)
    assert urgent.wait(timeout=60).status is RunStatus.SUCCEEDED
    for handle in backlog:
        assert handle.wait(timeout=60).status is RunStatus.SUCCEEDED
    order = [tag.decode() for tag in _redis().lrange(finished_key(batch), 0, -1)]
    assert len(order) == BACKLOG + 1
    # One message may already be reserved by the worker when it sees the urgent one.
    assert order.index("urgent") <= 2, order


def test_without_priority_the_urgent_run_waits_its_turn(priority_workers: Workers) -> None:
    """The control: the same backlog, the last run submitted at the normal priority."""
    batch = uuid.uuid4().hex
    backlog = prioritised.submit_many([{"batch": batch, "tag": f"normal-{n}"}
                                       for n in range(BACKLOG)])
    last = prioritised.submit(batch=batch, tag="urgent")
    priority_workers.start("priority-control", [PRIORITY_QUEUE, LATER_QUEUE],
                           pool="prefork", concurrency=1)
    for handle in [*backlog, last]:
        assert handle.wait(timeout=60).status is RunStatus.SUCCEEDED
    wait_until(lambda: _redis().llen(finished_key(batch)) == BACKLOG + 1, timeout=10,
               what="every run's tag")
    order = [tag.decode() for tag in _redis().lrange(finished_key(batch), 0, -1)]
    assert order.index("urgent") > BACKLOG // 2, order


# -- RabbitMQ: queues declared with x-max-priority, in a virtual host of the test's own ------


_SUBMIT = """
import json, sys
from tests.integration.support.workflows.priority import prioritised
batch, count = sys.argv[1], int(sys.argv[2])
backlog = prioritised.submit_many([{"batch": batch, "tag": f"normal-{n}"} for n in range(count)])
urgent = prioritised.submit(batch=batch, tag="urgent", priority=9)
print(json.dumps([urgent.run_id, *(handle.run_id for handle in backlog)]))
"""


@pytest.fixture
def rabbit_env(redis_service: redis.Redis) -> Iterator[dict[str, str]]:
    """Worker and submitter environment on a virtual host of this test's own."""
    error = _amqp_reachable(SYSTEM_HOST)
    if error is not None:
        _unavailable(f"RabbitMQ is not reachable at amqp://{SYSTEM_HOST}: {error!r}")
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        _unavailable("rabbitmqctl is not installed: cannot create a virtual host of our own")
        return
    vhost = f"orch_prio_{uuid.uuid4().hex[:10]}"
    for command in (["add_vhost", vhost],
                    ["set_permissions", "-p", vhost, GUEST[0], ".*", ".*", ".*"]):
        subprocess.run([ctl, *command], capture_output=True, text=True,
                       timeout=CTL_TIMEOUT_S, check=True)
    session_redis = os.environ["ORCH_REDIS_URL"]
    try:
        yield child_env(ORCH_BROKER_URL=f"amqp://{GUEST[0]}:{GUEST[1]}@{SYSTEM_HOST}/{vhost}",
                        ORCH_RESULT_BACKEND=session_redis, ORCH_REDIS_URL=session_redis,
                        ORCH_IMPORTS=MODULE)
    finally:
        subprocess.run([ctl, "delete_vhost", vhost], capture_output=True,
                       timeout=CTL_TIMEOUT_S, check=False)


def test_an_urgent_run_overtakes_a_backlog_on_rabbitmq(
        rabbit_env: dict[str, str], worker_logs: Path) -> None:
    batch = uuid.uuid4().hex
    pool = Workers(worker_logs, env=rabbit_env)
    try:
        # The worker declares the queues (x-max-priority) and is stopped: the backlog waits.
        first = pool.start("priority-rmq-declare", [PRIORITY_QUEUE, LATER_QUEUE],
                           pool="prefork", concurrency=1)
        pool.stop(first)
        done = subprocess.run([sys.executable, "-c", _SUBMIT, batch, str(BACKLOG)], cwd=ROOT,
                              env=rabbit_env, capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        run_ids = json.loads(done.stdout.strip().splitlines()[-1])
        pool.start("priority-rmq", [PRIORITY_QUEUE, LATER_QUEUE], pool="prefork",
                   concurrency=1)
        store = default_orchestrator().store
        for run_id in run_ids:
            assert RunHandle(run_id, store).wait(timeout=60).status is RunStatus.SUCCEEDED
    finally:
        pool.stop_all()
    order = [tag.decode() for tag in _redis().lrange(finished_key(batch), 0, -1)]
    assert len(order) == BACKLOG + 1
    assert order.index("urgent") <= 2, order
