"""Conditional branches (``when=``) on real workers: the step not selected is skipped,
so is a step depending only on it, and a join receives None for it."""

from __future__ import annotations

import pytest

from orchestration import RunStatus, StepStatus
from tests.integration.support.helpers import statuses
from tests.integration.support.workflows import dynamic as dyn
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]


def test_branch_a_selected_skips_b_and_its_dependent(workers: Workers) -> None:
    result = dyn.branches.submit(x="a").wait(timeout=30)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert statuses(result) == {"route": "succeeded", "a": "succeeded", "b": "skipped",
                                "only_b": "skipped", "join": "succeeded"}
    b = result.steps["b"]
    assert b.error is not None and b.error.startswith("not selected"), b.error
    only_b = result.steps["only_b"]
    assert only_b.error is not None and only_b.error.startswith("not selected"), only_b.error
    assert result.outputs["join"] == {"a": "A(a)", "b": None}
    assert result.outputs["b"] is None and result.outputs["only_b"] is None
    # Skipped steps never ran: neither the not-selected one nor its dependent.
    assert dyn.calls(result.run_id, "b") == 0
    assert dyn.calls(result.run_id, "only_b") == 0
    assert b.attempts == 0 and only_b.attempts == 0
    assert dyn.calls(result.run_id, "a") == 1
    assert dyn.calls(result.run_id, "join") == 1
    assert result.error is None


def test_branch_b_selected_skips_a_and_runs_the_dependent_of_b(workers: Workers) -> None:
    result = dyn.branches.submit(x="b").wait(timeout=30)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert statuses(result) == {"route": "succeeded", "a": "skipped", "b": "succeeded",
                                "only_b": "succeeded", "join": "succeeded"}
    assert (result.steps["a"].error or "").startswith("not selected")
    assert result.outputs["join"] == {"a": None, "b": "B(b)"}
    assert result.outputs["only_b"] == "after B(b)"
    assert dyn.calls(result.run_id, "a") == 0


def test_no_branch_selected_skips_the_join_too(workers: Workers) -> None:
    result = dyn.branches.submit(x="neither").wait(timeout=30)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert statuses(result) == {"route": "succeeded", "a": "skipped", "b": "skipped",
                                "only_b": "skipped", "join": "skipped"}
    for name in ("a", "b", "only_b", "join"):
        assert result.steps[name].status is StepStatus.SKIPPED
        assert (result.steps[name].error or "").startswith("not selected"), name
        assert dyn.calls(result.run_id, name) == 0, name
