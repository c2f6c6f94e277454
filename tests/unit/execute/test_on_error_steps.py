"""``on_error`` at step level: every kind mapped to every action, on an in-process worker.

The step raises the failure of the kind it is given; each workflow maps every kind to one
action. The defaults (retries=2, a fallback) would retry twice and answer the fallback:
each action's outcome differs from that.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestration import (
    BudgetExceeded,
    GateFailed,
    InvalidModelOutput,
    ProviderError,
    RateLimited,
    RunStatus,
    StepStatus,
    StepTimeout,
    Workflow,
)
from orchestration.app import Orchestrator
from orchestration.errors import ErrorKind
from orchestration.testing import embedded_orchestrator

FAILURES: dict[str, Any] = {
    "timeout": lambda: StepTimeout("attempt ran past 5 s"),
    "model_unavailable": lambda: ProviderError("HTTP 503 from m", status=503),
    "rate_limited": lambda: RateLimited("limit model:m full until the deadline"),
    "invalid_output": lambda: InvalidModelOutput("no valid JSON after 3 call(s)"),
    "gate_failed": lambda: GateFailed("too short"),
    "budget_exceeded": lambda: BudgetExceeded("spent $1 of max_cost $1"),
    "error": lambda: ValueError("a bug"),
}
ACTIONS = ["retry(1)", "route_to_fallback", "skip", "fail", "escalate"]
CALLS: dict[str, int] = {}


def flow_name(action: str) -> str:
    return "onerr_" + action.replace("(", "").replace(")", "")


def declare(orch: Orchestrator) -> SimpleNamespace:
    flows: dict[str, Workflow] = {}
    for action in ACTIONS:
        wf = Workflow(flow_name(action), app=orch)

        @wf.task(retries=2, backoff=0.01, fallback="fallback answer",
                 on_error={kind: action for kind in FAILURES})
        def work(kind: str, key: str) -> str:
            CALLS[key] = CALLS.get(key, 0) + 1
            raise FAILURES[kind]()

        @wf.task
        def after(work: str | None) -> str:
            return f"after got {work!r}"

        flows[action] = wf

    plain = Workflow("onerr_defaults", app=orch)

    @plain.task(retries=2, backoff=0.01, fallback="fallback answer",
                on_error={"timeout": "fail"})  # no entry for the other kinds
    def defaults(kind: str, key: str) -> str:
        CALLS[key] = CALLS.get(key, 0) + 1
        raise FAILURES[kind]()

    timed = Workflow("onerr_timeout", app=orch)

    @timed.task(timeout=0.2, on_error={"timeout": "retry(3)"})
    def slow(key: str) -> str:
        CALLS[key] = CALLS.get(key, 0) + 1
        time.sleep(5)
        return "never"

    overriding = Workflow("onerr_override", app=orch)

    @overriding.task(retries=5, backoff=0.01, on_error={"error": "retry(1)"})
    def broken(key: str) -> str:
        CALLS[key] = CALLS.get(key, 0) + 1
        raise ValueError("always")

    gated = Workflow("onerr_gate", app=orch)

    @gated.task(retries=3, backoff=0.01, gate=lambda out: len(out) > 10 or "too short",
                on_error={"gate_failed": "skip"})
    def short() -> str:
        return "tiny"

    @gated.task(critical=False)
    def report(short: str | None) -> str:
        return f"short was {short!r}"

    return SimpleNamespace(flows=flows, plain=plain, timed=timed, overriding=overriding,
                           gated=gated, orch=orch)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    directory: Path = tmp_path_factory.mktemp("on_error")
    with embedded_orchestrator(directory, redis_url=None) as orch:
        yield declare(orch)


def wait_for_status(env: SimpleNamespace, run_id: str, status: RunStatus) -> None:
    deadline = time.monotonic() + 10
    while env.orch.store.run_status(run_id) is not status:
        assert time.monotonic() < deadline, f"run {run_id} never became {status}"
        time.sleep(0.02)


@pytest.mark.parametrize("kind", list(FAILURES))
def test_retry_n_retries_that_kind_n_times_then_the_fallback(env: SimpleNamespace,
                                                             kind: str) -> None:
    key = f"retry-{kind}"
    result = env.flows["retry(1)"].run(kind=kind, key=key, timeout=20)
    step = result.steps["work"]
    assert CALLS[key] == 2  # retry(1), not retries=2
    assert (step.status, step.output) == (StepStatus.FALLBACK, "fallback answer")
    assert step.policies == [f"{kind}: retry(1)"] * 2
    assert [a["error_kind"] for a in step.attempt_log] == [kind, kind]


@pytest.mark.parametrize("kind", list(FAILURES))
def test_route_to_fallback_answers_the_fallback_at_once(env: SimpleNamespace,
                                                        kind: str) -> None:
    key = f"route-{kind}"
    result = env.flows["route_to_fallback"].run(kind=kind, key=key, timeout=20)
    step = result.steps["work"]
    assert CALLS[key] == 1
    assert (step.status, step.output, step.attempts) == (StepStatus.FALLBACK,
                                                        "fallback answer", 1)
    assert step.policies == [f"{kind}: route_to_fallback"]


@pytest.mark.parametrize("kind", list(FAILURES))
def test_skip_records_the_step_skipped_and_dependents_receive_none(env: SimpleNamespace,
                                                                   kind: str) -> None:
    key = f"skip-{kind}"
    result = env.flows["skip"].run(kind=kind, key=key, timeout=20)
    step = result.steps["work"]
    assert CALLS[key] == 1
    assert result.status is RunStatus.SUCCEEDED
    assert step.status is StepStatus.SKIPPED
    assert step.error is not None and step.error.startswith(f"skipped by on_error ({kind}: skip)")
    assert result.outputs["after"] == "after got None"
    assert step.policies == [f"{kind}: skip"]


@pytest.mark.parametrize("kind", list(FAILURES))
def test_fail_fails_now_without_retry_or_fallback(env: SimpleNamespace, kind: str) -> None:
    key = f"fail-{kind}"
    result = env.flows["fail"].run(kind=kind, key=key, timeout=20)
    step = result.steps["work"]
    assert CALLS[key] == 1
    assert (result.status, step.status, step.output) == (RunStatus.FAILED, StepStatus.FAILED,
                                                         None)
    assert result.steps["after"].status is StepStatus.SKIPPED
    assert step.policies == [f"{kind}: fail"]


@pytest.mark.parametrize("kind", list(FAILURES))
def test_escalate_waits_for_a_person_whose_answer_is_the_output(env: SimpleNamespace,
                                                                kind: str) -> None:
    key = f"escalate-{kind}"
    handle = env.flows["escalate"].submit(kind=kind, key=key)
    wait_for_status(env, handle.run_id, RunStatus.WAITING)
    waiting = handle.result().steps["work"]
    assert waiting.status is StepStatus.WAITING
    assert waiting.error is not None
    assert waiting.error.startswith(f"escalated by on_error ({kind}: escalate): ")
    assert CALLS[key] == 1
    assert env.orch.approve(handle.run_id, {"answer": "by hand"}) == 1
    result = handle.wait(timeout=20)
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs["work"] == {"answer": "by hand"}
    assert result.outputs["after"] == "after got {'answer': 'by hand'}"
    assert CALLS[key] == 1  # approved: the step is not run again
    assert result.steps["work"].policies == [f"{kind}: escalate"]


@pytest.mark.parametrize("kind", [k for k in FAILURES if k != "timeout"])
def test_a_kind_without_an_entry_keeps_the_defaults(env: SimpleNamespace, kind: str) -> None:
    key = f"defaults-{kind}"
    result = env.plain.run(kind=kind, key=key, timeout=20)
    step = result.steps["defaults"]
    non_retryable = kind == "budget_exceeded"  # NonRetryableError, as without on_error
    assert CALLS[key] == (1 if non_retryable else 3)
    assert (step.status, step.output) == (StepStatus.FALLBACK, "fallback answer")
    assert step.policies == [None] * CALLS[key]
    assert {a["error_kind"] for a in step.attempt_log} == {kind}


def test_timeout_retry_3_makes_4_attempts(env: SimpleNamespace) -> None:
    result = env.timed.run(key="timed", timeout=30)
    step = result.steps["slow"]
    assert CALLS["timed"] == 4 and step.attempts == 4
    assert step.status is StepStatus.FAILED
    assert step.error_type == "orchestration.errors.StepTimeout"
    assert step.policies == ["timeout: retry(3)"] * 4
    assert [a["error_kind"] for a in step.attempt_log] == [ErrorKind.TIMEOUT.value] * 4


def test_retry_n_overrides_retries(env: SimpleNamespace) -> None:
    result = env.overriding.run(key="override", timeout=20)
    assert CALLS["override"] == 2 and result.steps["broken"].attempts == 2
    assert result.steps["broken"].policies == ["error: retry(1)"] * 2


def test_a_failed_gate_is_its_own_kind(env: SimpleNamespace) -> None:
    result = env.gated.run(timeout=20)
    step = result.steps["short"]
    assert (result.status, step.status, step.attempts) == (RunStatus.SUCCEEDED,
                                                          StepStatus.SKIPPED, 1)
    assert step.error is not None and "gate_failed: skip" in step.error
    assert step.attempt_log[0]["gate"] == "failed: too short"
    assert result.outputs["report"] == "short was None"
