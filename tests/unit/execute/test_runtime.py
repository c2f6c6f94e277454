"""Step policies end to end on the in-process worker: retries, timeouts, fallbacks, failures."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestration import (
    Backoff,
    NonRetryableError,
    RunStatus,
    StepContext,
    StepStatus,
    WaitTimeout,
    Workflow,
)
from orchestration.app import Orchestrator
from orchestration.testing import embedded_orchestrator
from tests.support.flows import Flows

FAST = Backoff(initial=0.01, maximum=0.01, jitter=0.0)
TIMEOUT_ERROR = "orchestration.errors.StepTimeout"


flow = Flows()


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SimpleNamespace]]:
    """One orchestrator; every workflow is declared before its worker starts."""
    directory: Path = tmp_path_factory.mktemp("runtime")
    with embedded_orchestrator(directory) as orch:
        yield flow.build(orch)


# -- retries -------------------------------------------------------------------------------


@flow
def retry_then_succeed(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(attempts=[], wf=Workflow("retry_then_succeed", app=app))

    @ns.wf.task(retries=3, backoff=FAST)
    def flaky(x: int, ctx: StepContext) -> int:
        ns.attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} dropped")
        return x * 2

    return ns


def test_retries_then_success(flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["retry_then_succeed"]
    result = ns.wf.run(x=21, timeout=10)
    step = result.steps["flaky"]
    assert result.status is RunStatus.SUCCEEDED and result.outputs == {"flaky": 42}
    assert ns.attempts == [1, 2, 3]
    assert (step.status, step.attempts, step.retries, step.deliveries) == (
        StepStatus.SUCCEEDED, 3, 2, 1)
    assert [a["status"] for a in step.attempt_log] == ["failed", "failed", "succeeded"]
    assert [a["attempt"] for a in step.attempt_log] == [1, 2, 3]
    assert step.attempt_log[0]["error_type"] == "builtins.ConnectionError"
    assert "attempt 1 dropped" in step.attempt_log[0]["error"]


@flow
def retries_exhausted(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=[], wf=Workflow("retries_exhausted", app=app))

    @ns.wf.task(retries=2, backoff=FAST)
    def always_down(x: int) -> int:
        ns.calls.append(x)
        raise ConnectionError("provider down")

    return ns


def test_retries_exhausted_fail_the_run(flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["retries_exhausted"]
    result = ns.wf.run(x=1, timeout=10)
    step = result.steps["always_down"]
    assert result.status is RunStatus.FAILED
    assert (result.error_type, result.error) == ("StepFailed",
                                                 "critical step(s) failed: always_down")
    assert (step.status, step.attempts, step.error_type) == (
        StepStatus.FAILED, 3, "builtins.ConnectionError")
    assert "provider down" in (step.error or "")
    assert len(ns.calls) == 3 and result.outputs == {"always_down": None}


@flow
def non_retryable(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=[], wf=Workflow("non_retryable", app=app))

    @ns.wf.task(retries=3, backoff=FAST)
    def rejects(x: int) -> int:
        ns.calls.append("rejects")
        raise NonRetryableError("400 bad request")

    @ns.wf.task(retries=3, backoff=FAST, fallback="canned")
    def rejects_with_fallback(x: int) -> str:
        ns.calls.append("rejects_with_fallback")
        raise NonRetryableError("400 bad request")

    return ns


def test_non_retryable_error_is_not_retried(flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["non_retryable"]
    result = ns.wf.run(x=1, timeout=10)
    assert sorted(ns.calls) == ["rejects", "rejects_with_fallback"]  # one attempt each
    step = result.steps["rejects"]
    assert (step.status, step.attempts, step.error_type) == (
        StepStatus.FAILED, 1, "orchestration.errors.NonRetryableError")
    # the fallback still applies to a non-retryable failure
    assert result.steps["rejects_with_fallback"].status is StepStatus.FALLBACK
    assert result.outputs["rejects_with_fallback"] == "canned"
    assert result.status is RunStatus.FAILED


@flow
def not_json(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=0, wf=Workflow("not_json", app=app))

    @ns.wf.task(retries=2, backoff=FAST)
    def tags(x: int) -> Any:
        ns.calls += 1
        return {"tags": {"billing", "login"}}

    @ns.wf.task
    def count(tags: dict[str, Any]) -> int:
        return len(tags)

    return ns


def test_non_json_output_fails_without_retry(flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["not_json"]
    result = ns.wf.run(x=1, timeout=10)
    step = result.steps["tags"]
    assert ns.calls == 1
    assert (step.status, step.attempts, step.error_type) == (
        StepStatus.FAILED, 1, "orchestration.errors.OutputNotSerializable")
    assert "not_json.tags" in (step.error or "") and "not JSON" in (step.error or "")
    assert result.steps["count"].status is StepStatus.SKIPPED
    assert result.status is RunStatus.FAILED


@flow
def nan_output(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(wf=Workflow("nan_output", app=app))

    @ns.wf.task
    def ratio(x: int) -> float:
        return float("nan")

    return ns


def test_nan_output_is_not_json(flows: dict[str, SimpleNamespace]) -> None:
    result = flows["nan_output"].wf.run(x=1, timeout=10)
    assert result.steps["ratio"].error_type == "orchestration.errors.OutputNotSerializable"


# -- timeouts ------------------------------------------------------------------------------


@flow
def sleepy(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(wf=Workflow("sleepy", app=app), release=threading.Event())

    @ns.wf.task(timeout=0.2)
    def slow(x: int) -> int:
        ns.release.wait(30)  # blocks in C until the test lets it go
        return x

    return ns


def test_timeout_fails_the_attempt_without_waiting_for_it(
        flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["sleepy"]
    try:
        # The attempt returns only once released, after the run: the run ending at all
        # means the timeout failed the attempt without waiting for it.
        result = ns.wf.run(x=1, timeout=10)
    finally:
        ns.release.set()
    step = result.steps["slow"]
    assert (step.status, step.error_type) == (StepStatus.FAILED, TIMEOUT_ERROR)
    assert "timeout of 0.2 s" in (step.error or "")
    assert result.status is RunStatus.FAILED


@flow
def interrupted(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(unwound=threading.Event(), wf=Workflow("interrupted", app=app))

    @ns.wf.task(timeout=0.2)
    def spins(x: int) -> int:
        try:
            for _ in range(1000):  # 10 s unless the abandoned attempt is interrupted
                time.sleep(0.01)
            return x
        finally:
            ns.unwound.set()

    return ns


def test_timed_out_attempt_is_interrupted(flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["interrupted"]
    result = ns.wf.run(x=1, timeout=10)
    assert result.steps["spins"].error_type == TIMEOUT_ERROR
    assert ns.unwound.wait(timeout=2.0), "the abandoned attempt kept running"


@flow
def timeout_then_retry(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(wf=Workflow("timeout_then_retry", app=app))

    @ns.wf.task(timeout=0.3, retries=1, backoff=FAST)
    def second_try(x: int, ctx: StepContext) -> int:
        if ctx.attempt == 1:
            for _ in range(1000):
                time.sleep(0.01)
        return x + ctx.attempt

    return ns


def test_timed_out_attempt_is_retried(flows: dict[str, SimpleNamespace]) -> None:
    result = flows["timeout_then_retry"].wf.run(x=10, timeout=10)
    step = result.steps["second_try"]
    assert result.outputs == {"second_try": 12}
    assert [a["status"] for a in step.attempt_log] == ["failed", "succeeded"]
    assert step.attempt_log[0]["error_type"] == TIMEOUT_ERROR


# -- the step context ----------------------------------------------------------------------


@flow
def context(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(wf=Workflow("context", app=app))

    @ns.wf.task(timeout=5)
    def who(x: int, ctx: StepContext) -> dict[str, Any]:
        ctx.record_cost(0.25, model="house-model")
        return {"run_id": ctx.run_id, "workflow": ctx.workflow, "step": ctx.step,
                "attempt": ctx.attempt, "remaining": ctx.remaining()}

    @ns.wf.task
    def unbounded(x: int, ctx: StepContext) -> list[Any]:
        return [ctx.deadline, ctx.remaining(), ctx.step]

    return ns


def test_ctx_fields_and_cost(flows: dict[str, SimpleNamespace]) -> None:
    handle = flows["context"].wf.submit(x=1)
    result = handle.wait(timeout=10)
    who = result.outputs["who"]
    assert {k: who[k] for k in ("run_id", "workflow", "step", "attempt")} == {
        "run_id": handle.run_id, "workflow": "context", "step": "who", "attempt": 1}
    assert 0 < who["remaining"] <= 5
    assert result.outputs["unbounded"] == [None, None, "unbounded"]
    step = result.steps["who"]
    assert (step.cost_usd, step.model) == (0.25, "house-model")
    assert result.cost_usd == pytest.approx(0.25)


# -- waiting -------------------------------------------------------------------------------


@flow
def gated(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(gate=threading.Event(), wf=Workflow("gated", app=app))

    @ns.wf.task
    def held(x: int) -> int:
        if not ns.gate.wait(timeout=10):
            raise TimeoutError("the gate never opened")
        return x

    return ns


def test_wait_times_out_while_the_run_goes_on(flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["gated"]
    handle = ns.wf.submit(x=7)
    try:
        with pytest.raises(WaitTimeout, match=handle.run_id):
            handle.wait(timeout=0.3)
        assert handle.status() in (RunStatus.PENDING, RunStatus.RUNNING)
    finally:
        ns.gate.set()
    result = handle.wait(timeout=10)
    assert result.status is RunStatus.SUCCEEDED and result.outputs == {"held": 7}


@flow
def one_retry(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(wf=Workflow("one_retry", app=app))

    @ns.wf.task(retries=1, backoff=FAST)
    def flaky(x: int, ctx: StepContext) -> int:
        if ctx.attempt == 1:
            raise ConnectionError("dropped")
        return x

    return ns


def test_retry_under_warnings_as_errors(flows: dict[str, SimpleNamespace]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # as the repo's pytest config does
        result = flows["one_retry"].wf.run(x=3, timeout=10)
    assert result.steps["flaky"].attempt_log[0]["error_type"] == "builtins.ConnectionError"
    assert result.outputs == {"flaky": 3}
