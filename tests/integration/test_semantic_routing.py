"""Semantic routing on real workers (Redis broker, PostgreSQL results): the shipped
support intake (``tasks/support/intents.py``) on a worker process that imports it.

- branches: the router's decision selects ``billing`` (which starts the billing
  sub-workflow as a child run); the other branches are recorded skipped, "not selected";
- ``routes=``: the router starts the chosen sub-workflow itself, and its output is the
  child's outputs; a message no intent reaches the threshold for goes to the default.

Each decision is in the router's output (branches) and in its attempt's trace (both).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestration import RunResult, RunStatus, get_run, list_runs
from tasks.support import intents, routing
from tests.integration.support.helpers import statuses
from tests.support.processes import child_env
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

MODULE = "tasks.support.intents"
CHILD_WORKFLOWS = ("support_billing", "support_technical", "support_general",
                   "support_account")


@pytest.fixture(scope="module")
def intent_workers(workers: Workers, worker_logs: Path) -> Iterator[Workers]:
    """One worker on the ``default`` queue (every step of these workflows), importing them."""
    queues = {bound.queue for wf in (intents.intake, intents.dispatch)
              for bound in wf.validate().steps.values()}
    assert queues == {"default"}
    pool = Workers(worker_logs, env=child_env(imports=(MODULE,)))
    try:
        pool.start("it-intents-default", ["default"], pool="prefork", concurrency=2)
        yield pool
    finally:
        pool.stop_all()


def _children(parent_id: str) -> list[RunResult]:
    found = []
    for workflow in CHILD_WORKFLOWS:
        for summary in list_runs(workflow=workflow, limit=500):
            run = get_run(summary.run_id)
            if run.parent_run_id == parent_id:
                found.append(run)
    return found


def _policy(run: RunResult, step: str) -> str:
    return str(run.steps[step].attempt_log[-1]["policy"])


def test_the_chosen_branch_runs_and_the_others_are_not_selected(
        intent_workers: Workers) -> None:
    text = "I was charged twice for my subscription, invoice 4471"
    result = intents.intake.submit(text=text).wait(timeout=90)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    decision = result.outputs["route_intent"]
    assert (decision["route"], decision["defaulted"]) == ("billing", False)
    assert decision["confidence"] >= intents.THRESHOLD
    assert set(decision["scores"]) == {"billing", "technical", "account", "general"}
    assert statuses(result) == {"route_intent": "succeeded", "billing": "succeeded",
                                "technical": "skipped", "self_service": "skipped"}
    for name in ("technical", "self_service"):
        assert (result.steps[name].error or "").startswith("not selected"), name
    assert _policy(result, "route_intent").startswith("routed to 'billing': ")

    [child] = _children(result.run_id)
    assert (child.workflow, child.status) == ("support_billing", RunStatus.SUCCEEDED)
    invoice = routing.find_invoice(text)
    assert result.outputs["billing"] == child.outputs == {
        "find_invoice": invoice, "billing_reply": routing.billing_reply(invoice)}


def test_a_router_with_routes_starts_the_chosen_sub_workflow(intent_workers: Workers) -> None:
    text = "Since the update to v3.2 the app crashes and we cannot work"
    result = intents.dispatch.submit(text=text).wait(timeout=90)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    [child] = _children(result.run_id)
    assert (child.workflow, child.status) == ("support_technical", RunStatus.SUCCEEDED)
    assert child.inputs == {"text": text}
    assert result.outputs["dispatch_intent"] == child.outputs
    assert child.outputs["open_bug"] == "S2 bug for version v3.2"
    assert _policy(result, "dispatch_intent").startswith("routed to 'technical': ")


def test_below_the_threshold_the_default_route_is_taken(intent_workers: Workers) -> None:
    result = intents.dispatch.submit(text="hmm").wait(timeout=90)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    [child] = _children(result.run_id)
    assert child.workflow == "support_general"
    assert result.outputs["dispatch_intent"] == child.outputs
    policy = _policy(result, "dispatch_intent")
    assert policy.startswith("routed to default 'general': best ") and \
        f"< threshold {intents.THRESHOLD:g}" in policy, policy
