"""Fallbacks, and what a step's final failure does to the rest of its run."""

from __future__ import annotations

import pytest

from orchestration import RunStatus, StepStatus, Workflow
from tests.integration.support.helpers import statuses
from tests.integration.support.workflows import common as wf
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]


def test_fallback_value_is_the_output_and_reaches_dependents(workers: Workers) -> None:
    result = wf.fallback_value.submit(ticket_id=48291).wait(timeout=30)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    step = result.steps["pick_team"]
    assert step.status is StepStatus.FALLBACK
    assert step.output == "support_tier_1"
    assert result.outputs["pick_team"] == "support_tier_1"
    # The failure that triggered the fallback is kept for the operator.
    assert step.error_type is not None and "NonRetryableError" in step.error_type
    assert step.error is not None and "48291" in step.error
    assert step.attempts == 1  # NonRetryableError: no retry
    assert result.steps["notify"].status is StepStatus.SUCCEEDED
    assert result.outputs["notify"] == "notified support_tier_1"


def test_fallback_callable_receives_the_step_arguments(workers: Workers) -> None:
    text = "Invoices are duplicated since the last update"
    result = wf.fallback_callable.submit(text=text, limit=8).wait(timeout=30)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    expected = wf.summary_fallback(text=text, limit=8)
    assert expected == "FALLBACK[8]:Invoices"
    step = result.steps["summarize"]
    assert step.status is StepStatus.FALLBACK
    assert step.output == expected
    assert result.outputs["publish"] == f"published {expected}"


def test_critical_failure_skips_dependents_but_not_independent_branches(
    workers: Workers,
) -> None:
    result = wf.critical.submit(text="hello").wait(timeout=30)

    assert result.status is RunStatus.FAILED
    assert result.error is not None and "bad" in result.error
    assert statuses(result) == {"bad": "failed", "after_bad": "skipped",
                                "good": "succeeded", "after_good": "succeeded"}
    assert result.steps["bad"].error_type is not None
    assert "NonRetryableError" in result.steps["bad"].error_type
    # The skipped dependent never ran.
    assert wf.calls(result.run_id, "after_bad") == 0
    assert result.steps["after_bad"].attempts == 0
    # The independent branch's outputs are kept.
    assert result.outputs["good"] == "HELLO"
    assert result.outputs["after_good"] == "HELLO!"
    assert result.outputs["after_bad"] is None


def test_critical_failure_skips_everything_downstream_across_a_join(workers: Workers) -> None:
    result = wf.critical_chain.submit(text="abc").wait(timeout=30)

    assert result.status is RunStatus.FAILED
    assert statuses(result) == {"fails": "failed", "second": "skipped", "third": "skipped",
                                "fine": "succeeded", "summary": "skipped"}
    assert result.error is not None and "fails" in result.error
    for name in ("second", "third", "summary"):
        assert wf.calls(result.run_id, name) == 0, name
        reason = result.steps[name].error
        assert reason is not None and "critical failure" in reason, (name, reason)
    assert wf.calls(result.run_id, "fails") == 1
    assert result.outputs["fine"] == "cba"
    assert result.finished_at is not None


def test_non_critical_failure_passes_none_and_the_run_succeeds(workers: Workers) -> None:
    result = wf.non_critical.submit(text="hi").wait(timeout=30)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.error is None
    assert result.steps["soft"].status is StepStatus.FAILED
    assert result.steps["soft"].error_type is not None
    assert result.outputs["soft"] is None
    assert result.steps["after_soft"].status is StepStatus.SUCCEEDED
    assert result.outputs["after_soft"] == "soft=None text=hi"


@pytest.mark.parametrize(
    ("workflow", "inputs", "step"),
    [(wf.not_json, {"count": 0}, "ratio"), (wf.not_jsonb, {"pages": 2}, "extract")],
    ids=["nan", "nul-character"],
)
def test_output_the_database_rejects_fails_the_step_instead_of_hanging_the_run(
    workers: Workers, workflow: Workflow, inputs: dict[str, int], step: str,
) -> None:
    handle = workflow.submit(**inputs)

    result = handle.wait(timeout=5)  # a one-step run takes well under 0.1 s

    assert result.status is RunStatus.FAILED
    record = result.steps[step]
    assert record.status is StepStatus.FAILED
    assert record.error_type is not None
