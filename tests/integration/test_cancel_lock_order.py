"""Cancelling a run while one of its steps is being claimed cannot deadlock (PostgreSQL).

A claim locks the step row, then the run row (``pending`` -> ``running``). A cancel that
locked the run row first and then waited for the step row deadlocked with it (seen when
2,000 runs were cancelled while a worker was starting their steps). Here a transaction
holds the step row like a claim; the cancel starts and waits; the claim then takes the
run row and commits; the cancel then ends the run — neither is aborted.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import text

from orchestration import RunStatus, StepStatus, default_orchestrator
from orchestration.store.repository import PlannedStep
from tests.integration.support.helpers import wait_until

pytestmark = [pytest.mark.postgres]


def test_a_cancel_waits_for_a_claim_instead_of_deadlocking() -> None:
    store = default_orchestrator().store
    run_id = str(uuid.uuid4())
    store.create_run(run_id, "it_lock_order", "v1", {},
                     [PlannedStep(name, name, "q", None, True) for name in ("a", "b")])
    errors: list[BaseException] = []

    def cancel() -> None:
        try:
            store.cancel_run(run_id, "cancelled by the test")
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    with store.engine.connect() as claim:
        transaction = claim.begin()
        claim.execute(text("UPDATE steps SET status = 'running' "
                           "WHERE run_id = :run AND name = 'a'"), {"run": run_id})
        canceller = threading.Thread(target=cancel)
        canceller.start()

        def cancel_waits() -> bool:
            with store.engine.connect() as probe:
                return bool(probe.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'UPDATE steps SET status=%'")).scalar())

        wait_until(cancel_waits, timeout=30, what="the cancel waiting for the step row")
        # The claim's second statement: the run row. A cancel holding it would deadlock.
        claim.execute(text("UPDATE runs SET status = 'running' "
                           "WHERE id = :run AND status = 'pending'"), {"run": run_id})
        transaction.commit()
    canceller.join(30)
    assert not canceller.is_alive()
    assert errors == []
    result = store.get_run(run_id)
    assert result.status is RunStatus.CANCELLED
    assert result.steps["a"].status is StepStatus.RUNNING  # claimed first: finishes its attempt
    assert result.steps["b"].status is StepStatus.CANCELLED
