"""Fallbacks and failure isolation end to end: what dependents and the run see."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from orchestration import Backoff, RunStatus, StepStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.testing import embedded_orchestrator
from tests.support.flows import Flows

FAST = Backoff(initial=0.01, maximum=0.01, jitter=0.0)


flow = Flows()


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SimpleNamespace]]:
    """One orchestrator; every workflow is declared before its worker starts."""
    with embedded_orchestrator(tmp_path_factory.mktemp("failures")) as orch:
        yield flow.build(orch)


# -- fallbacks -----------------------------------------------------------------------------


@flow
def fallbacks(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(wf=Workflow("fallbacks", app=app))

    @ns.wf.task(fallback="support_tier_1")
    def route(text: str) -> str:
        raise RuntimeError("router down")

    @ns.wf.task(fallback=lambda text: text.split()[0].lower(), retries=1, backoff=FAST)
    def label(text: str) -> str:
        raise RuntimeError("classifier down")

    @ns.wf.task
    def notify(route: str, label: str) -> str:
        return f"{label} -> {route}"

    return ns


def test_fallback_value_and_callable_reach_dependents(flows: dict[str, SimpleNamespace]) -> None:
    result = flows["fallbacks"].wf.run(text="URGENT cannot login", timeout=10)
    route, label = result.steps["route"], result.steps["label"]
    assert result.status is RunStatus.SUCCEEDED
    assert (route.status, route.output) == (StepStatus.FALLBACK, "support_tier_1")
    assert "router down" in (route.error or "")
    assert (label.status, label.output, label.attempts) == (StepStatus.FALLBACK, "urgent", 2)
    assert result.outputs["notify"] == "urgent -> support_tier_1"


@flow
def failing_fallback(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(wf=Workflow("failing_fallback", app=app))

    @ns.wf.task(fallback=lambda x: 1 / 0)
    def broken(x: int) -> int:
        raise ValueError("primary failed")

    return ns


def test_failing_fallback_fails_the_step(flows: dict[str, SimpleNamespace]) -> None:
    result = flows["failing_fallback"].wf.run(x=1, timeout=10)
    step = result.steps["broken"]
    assert (step.status, step.error_type) == (StepStatus.FAILED, "builtins.ValueError")
    assert "primary failed" in (step.error or "") and "fallback failed" in (step.error or "")
    assert "ZeroDivisionError" in (step.error or "")
    assert result.status is RunStatus.FAILED


# -- failure isolation ---------------------------------------------------------------------


@flow
def critical_failure(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=[], wf=Workflow("critical_failure", app=app))
    wf = ns.wf

    @wf.task
    def root(x: int) -> int:
        return x + 1

    @wf.task
    def bad(root: int) -> int:
        raise ValueError("model returned garbage")

    @wf.task
    def after_bad(bad: int) -> int:
        ns.calls.append("after_bad")
        return bad

    @wf.task
    def after_after(after_bad: int) -> int:
        ns.calls.append("after_after")
        return after_bad

    @wf.task
    def good(root: int) -> int:
        return root * 10

    @wf.task
    def after_good(good: int) -> int:
        return good + 1

    return ns


def test_critical_failure_skips_dependents_only(flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["critical_failure"]
    result = ns.wf.run(x=1, timeout=10)
    status = {name: step.status for name, step in result.steps.items()}
    assert result.status is RunStatus.FAILED
    assert "bad" in (result.error or "") and result.error_type == "StepFailed"
    assert status == {"root": StepStatus.SUCCEEDED, "bad": StepStatus.FAILED,
                      "after_bad": StepStatus.SKIPPED, "after_after": StepStatus.SKIPPED,
                      "good": StepStatus.SUCCEEDED, "after_good": StepStatus.SUCCEEDED}
    assert ns.calls == []
    assert result.outputs["good"] == 20 and result.outputs["after_good"] == 21
    assert "bad unavailable" in (result.steps["after_bad"].error or "")


@flow
def non_critical(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(wf=Workflow("non_critical", app=app))

    @ns.wf.task(critical=False)
    def enrich(text: str) -> str:
        raise TimeoutError("enrichment service slow")

    @ns.wf.task
    def reply(text: str, enrich: str | None) -> str:
        return f"{text} ({'no context' if enrich is None else enrich})"

    return ns


def test_non_critical_failure_passes_none(flows: dict[str, SimpleNamespace]) -> None:
    result = flows["non_critical"].wf.run(text="hello", timeout=10)
    assert result.status is RunStatus.SUCCEEDED and result.error is None
    assert result.steps["enrich"].status is StepStatus.FAILED
    assert result.outputs == {"enrich": None, "reply": "hello (no context)"}
