"""The shipped support-ticket workflow over sample tickets, on workers per queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestration import RunStatus, StepStatus
from tasks.support import workflow as support_workflow
from tasks.support.models import load_sample_tickets, predict_category, predict_urgency
from tests.integration.support.helpers import statuses
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

TICKETS = 20
STEPS = ("classify_ticket", "extract_urgency", "route_to_team", "generate_response")
MODEL_STEPS = ("classify_ticket", "extract_urgency")
URGENCIES = {"low", "medium", "high", "critical"}
KNOWN_TEAMS = {"engineering", "product", "finance", "support_tier_1", "escalations"}


@pytest.fixture(scope="module")
def support_workers(workers: Workers, worker_logs: Path) -> Iterator[Workers]:
    """Two workers with disjoint queues: the scikit-learn models, and everything else."""
    queues = {name: bound.queue
              for name, bound in support_workflow.support.validate().steps.items()}
    model_queues = sorted({queues[name] for name in MODEL_STEPS})
    other_queues = sorted(set(queues.values()) - set(model_queues))
    pool = Workers(worker_logs)
    try:
        models = pool.start("it-support-models", model_queues, pool="prefork", concurrency=2,
                            wait=False)
        if other_queues:
            rest = pool.start("it-support-rest", other_queues, pool="threads", concurrency=4,
                              wait=False)
            pool.wait_ready(rest)
        pool.wait_ready(models)
        yield pool
    finally:
        pool.stop_all()


def test_support_tickets_run_end_to_end(support_workers: Workers) -> None:
    support = support_workflow.support
    tickets = load_sample_tickets(TICKETS)
    assert len(tickets) == TICKETS
    queue_of = {name: bound.queue for name, bound in support.validate().steps.items()}
    assert set(queue_of) == set(STEPS)

    handles = [support.submit(ticket_id=t["ticket_id"], text=t["text"]) for t in tickets]
    results = [handle.wait(timeout=90) for handle in handles]

    for ticket, result in zip(tickets, results, strict=True):
        where = f"ticket {ticket['ticket_id']}"
        assert result.status is RunStatus.SUCCEEDED, (where, result.error, statuses(result))
        assert result.inputs == {"ticket_id": ticket["ticket_id"], "text": ticket["text"]}
        for name in STEPS:
            step = result.steps[name]
            assert step.status is StepStatus.SUCCEEDED, (where, name, step.error)
            # Routed to its queue, and served by the worker consuming that queue.
            assert step.queue == queue_of[name], (where, name)
            assert support_workers.serving(step.queue) == [step.worker], (where, name)

        outputs = result.outputs
        category, urgency = outputs["classify_ticket"], outputs["urgency"]
        # The workers ran the same models on the same inputs as this process would.
        assert category == predict_category(ticket["text"]).label, where
        assert urgency == predict_urgency(ticket["text"], category).label, where
        assert urgency in URGENCIES, where
        route = outputs["route_to_team"]
        assert route in KNOWN_TEAMS, where
        expected_route = (support_workflow.ESCALATIONS if urgency == "critical"
                          else support_workflow.TEAMS[category])
        assert route == expected_route, where
        reply = outputs["generate_response"]
        if route == support_workflow.ESCALATIONS:
            assert reply is None, where
        else:
            assert isinstance(reply, str) and reply.strip(), where

    # The classifier and the urgency model share a worker; the rest ran elsewhere.
    model_worker = {results[0].steps[name].worker for name in MODEL_STEPS}
    other_workers = {results[0].steps[name].worker for name in STEPS} - model_worker
    assert len(model_worker) == 1
    assert not other_workers or model_worker.isdisjoint(other_workers)
