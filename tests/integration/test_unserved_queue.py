"""A step whose queue has no worker waits for one; the rest of the run goes on."""

from __future__ import annotations

import pytest

from orchestration import RunStatus, StepStatus, WaitTimeout
from tests.integration.support.helpers import statuses, wait_for_step
from tests.integration.support.workflows import common as wf
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]


def test_step_waits_for_a_worker_on_its_queue(workers: Workers,
                                              extra_workers: Workers) -> None:
    assert workers.serving(wf.LONELY_QUEUE) == []
    handle = wf.lonely.submit(text="ping")

    # The branch on a served queue completes...
    run = wait_for_step(handle.run_id, "nearby", timeout=20)
    assert run.steps["nearby"].status is StepStatus.SUCCEEDED
    assert run.outputs["nearby"] == "near:ping"
    # ... while the other one stays pending, and so does the run.
    with pytest.raises(WaitTimeout):
        handle.wait(timeout=1.0)
    run = handle.result()
    assert run.steps["faraway"].status is StepStatus.PENDING, statuses(run)
    assert run.steps["faraway"].deliveries == 0
    assert run.status is RunStatus.RUNNING

    # A worker for that queue, started now, picks the step up and the run completes.
    lonely = extra_workers.start("it-lonely", [wf.LONELY_QUEUE], pool="threads", concurrency=1)
    result = handle.wait(timeout=30)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.outputs == {"nearby": "near:ping", "faraway": "far:ping"}
    assert result.steps["faraway"].worker == lonely.nodename
    assert result.steps["nearby"].worker in workers.serving(wf.QUEUE)
