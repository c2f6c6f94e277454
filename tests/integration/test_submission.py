"""Submitting runs: large values by reference, idempotency keys."""

from __future__ import annotations

import uuid

import pytest

from orchestration import RunStatus, list_runs
from tests.integration.support.helpers import statuses
from tests.integration.support.workflows import common as wf
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]


def test_large_outputs_and_inputs_reach_dependents_in_other_processes(
    workers: Workers,
) -> None:
    blob = list(range(5_000))  # ~24 KB of JSON: a large input
    result = wf.large.submit(seed="ticket-", blob=blob).wait(timeout=30)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert len(result.outputs["expand"]) == wf.LARGE_BYTES
    assert result.outputs["measure"] == {"expand": wf.LARGE_BYTES, "blob": 5_000,
                                         "blob_sum": sum(blob)}
    # The two steps ran on different queues (so, here, possibly different processes).
    assert result.steps["measure"].queue == wf.OTHER_QUEUE


def test_idempotency_key_starts_one_run(workers: Workers) -> None:
    key = f"ticket-{uuid.uuid4().hex}"
    first = wf.once.submit(idempotency_key=key, text="first")
    second = wf.once.submit(idempotency_key=key, text="second")

    assert second.run_id == first.run_id
    assert second.existing and not first.existing
    result = second.wait(timeout=30)
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs == {"stamp": "first"}
    assert result.steps["stamp"].deliveries == 1
    assert wf.calls(first.run_id, "stamp") == 1
    assert first.run_id in {run.run_id for run in list_runs(workflow="it_once")}
