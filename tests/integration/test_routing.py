"""Steps are Celery tasks routed to their own queues; runs are readable from any process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orchestration import RunStatus, StepStatus
from tests.integration.support.helpers import snapshot
from tests.integration.support.workflows import common as wf
from tests.support.processes import ROOT, child_env
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]


def test_each_step_runs_on_a_worker_of_its_queue(workers: Workers) -> None:
    result = wf.routing.submit(text="reset my password please").wait(timeout=30)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs == {"tokenize": ["reset", "my", "password", "please"],
                              "embed": [5, 2, 8, 6], "score": 21}
    expected_queue = {"tokenize": wf.QUEUE, "embed": wf.OTHER_QUEUE, "score": wf.THREADS_QUEUE}
    for name, queue in expected_queue.items():
        step = result.steps[name]
        assert step.status is StepStatus.SUCCEEDED
        assert step.queue == queue
        # The prefork worker serves QUEUE and OTHER_QUEUE, the threads worker THREADS_QUEUE:
        # each step ran on (one of) the workers consuming its queue, and nowhere else.
        assert workers.serving(queue) == [step.worker], (name, step.worker)
        assert step.deliveries == 1
        assert step.attempts == 1


_READ_IN_CHILD = """
import json, sys
from orchestration import get_run
from tests.integration.support.helpers import snapshot
print(json.dumps(snapshot(get_run(sys.argv[1]))))
"""


def test_get_run_from_another_process_sees_the_same_run(workers: Workers) -> None:
    result = wf.routing.submit(text="the app crashes on start").wait(timeout=30)
    assert result.status is RunStatus.SUCCEEDED, result.error

    child = subprocess.run(
        [sys.executable, "-c", _READ_IN_CHILD, result.run_id],
        cwd=ROOT, env=child_env(), capture_output=True,
        text=True, timeout=60, check=False,
    )

    assert child.returncode == 0, child.stderr
    seen_by_child = json.loads(child.stdout.strip().splitlines()[-1])
    assert seen_by_child == snapshot(result)
    assert seen_by_child["outputs"]["score"] == 20
