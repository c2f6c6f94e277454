"""Child runs (``ctx.run_child``) on real workers: the child is a run of its own on its own
queue, the parent step outputs the child's outputs, and cancelling the parent cancels
the child before its later steps start."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import orchestration
from orchestration import RunStatus, StepStatus, get_run, list_runs
from tests.integration.support.helpers import statuses, wait_until
from tests.integration.support.workflows import dynamic as dyn
from tests.integration.support.workflows.common import QUEUE
from tests.support.processes import orchestrate
from tests.support.workers import Worker, Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]


@pytest.fixture(scope="module")
def child_worker(workers: Workers, worker_logs: Path) -> Iterator[Worker]:
    """The only worker serving the child workflow's queue (and nothing else)."""
    pool = Workers(worker_logs)
    try:
        yield pool.start("it-child", [dyn.CHILD_QUEUE], pool="prefork", concurrency=1)
    finally:
        pool.stop_all()


def _session_prefork(workers: Workers) -> Worker:
    return next(worker for worker in workers.started if QUEUE in worker.queues)


def _children_of(parent_id: str) -> list[str]:
    summaries = list_runs(workflow=dyn.child_flow.name, limit=200)
    return [s.run_id for s in summaries if get_run(s.run_id).parent_run_id == parent_id]


def test_child_run_on_its_own_queue_outputs_to_the_parent_step(
    workers: Workers, child_worker: Worker,
) -> None:
    key = f"it:dyn:release:{uuid.uuid4().hex}"
    dyn.release(key)  # released from the start: the child does not block
    parent = dyn.parent_flow.submit(text="hello", release_key=key).wait(timeout=45)

    assert parent.status is RunStatus.SUCCEEDED, (parent.error, statuses(parent))
    child_outputs = {"hold": "HELLO", "shout": "HELLO!"}
    assert parent.outputs["delegate"] == child_outputs
    assert parent.outputs["wrap_up"] == {"from_child": child_outputs}
    assert parent.parent_run_id is None

    children = _children_of(parent.run_id)
    assert len(children) == 1, children
    assert dyn.started_runs(key) == children  # the step that ran was in that child run
    child = get_run(children[0])
    assert child.run_id != parent.run_id
    assert child.workflow == dyn.child_flow.name
    assert child.parent_run_id == parent.run_id
    assert child.status is RunStatus.SUCCEEDED
    assert child.inputs == {"text": "hello", "release_key": key}
    assert child.outputs == child_outputs
    for step in child.steps.values():
        assert step.queue == dyn.CHILD_QUEUE
        assert step.worker == child_worker.nodename, (step.name, step.worker)
    # The parent's steps ran on the session worker, never on the child's.
    for step in parent.steps.values():
        assert step.queue == QUEUE
        assert step.worker == _session_prefork(workers).nodename, (step.name, step.worker)
    assert dyn.calls(parent.run_id, "delegate") == 1
    assert dyn.calls(child.run_id, "hold") == 1


@pytest.mark.parametrize("via", ["api", "cli"])
def test_cancelling_the_parent_cancels_the_blocked_child(
    workers: Workers, child_worker: Worker, via: str,
) -> None:
    key = f"it:dyn:release:{uuid.uuid4().hex}"
    handle = dyn.parent_flow.submit(text="stop me", release_key=key)
    parent_id = handle.run_id
    try:
        started = wait_until(lambda: dyn.started_runs(key), timeout=30,
                             what="the child's first step to start")
        assert len(started) == 1
        child_id = started[0]
        child = get_run(child_id)
        assert child.parent_run_id == parent_id
        assert child.status is RunStatus.RUNNING
        assert child.steps["hold"].status is StepStatus.RUNNING

        if via == "api":
            cancelled = orchestration.cancel(parent_id)
            assert set(cancelled) == {parent_id, child_id}
        else:
            done = orchestrate("cancel", parent_id)
            assert done.returncode == 0, (done.stdout, done.stderr)
            assert "cancelled 2 run(s)" in done.stdout, done.stdout
            assert parent_id in done.stdout and child_id in done.stdout, done.stdout
        assert get_run(parent_id).status is RunStatus.CANCELLED
        assert get_run(child_id).status is RunStatus.CANCELLED
        assert get_run(child_id).steps["shout"].status is StepStatus.CANCELLED
    finally:
        dyn.release(key)

    # The parent step is recorded by child_done, which runs after the child's last message:
    # once it is terminal, the child's later step has been delivered (and refused).
    parent = wait_until(
        lambda: (run := get_run(parent_id)).steps["delegate"].status.is_terminal and run,
        timeout=30, what="the parent step to record the child's end")
    # Its dependent's message follows it; wait until a worker has handled that message.
    wait_until(lambda: any(entry["state"] == "SUCCESS" and "wrap_up" in entry["steps"]
                           for entry in dyn.finished(parent_id)),
               timeout=30, what="the message of the parent's wrap_up step to be handled")
    parent = get_run(parent_id)
    child = get_run(child_id)

    assert child.status is RunStatus.CANCELLED, statuses(child)
    assert child.error is not None and parent_id in child.error
    assert child.steps["hold"].status is StepStatus.SUCCEEDED  # its attempt was running
    assert child.steps["shout"].status is StepStatus.CANCELLED
    assert dyn.calls(child_id, "hold") == 1
    # Its message was delivered and handled (it is no longer in flight), yet it never ran.
    assert any(entry["state"] == "SUCCESS" and "shout" in entry["steps"]
               for entry in dyn.finished(child_id)), dyn.finished(child_id)
    assert dyn.calls(child_id, "shout") == 0  # never started after the cancel

    assert parent.status is RunStatus.CANCELLED, statuses(parent)
    assert parent.error == "cancelled"
    assert parent.steps["delegate"].status is StepStatus.CANCELLED
    assert parent.steps["wrap_up"].status is StepStatus.CANCELLED
    assert dyn.calls(parent_id, "wrap_up") == 0
    assert parent.outputs["wrap_up"] is None
