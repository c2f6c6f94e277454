"""A step message's log fields (run, step, queue, model, task id) are bound while it runs
and the thread's earlier ones come back after it: a pool thread's next message never
logs under the previous run's id, and a nested step (a pack's run) restores its pack's."""

from __future__ import annotations

from types import SimpleNamespace

import structlog

from orchestration.worker.step_task import _step_context


def _bound(name: str, queue: str) -> SimpleNamespace:
    return SimpleNamespace(spec=SimpleNamespace(task_name=name, model=None), queue=queue)


def _task(task_id: str) -> SimpleNamespace:
    return SimpleNamespace(request=SimpleNamespace(id=task_id))


def test_fields_are_bound_inside_and_the_previous_ones_restored() -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(worker="w1", run_id="outer")
    try:
        with _step_context("r1", _bound("wf.a", "q1"), _task("t1")):
            assert structlog.contextvars.get_contextvars() == {
                "worker": "w1", "run_id": "r1", "step": "wf.a", "queue": "q1",
                "model": None, "task_id": "t1"}
            with _step_context("r2", _bound("wf.b", "q2"), _task("t2")):
                assert structlog.contextvars.get_contextvars()["run_id"] == "r2"
            assert structlog.contextvars.get_contextvars()["step"] == "wf.a"
        # What was bound before is back; what the step added is gone.
        assert structlog.contextvars.get_contextvars() == {"worker": "w1", "run_id": "outer"}
    finally:
        structlog.contextvars.clear_contextvars()
