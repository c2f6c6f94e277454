"""The shipped support-routing example (``tasks/support/routing.py``) on workers per queue:
billing tickets go through the billing sub-workflow as a child run, critical ones wait for
a person; and ``orchestrate graph`` draws those steps with their own shapes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import orchestration
from orchestration import RunResult, RunStatus, StepStatus, get_run, list_runs
from tasks.support import routing
from tasks.support.models import load_sample_tickets, predict_category, predict_urgency
from tests.integration.support.helpers import statuses, wait_until
from tests.support.processes import child_env, orchestrate
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

ROUTING_MODULE = "tasks.support.routing"
CHILD_WORKFLOWS = ("support_billing", "support_technical", "support_general")
BRANCHES = ("billing", "technical", "general", "human_review")


@pytest.fixture(scope="module")
def routing_workers(workers: Workers, worker_logs: Path) -> Iterator[Workers]:
    """A worker per queue of the routing workflow, importing ``tasks.support.routing``."""
    queues = {bound.queue for bound in routing.routing.validate().steps.values()}
    assert queues == {"model.classifier", "default"}
    pool = Workers(worker_logs, env=child_env(imports=(ROUTING_MODULE,)))
    try:
        classifier = pool.start("it-routing-classifier", ["model.classifier"], pool="prefork",
                                concurrency=1, wait=False)
        default = pool.start("it-routing-default", ["default"], pool="prefork", concurrency=2,
                             wait=False)
        pool.wait_ready(classifier)
        pool.wait_ready(default)
        yield pool
    finally:
        pool.stop_all()


def _predicted(ticket: dict[str, Any]) -> tuple[str, str]:
    category = predict_category(ticket["text"]).label
    return category, predict_urgency(ticket["text"], category).label


def _pick(wanted: Any) -> dict[str, Any]:
    for ticket in load_sample_tickets():
        if wanted(ticket, *_predicted(ticket)):
            return ticket
    raise AssertionError("no sample ticket matches")


def _children(parent_id: str) -> list[RunResult]:
    found = []
    for workflow in CHILD_WORKFLOWS:
        for summary in list_runs(workflow=workflow, limit=200):
            run = get_run(summary.run_id)
            if run.parent_run_id == parent_id:
                found.append(run)
    return found


def test_billing_ticket_runs_the_billing_sub_workflow(routing_workers: Workers) -> None:
    ticket = _pick(lambda t, category, urgency: t["category"] == category == "billing"
                   and urgency != "critical" and t["urgency"] == urgency)
    category, urgency = _predicted(ticket)
    result = routing.routing.submit(ticket_id=ticket["ticket_id"], text=ticket["text"]).wait(
        timeout=60)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.outputs["route_ticket"] == {"category": category, "urgency": urgency}
    assert statuses(result) == {"route_ticket": "succeeded", "billing": "succeeded",
                                "technical": "skipped", "general": "skipped",
                                "human_review": "skipped", "resolution": "succeeded"}
    for name in ("technical", "general", "human_review"):
        assert (result.steps[name].error or "").startswith("not selected"), name

    children = _children(result.run_id)
    assert [child.workflow for child in children] == ["support_billing"]
    child = children[0]
    assert child.status is RunStatus.SUCCEEDED
    assert child.inputs == {"text": ticket["text"]}
    invoice = routing.find_invoice(ticket["text"])
    assert child.outputs == {"find_invoice": invoice,
                             "billing_reply": routing.billing_reply(invoice)}
    assert result.outputs["billing"] == child.outputs
    assert result.outputs["resolution"] == {"branch": "billing", "result": child.outputs}


def test_critical_ticket_waits_for_review_then_resolves_with_the_assignee(
    routing_workers: Workers,
) -> None:
    ticket = _pick(lambda t, category, urgency: urgency == "critical" == t["urgency"])
    handle = routing.routing.submit(ticket_id=ticket["ticket_id"], text=ticket["text"])

    def parked() -> RunResult | None:
        run = get_run(handle.run_id)
        return run if run.status is RunStatus.WAITING \
            and run.steps["human_review"].status is StepStatus.WAITING else None

    waiting = wait_until(parked, timeout=60, what="the critical ticket to wait for review")
    assert waiting.outputs["route_ticket"]["urgency"] == "critical"
    assert waiting.steps["resolution"].status is StepStatus.PENDING

    assert orchestration.approve(handle.run_id, {"assignee": "dana"}) == 1
    result = handle.wait(timeout=60)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    review = result.steps["human_review"]
    assert review.status is StepStatus.SUCCEEDED
    expected = {"assignee": "dana", "escalated": False, "ticket_id": ticket["ticket_id"]}
    assert review.output == expected
    assert result.outputs["resolution"] == {"branch": "human_review", "result": expected}
    for name in ("billing", "technical", "general"):
        assert result.steps[name].status is StepStatus.SKIPPED, name
    assert _children(result.run_id) == []  # no sub-workflow was started


def test_graph_draws_child_runs_as_parallelograms_and_waits_as_hexagons(
    workers: Workers,
) -> None:
    done = orchestrate("graph", "support_routing", env=child_env(imports=(ROUTING_MODULE,)))
    assert done.returncode == 0, (done.stdout, done.stderr)
    lines = [line.strip() for line in done.stdout.splitlines()]

    assert lines[0] == "flowchart LR"
    for name in ("billing", "technical", "general"):
        assert f'{name}[/"{name}<br/>default<br/>when ...<br/>starts a child run"/]' in lines, \
            done.stdout
    assert 'human_review{{"human_review<br/>default<br/>when ...<br/>waits for a person"}}' \
        in lines, done.stdout
    assert 'route_ticket["route_ticket<br/>model.classifier"]' in lines, done.stdout
    assert 'resolution["resolution<br/>default"]' in lines, done.stdout
    for name in BRANCHES:
        assert f"route_ticket --> {name}" in lines
        assert f"{name} --> resolution" in lines
    # Each step is drawn once, with exactly one shape.
    nodes = [line for line in lines if re.match(r"^\w+[\[{(]", line)]
    assert sorted(re.match(r"^\w+", line).group(0) for line in nodes) == sorted(  # type: ignore[union-attr]
        ["route_ticket", *BRANCHES, "resolution"])
    canvas = next(line for line in lines if line.startswith("%% canvas:"))
    assert canvas.startswith("%% canvas: chain(route_ticket, group(")
    assert canvas.endswith(", resolution)")
