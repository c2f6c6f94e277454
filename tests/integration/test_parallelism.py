"""Independent branches really run in parallel: exact canvas, wide fan-out."""

from __future__ import annotations

import pytest

from orchestration import RunStatus, StepStatus
from tests.integration.support.helpers import statuses
from tests.integration.support.workflows import common as wf
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

# a1 -> a2 beside b1 -> b2, where a1 runs until b2 has started. A compile that
# synchronised the branches level by level ((a1 | b1) ; (a2 | b2)) would start b2 only
# once a1 ended (after its 30 s limit); the recorded step intervals show the overlap.


def test_uneven_branches_do_not_wait_for_each_other(workers: Workers) -> None:
    result = wf.uneven.submit().wait(timeout=wf.UNEVEN_LIMIT_S + 30)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.outputs["join"] == "a1>a2+b1>b2"
    steps = result.steps
    a1, b1, b2 = steps["a1"], steps["b1"], steps["b2"]
    assert None not in (a1.started_at, a1.finished_at, b1.finished_at, b2.started_at)
    # b2 started once b1 finished, while a1 still ran: the branches overlapped.
    assert b1.finished_at <= b2.started_at < a1.finished_at  # type: ignore[operator]
    # The join waited for both branches.
    assert steps["join"].started_at >= max(steps["a2"].finished_at, steps["b2"].finished_at)


def test_fan_out_of_fifty_steps_then_a_join(workers: Workers) -> None:
    result = wf.fanout.submit(base=1000).wait(timeout=60)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert len(result.steps) == wf.FANOUT_WIDTH + 1
    for index, name in enumerate(wf.PART_NAMES):
        step = result.steps[name]
        assert step.status is StepStatus.SUCCEEDED, name
        assert step.output == 1000 + index
        assert step.queue == wf.THREADS_QUEUE
        assert step.deliveries == 1
    expected = sum(1000 + index for index in range(wf.FANOUT_WIDTH))
    assert result.outputs["total"] == expected
    join = result.steps["total"]
    assert join.started_at >= max(result.steps[name].finished_at for name in wf.PART_NAMES)
