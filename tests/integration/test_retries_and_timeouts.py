"""Retries with backoff (in the worker and through the broker) and per-attempt timeouts."""

from __future__ import annotations

import pytest
import redis

from orchestration import RunStatus, StepStatus, Workflow
from tests.integration.support.helpers import statuses
from tests.integration.support.workflows import common as wf
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

FLAKY = "tests.integration.support.workflows.common.FlakyModelError"


def test_retries_then_success(workers: Workers) -> None:
    result = wf.retries.submit().wait(timeout=30)

    assert result.status is RunStatus.SUCCEEDED, result.error
    step = result.steps["flaky"]
    assert step.status is StepStatus.SUCCEEDED
    assert step.output == "ok"
    assert step.attempts == 3
    assert wf.calls(result.run_id, "flaky") == 3
    assert [entry["status"] for entry in step.attempt_log] == ["failed", "failed", "succeeded"]
    assert [entry["attempt"] for entry in step.attempt_log] == [1, 2, 3]
    assert [entry["error_type"] for entry in step.attempt_log] == [FLAKY, FLAKY, None]
    assert step.error is None and step.error_type is None
    # Short backoffs are slept in the worker: one delivery served every attempt.
    assert step.deliveries == 1


def test_retries_exhausted_fail_the_step_and_the_run(workers: Workers) -> None:
    result = wf.exhausted.submit().wait(timeout=30)

    assert result.status is RunStatus.FAILED
    assert result.error is not None and "hopeless" in result.error
    step = result.steps["hopeless"]
    assert step.status is StepStatus.FAILED
    assert step.attempts == 3  # the first attempt and retries=2
    assert wf.calls(result.run_id, "hopeless") == 3
    assert step.error_type is not None and "FlakyModelError" in step.error_type
    assert step.error is not None and "provider returned 503" in step.error
    assert [entry["status"] for entry in step.attempt_log] == ["failed"] * 3
    assert result.outputs["hopeless"] is None


def test_long_backoff_goes_back_through_the_broker(workers: Workers) -> None:
    assert wf.SLOW_BACKOFF.jitter == 0
    assert wf.SLOW_BACKOFF.initial > float(workers.env["ORCH_INLINE_RETRY_LIMIT"])

    result = wf.broker_retry.submit().wait(timeout=30)

    assert result.status is RunStatus.SUCCEEDED, result.error
    step = result.steps["patient"]
    assert step.status is StepStatus.SUCCEEDED
    assert step.output == "eventually"
    assert step.attempts == 2
    assert wf.calls(result.run_id, "patient") == 2
    assert [entry["status"] for entry in step.attempt_log] == ["failed", "succeeded"]
    # The retry was a second delivery of the message (countdown), not a sleep in the worker.
    assert step.deliveries >= 2
    # ... which waited out the backoff before running again.
    first, second = step.attempt_log
    assert (second["started_at"] - first["started_at"]).total_seconds() >= 0.45


def test_broker_retried_step_latency_spans_all_its_attempts(workers: Workers) -> None:
    result = wf.broker_retry.submit().wait(timeout=30)

    assert result.status is RunStatus.SUCCEEDED, result.error
    step = result.steps["patient"]
    first_attempt = step.attempt_log[0]["started_at"]
    assert step.started_at is not None and step.started_at <= first_attempt
    # Two attempts 0.5 s apart: the step took at least the backoff.
    assert step.latency_ms is not None and step.latency_ms >= 450, step.latency_ms


@pytest.mark.parametrize(
    ("workflow", "pool"),
    [(wf.timeout_prefork, "prefork"), (wf.timeout_threads, "threads")],
    ids=["prefork", "threads"],
)
def test_per_attempt_timeout(workers: Workers, workflow: Workflow, pool: str,
                             redis_service: redis.Redis) -> None:
    handle = workflow.submit()
    try:
        # Each attempt blocks until released, after the run: the run ending at all means
        # the timeout did not wait for the attempts.
        result = handle.wait(timeout=30)
    finally:
        release = wf.sleep_release_key(handle.run_id)
        redis_service.rpush(release, "go", "go")
        redis_service.expire(release, 600)

    step = result.steps["sleepy"]
    assert step.status is StepStatus.FAILED, statuses(result)
    assert result.status is RunStatus.FAILED
    assert step.error_type is not None and "StepTimeout" in step.error_type
    assert step.attempts == 2  # timeout applies per attempt, retries=1
    assert wf.calls(result.run_id, "sleepy") == 2
    assert [entry["error_type"] for entry in step.attempt_log] == [step.error_type] * 2
    # Served by the worker with that pool.
    (worker,) = [w for w in workers.started if w.nodename == step.worker]
    assert worker.pool == pool
    # Two attempts cut at 0.5 s each.
    assert all("timeout of 0.5 s" in (entry["error"] or "") for entry in step.attempt_log), (
        step.attempt_log)


def test_broker_retry_inside_a_parallel_branch_still_joins(workers: Workers) -> None:
    result = wf.branch_retry.submit(text="abc").wait(timeout=30)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    wobbly = result.steps["wobbly"]
    assert wobbly.deliveries >= 2
    assert wobbly.attempts == 2
    assert result.outputs == {"steady": "ABC", "wobbly": "cba", "merge": "ABC|cba"}
    assert result.steps["merge"].started_at >= wobbly.finished_at


def test_step_of_a_killed_pool_process_is_redelivered(workers: Workers) -> None:
    result = wf.crash.submit().wait(timeout=30)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    step = result.steps["fragile"]
    assert step.output == "survived"
    assert wf.calls(result.run_id, "fragile") == 2
    assert step.deliveries == 2
    assert step.attempts == 1  # the killed attempt never got recorded

