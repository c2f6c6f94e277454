"""A step that returns ``ctx.run_child``: its attempt and what it spent are in the trace."""

from __future__ import annotations

from typing import Any

from orchestration import RunStatus, StepContext, Workflow
from orchestration.app import Orchestrator


def test_the_attempt_that_started_a_child_and_its_cost_are_recorded(
        orchestrator: Orchestrator) -> None:
    kid = Workflow("trace_kid", inputs=["n"], orchestrator=orchestrator)

    @kid.task
    def double(n: int) -> int:
        return n * 2

    parent = Workflow("trace_parent", inputs=["n"], orchestrator=orchestrator)

    @parent.task
    def delegate(n: int, ctx: StepContext) -> Any:
        ctx.record_cost(0.02, model="planner")
        return ctx.run_child(kid, n=n)

    run = parent.run(n=3, timeout=30)
    step = run.steps["delegate"]
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert step.output == {"double": 6}
    assert step.attempts == 1
    assert [entry["status"] for entry in step.attempt_log] == ["succeeded"]
    assert round(step.cost_usd, 6) == 0.02
    assert round(run.cost_usd, 6) == 0.02
