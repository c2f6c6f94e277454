"""Priority: a run submitted with priority=9 overtakes a backlog of normal runs.

A backlog of ``BACKLOG`` normal runs and then one urgent run are enqueued while no worker
serves their queues; one worker process (concurrency 1, prefetch 1) then starts. Each
run's last step appends its tag to a Redis list, in the order the runs finish. On Redis
the urgent run's messages sit in the ``:0`` lists, popped before the normal runs' ``:9``
lists; its second step, published mid-backlog, overtakes too.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from orchestration import RunStatus
from tests.integration.support.helpers import wait_until
from tests.integration.support.workflows.common import _redis
from tests.integration.support.workflows.priority import (
    LATER_QUEUE,
    PRIORITY_QUEUE,
    finished_key,
    prioritised,
)
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
