"""``run_step`` called directly, as a worker would: duplicates, skips, re-deliveries, finalising."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from orchestration import Backoff, RunStatus, StepContext, StepStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.core.envelope import Envelope
from orchestration.errors import Reschedule
from orchestration.execute.runtime import Delivery, run_step
from orchestration.store.repository import PlannedStep

LIMIT = 64
DELIVERY = Delivery(worker="w1", task_id="t1", inline_limit=LIMIT, inline_retry_limit=2.0)


def start_run(orchestrator: Orchestrator, wf: Workflow,
              **inputs: Any) -> tuple[str, dict[str, Any]]:
    """Write the run row like submit does, without dispatching; return (run id, message)."""
    compiled = wf.validate()
    run_id = str(uuid.uuid4())
    planned = [PlannedStep(name, bound.spec.output, bound.queue, bound.spec.model,
                           bound.spec.critical) for name, bound in compiled.steps.items()]
    orchestrator.store.create_run(run_id, wf.name, compiled.version, inputs, planned)
    return run_id, Envelope.for_inputs(run_id, inputs, LIMIT).to_message()


def deliver(wf: Workflow, orchestrator: Orchestrator, step: str, message: Any,
            delivery: Delivery = DELIVERY, **options: Any) -> dict[str, Any]:
    bound = wf.validate().steps[step]
    return run_step(bound, message, orchestrator.store, delivery, **options)


def _pipeline(orchestrator: Orchestrator, calls: list[str], *, fail: bool = False,
              critical: bool = True) -> Workflow:
    wf = Workflow("pipeline", app=orchestrator)

    @wf.task(critical=critical)
    def extract(text: str) -> str:
        calls.append("extract")
        if fail:
            raise ValueError("cannot parse")
        return text.strip()

    @wf.task
    def summarise(extract: str | None) -> str:
        calls.append("summarise")
        return f"summary of {extract}"

    return wf


def test_duplicate_delivery_runs_the_function_once(orchestrator: Orchestrator) -> None:
    calls: list[str] = []
    wf = _pipeline(orchestrator, calls)
    run_id, message = start_run(orchestrator, wf, text=" hello ")
    first = deliver(wf, orchestrator, "extract", message)
    second = deliver(wf, orchestrator, "extract", message)
    assert calls == ["extract"]
    assert first["run"] == second["run"] == run_id
    assert first["out"] == second["out"] == {"text": " hello ", "extract": "hello"}
    step = orchestrator.store.get_run(run_id).steps["extract"]
    assert (step.status, step.attempts, step.deliveries, step.output) == (
        StepStatus.SUCCEEDED, 1, 1, "hello")


def test_duplicate_of_a_critical_failure_passes_the_failure_on(
        orchestrator: Orchestrator) -> None:
    calls: list[str] = []
    wf = _pipeline(orchestrator, calls, fail=True)
    run_id, message = start_run(orchestrator, wf, text="x")
    first = deliver(wf, orchestrator, "extract", message)
    second = deliver(wf, orchestrator, "extract", message)
    assert calls == ["extract"]
    assert first["out"] == second["out"] == {"text": "x"}
    assert second["blocked"] == ["extract"] and second["failed"] == ["extract"]
    assert first["blocked"] == ["extract"] and first["failed"] == ["extract"]
    assert "extract" not in first["out"]
    # its dependent is skipped without being called, and blocks its own dependents
    third = deliver(wf, orchestrator, "summarise", second, finalize=True)
    assert calls == ["extract"] and third["blocked"] == ["extract", "summarise"]
    run = orchestrator.store.get_run(run_id)
    assert run.steps["summarise"].status is StepStatus.SKIPPED
    assert (run.status, run.error) == (RunStatus.FAILED, "critical step(s) failed: extract")


def test_non_critical_failure_passes_none(orchestrator: Orchestrator) -> None:
    calls: list[str] = []
    wf = _pipeline(orchestrator, calls, fail=True, critical=False)
    run_id, message = start_run(orchestrator, wf, text="x")
    after = deliver(wf, orchestrator, "extract", message)
    assert after["out"]["extract"] is None and "blocked" not in after
    last = deliver(wf, orchestrator, "summarise", after, finalize=True)
    assert last["out"]["summarise"] == "summary of None"
    assert orchestrator.store.get_run(run_id).status is RunStatus.SUCCEEDED


def test_finalize_marks_the_run_succeeded_once(orchestrator: Orchestrator) -> None:
    calls: list[str] = []
    wf = _pipeline(orchestrator, calls)
    run_id, message = start_run(orchestrator, wf, text="a")
    middle = deliver(wf, orchestrator, "extract", message)
    assert orchestrator.store.run_status(run_id) is RunStatus.RUNNING
    deliver(wf, orchestrator, "summarise", middle, finalize=True)
    run = orchestrator.store.get_run(run_id)
    assert run.status is RunStatus.SUCCEEDED and run.finished_at is not None
    deliver(wf, orchestrator, "summarise", middle, finalize=True)  # duplicate of the last step
    again = orchestrator.store.get_run(run_id)
    assert again.finished_at == run.finished_at and calls == ["extract", "summarise"]


def test_large_output_is_passed_by_reference(orchestrator: Orchestrator) -> None:
    calls: list[str] = []
    wf = _pipeline(orchestrator, calls)
    run_id, message = start_run(orchestrator, wf, text="z" * 200)
    assert message["ref"] == {"text": "$input"} and "text" not in message["out"]
    middle = deliver(wf, orchestrator, "extract", message)
    assert middle["ref"] == {"text": "$input", "extract": "extract"}
    assert "z" * 100 not in str(middle)
    last = deliver(wf, orchestrator, "summarise", middle)
    assert orchestrator.store.load_output(run_id, "summarise") == f"summary of {'z' * 200}"
    assert last["ref"]["summarise"] == "summarise"


def test_redelivery_of_a_crashed_attempt_runs_it_again(orchestrator: Orchestrator) -> None:
    calls: list[str] = []
    wf = _pipeline(orchestrator, calls)
    run_id, message = start_run(orchestrator, wf, text="a")
    # a worker claimed the step, then died before recording anything
    claim = orchestrator.store.claim_step(run_id, "extract", worker="dead", task_id="t0")
    assert claim.proceed
    deliver(wf, orchestrator, "extract", message)
    step = orchestrator.store.get_run(run_id).steps["extract"]
    assert calls == ["extract"]
    assert (step.status, step.deliveries, step.worker) == (StepStatus.SUCCEEDED, 2, "w1")


def test_reschedule_records_attempts_then_continues(orchestrator: Orchestrator) -> None:
    attempts: list[int] = []
    wf = Workflow("reschedule", app=orchestrator)

    @wf.task(retries=2, backoff=Backoff(initial=5.0, maximum=5.0, jitter=0.0))
    def flaky(x: int, ctx: StepContext) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("rate limited")
        return x

    run_id, message = start_run(orchestrator, wf, x=4)
    with pytest.raises(Reschedule) as info:  # a 5 s wait is not slept in the worker
        deliver(wf, orchestrator, "flaky", message)
    assert info.value.delay == 5.0
    step = orchestrator.store.get_run(run_id).steps["flaky"]
    assert (step.status, step.attempts, step.error_type) == (
        StepStatus.RETRYING, 1, "builtins.ConnectionError")
    after = deliver(wf, orchestrator, "flaky", message, finalize=True)  # the broker's retry
    run = orchestrator.store.get_run(run_id)
    assert attempts == [1, 2] and after["out"]["flaky"] == 4
    assert (run.steps["flaky"].status, run.steps["flaky"].attempts) == (StepStatus.SUCCEEDED, 2)
    assert [a["status"] for a in run.steps["flaky"].attempt_log] == ["failed", "succeeded"]
    assert run.status is RunStatus.SUCCEEDED


def test_envelopes_of_another_run_are_rejected(orchestrator: Orchestrator) -> None:
    wf = _pipeline(orchestrator, [])
    _, message = start_run(orchestrator, wf, text="a")
    _, other = start_run(orchestrator, wf, text="b")
    with pytest.raises(ValueError, match="envelopes of two runs merged"):
        deliver(wf, orchestrator, "extract", [message, other])
