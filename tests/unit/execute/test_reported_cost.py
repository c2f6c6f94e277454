"""Spend a step reports with ``ctx.record_cost`` is capped like model calls.

The report that passes the step's ``max_cost`` (or the run's ``budget``) raises
BudgetExceeded: the step fails (kind budget_exceeded) unless its policies say otherwise,
and the spend stays recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestration import RunStatus, StepContext, StepStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.testing import embedded_orchestrator

BUDGET_EXCEEDED = "orchestration.errors.BudgetExceeded"


def _spend(ctx: StepContext, reports: list[float]) -> str:
    for usd in reports:
        ctx.record_cost(usd, model="house-model")
    return "done"


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    # Every workflow is declared before the first submit (one embedded worker).
    with embedded_orchestrator(Path(tmp_path_factory.mktemp("cost"))) as orch:
        yield _declare(orch)


def _declare(orch: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(capped=Workflow("cost_capped", app=orch),
                         policy=Workflow("cost_policy", app=orch),
                         budget=Workflow("cost_budget", app=orch, budget=0.10))

    @ns.capped.task(max_cost=0.05, retries=2, backoff=0.01)
    def scorer(ctx: StepContext, reports: list[float]) -> str:
        return _spend(ctx, reports)

    @ns.policy.task(max_cost=0.05, on_error={"budget_exceeded": "skip"})
    def skipped(ctx: StepContext, reports: list[float]) -> str:
        return _spend(ctx, reports)

    @ns.policy.task(max_cost=0.05, fallback="cheap answer")
    def fell_back(ctx: StepContext, reports: list[float]) -> str:
        return _spend(ctx, reports)

    @ns.budget.task
    def first(ctx: StepContext, reports: list[float]) -> str:
        return _spend(ctx, reports)

    @ns.budget.task(depends_on=[first])
    def second(ctx: StepContext, reports: list[float]) -> str:
        return _spend(ctx, reports)

    return ns


def test_the_report_past_max_cost_fails_the_step(flows: SimpleNamespace) -> None:
    # The case: $0.175 reported against max_cost=0.05 used to succeed.
    result = flows.capped.run(reports=[0.025, 0.05, 0.1], timeout=30)
    step = result.steps["scorer"]
    assert result.status is RunStatus.FAILED
    assert step.status is StepStatus.FAILED
    assert step.error_type == BUDGET_EXCEEDED
    assert "max_cost" in (step.error or "")
    # Not retried (a spent budget stays spent); the report that passed the cap (0.025 +
    # 0.05) raised, so the step stopped there, with that spend recorded.
    assert [a["status"] for a in step.attempt_log] == ["failed"]
    assert step.attempt_log[0]["error_kind"] == "budget_exceeded"
    assert step.cost_usd == pytest.approx(0.075)


def test_spend_within_max_cost_succeeds(flows: SimpleNamespace) -> None:
    result = flows.capped.run(reports=[0.02, 0.03], timeout=30)  # exactly the cap
    assert result.status is RunStatus.SUCCEEDED
    assert result.steps["scorer"].cost_usd == pytest.approx(0.05)


def test_on_error_and_fallback_apply_to_reported_spend(flows: SimpleNamespace) -> None:
    result = flows.policy.run(reports=[0.06], timeout=30)
    assert result.status is RunStatus.SUCCEEDED
    assert result.steps["skipped"].status is StepStatus.SKIPPED
    assert result.steps["fell_back"].status is StepStatus.FALLBACK
    assert result.outputs["fell_back"] == "cheap answer"
    assert result.steps["fell_back"].error_type == BUDGET_EXCEEDED


def test_the_report_past_the_run_budget_fails_the_step(flows: SimpleNamespace) -> None:
    # first spends 0.08 of the run's 0.10; second's first 0.04 takes the run past it.
    result = flows.budget.run(reports=[0.04, 0.04], timeout=30)
    assert result.steps["first"].status is StepStatus.SUCCEEDED
    second = result.steps["second"]
    assert second.status is StepStatus.FAILED
    assert second.error_type == BUDGET_EXCEEDED
    assert "budget" in (second.error or "")
    assert result.cost_usd == pytest.approx(0.12)
