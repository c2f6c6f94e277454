"""Quality gates: the pure verdicts, and gates with retries and ``on_retry`` end to end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel

from orchestration import (
    Backoff,
    RunStatus,
    StepContext,
    StepStatus,
    Workflow,
    WorkflowDefinitionError,
)
from orchestration.app import Orchestrator
from orchestration.define.gates import PASSED, Gate
from orchestration.testing import embedded_orchestrator
from tests.support.flows import Flows

FAST = Backoff(initial=0.01, maximum=0.01, jitter=0.0)
INLINE_RETRY_LIMIT = 0.2  # waits longer than this go back to the broker


class Ticket(BaseModel):
    category: str
    priority: int


def long_enough(text: str) -> bool | str:
    return True if len(text) >= 20 else f"too short: {len(text)} chars"


def never_good(output: Any) -> bool:
    return False


# -- pure verdicts ------------------------------------------------------------------------


@pytest.mark.parametrize(("check", "output", "verdict"), [
    (lambda out: True, "x", None),
    (lambda out: None, "x", None),
    (never_good, "x", "never_good rejected the output"),
    (long_enough, "a" * 20, None),
    (long_enough, "short", "too short: 5 chars"),
    (Ticket, {"category": "login", "priority": 2}, None),
    (Ticket, {"category": "login"}, "Ticket: priority: Field required"),
    (Ticket, {"category": "login", "priority": "high"}, "Ticket: priority: Input should be "
                                                        "a valid integer, unable to parse "
                                                        "string as an integer"),
    (Ticket, ["not", "an", "object"], "Ticket: output: Input should be a valid dictionary or "
                                      "instance of Ticket"),
])
def test_verdicts(check: Any, output: Any, verdict: str | None) -> None:
    assert Gate(check, "step wf.s").verdict(output) == verdict


def test_gate_names_its_check() -> None:
    assert repr(Gate(long_enough, "here")) == "Gate(long_enough)"
    assert Gate(Ticket, "here").name == "Ticket"


@pytest.mark.parametrize("check", [42, "long_enough", Ticket(category="x", priority=1)])
def test_non_callable_gate_is_a_definition_error(check: Any) -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"step wf\.s: gate must be a callable"):
        Gate(check, "step wf.s")


def test_bad_gate_or_on_retry_fails_at_decoration(tmp_path: Path) -> None:
    with embedded_orchestrator(tmp_path) as orch:
        wf = Workflow("bad_options", app=orch)

        def step() -> int:
            return 1

        with pytest.raises(WorkflowDefinitionError,
                           match=r"step bad_options\.step: gate must be a callable"):
            wf.task(gate="long_enough")(step)
        with pytest.raises(WorkflowDefinitionError,
                           match=r"step bad_options\.step: on_retry must be callable"):
            wf.task(on_retry={"temperature": 0.1})(step)
        assert wf.steps == {}
        assert wf.task(gate=long_enough, on_retry=lambda *a: None)(step).spec.gate is not None


# -- end to end ---------------------------------------------------------------------------


flow = Flows()


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SimpleNamespace]]:
    """One orchestrator; every workflow is declared before its worker starts."""
    directory: Path = tmp_path_factory.mktemp("gates")
    with embedded_orchestrator(directory, inline_retry_limit=INLINE_RETRY_LIMIT) as orch:
        yield flow.build(orch)


def escalate(ns: SimpleNamespace) -> Callable[[int, BaseException, dict[str, Any]], Any]:
    def on_retry(attempt: int, error: BaseException, params: dict[str, Any]) -> dict[str, Any]:
        ns.retries.append((attempt, type(error).__name__, dict(params)))
        return {**params, "detail": params.get("detail", 0) + 1}
    return on_retry


@flow
def gate_then_pass(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(params=[], retries=[], wf=Workflow("gate_then_pass", app=app))

    @ns.wf.task(retries=3, backoff=FAST, gate=long_enough, on_retry=escalate(ns))
    def draft(topic: str, ctx: StepContext) -> str:
        ns.params.append(dict(ctx.params))
        detail = ctx.params.get("detail", 0)
        return topic if detail < 2 else f"{topic}, explained at length"

    return ns


def test_gate_failure_is_retried_with_params_from_on_retry(
        flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["gate_then_pass"]
    result = ns.wf.run(topic="login", timeout=10)
    step = result.steps["draft"]
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs["draft"] == "login, explained at length"
    assert ns.params == [{}, {"detail": 1}, {"detail": 2}]
    assert ns.retries == [(1, "GateFailed", {}), (2, "GateFailed", {"detail": 1})]
    assert (step.status, step.attempts, step.gate) == (StepStatus.SUCCEEDED, 3, PASSED)
    assert [a["gate"] for a in step.attempt_log] == [
        "failed: too short: 5 chars", "failed: too short: 5 chars", "passed"]
    assert [a["status"] for a in step.attempt_log] == ["failed", "failed", "succeeded"]
    assert step.attempt_log[0]["error_type"] == "orchestration.errors.GateFailed"
    assert "quality gate failed: too short: 5 chars" in step.attempt_log[0]["error"]


@flow
def gate_exhausted(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(wf=Workflow("gate_exhausted", app=app))

    @ns.wf.task(retries=1, backoff=FAST, gate=never_good)
    def judged(x: int) -> int:
        return x

    @ns.wf.task(retries=1, backoff=FAST, gate=never_good, fallback=-1)
    def judged_with_fallback(x: int) -> int:
        return x

    return ns


def test_gate_that_never_passes_fails_the_step(flows: dict[str, SimpleNamespace]) -> None:
    result = flows["gate_exhausted"].wf.run(x=7, timeout=10)
    step = result.steps["judged"]
    verdict = "failed: never_good rejected the output"
    assert (step.status, step.attempts, step.gate) == (StepStatus.FAILED, 2, verdict)
    assert step.error_type == "orchestration.errors.GateFailed"
    assert [a["gate"] for a in step.attempt_log] == [verdict, verdict]
    fallback = result.steps["judged_with_fallback"]
    assert (fallback.status, fallback.output, fallback.gate) == (StepStatus.FALLBACK, -1,
                                                                 verdict)
    assert result.status is RunStatus.FAILED


@flow
def pydantic_gate(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(wf=Workflow("pydantic_gate", app=app))

    @ns.wf.task(retries=2, backoff=FAST, gate=Ticket)
    def classify(text: str, ctx: StepContext) -> dict[str, Any]:
        if ctx.attempt == 1:
            return {"category": text}
        return {"category": text, "priority": 2}

    return ns


def test_pydantic_gate(flows: dict[str, SimpleNamespace]) -> None:
    result = flows["pydantic_gate"].wf.run(text="login", timeout=10)
    step = result.steps["classify"]
    assert result.outputs["classify"] == {"category": "login", "priority": 2}
    assert [a["gate"] for a in step.attempt_log] == [
        "failed: Ticket: priority: Field required", "passed"]
    assert step.gate == PASSED


@flow
def on_retry_any_failure(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(params=[], retries=[], wf=Workflow("on_retry_any_failure", app=app))

    def keep(attempt: int, error: BaseException, params: dict[str, Any]) -> None:
        ns.retries.append((attempt, type(error).__name__, str(error)))

    @ns.wf.task(retries=2, backoff=FAST, on_retry=escalate(ns))
    def crashes_once(ctx: StepContext) -> dict[str, Any]:
        ns.params.append(dict(ctx.params))
        if ctx.attempt == 1:
            raise ValueError("boom")
        return dict(ctx.params)

    @ns.wf.task(retries=1, backoff=FAST, gate=long_enough, on_retry=keep)
    def unchanged(ctx: StepContext) -> str:
        ns.params.append(("unchanged", dict(ctx.params)))
        return "brief" if ctx.attempt == 1 else "long enough to pass the gate"

    return ns


def test_on_retry_sees_any_failure_and_none_keeps_params(
        flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["on_retry_any_failure"]
    result = ns.wf.run(timeout=10)
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs["crashes_once"] == {"detail": 1}
    crashed = result.steps["crashes_once"]
    assert crashed.attempt_log[0]["gate"] is None  # no output, so no verdict
    assert crashed.gate is None
    assert (1, "ValueError", {}) in ns.retries
    assert (1, "GateFailed", "quality gate failed: too short: 5 chars") in ns.retries
    assert [p for p in ns.params if isinstance(p, tuple)] == [("unchanged", {}),
                                                               ("unchanged", {})]


@flow
def rescheduled_retry(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(params=[], retries=[], wf=Workflow("rescheduled_retry", app=app))
    slow = Backoff(initial=INLINE_RETRY_LIMIT + 0.1, maximum=1.0, jitter=0.0)

    @ns.wf.task(retries=1, backoff=slow, gate=long_enough, on_retry=escalate(ns))
    def draft(topic: str, ctx: StepContext) -> str:
        ns.params.append(dict(ctx.params))
        return topic if not ctx.params else f"{topic}, explained at length"

    return ns


def test_on_retry_params_survive_a_rescheduled_retry(
        flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["rescheduled_retry"]
    result = ns.wf.run(topic="login", timeout=10)
    step = result.steps["draft"]
    assert step.deliveries == 2  # the retry really went back through the broker
    assert ns.retries == [(1, "GateFailed", {})]
    assert ns.params == [{}, {"detail": 1}]
    assert step.status is StepStatus.SUCCEEDED
