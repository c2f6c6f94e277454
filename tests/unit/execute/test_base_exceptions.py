"""A step's SystemExit, KeyboardInterrupt or bare BaseException is a step failure.

End to end on the embedded worker (a threads pool of 4): before, such a step never
acknowledged its message and held its thread for good, so four of them stopped the
worker. Each is now a failed attempt under the step's policies (retries, fallback,
``critical``), recorded with the original exception, and the worker goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest

from orchestration import Backoff, RunStatus, StepStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.errors import StepAborted
from orchestration.execute.attempts import as_failure, describe
from orchestration.execute.timeouts import call_with_timeout
from orchestration.testing import embedded_orchestrator

FAST = Backoff(initial=0.01, maximum=0.01, jitter=0.0)
KINDS: dict[str, Callable[[], BaseException]] = {
    "exit": lambda: SystemExit(3),
    "interrupt": KeyboardInterrupt,
    "base": lambda: BaseException("bare"),
}
TYPES = {"exit": "builtins.SystemExit", "interrupt": "builtins.KeyboardInterrupt",
         "base": "builtins.BaseException"}


def _raise(kind: str) -> None:
    raise KINDS[kind]()


def _step_bodies(app: Orchestrator, ns: SimpleNamespace) -> None:
    """The step's own function raises: plain, under a timeout, with fallback, non-critical."""
    ns.plain = Workflow("base_plain", app=app)

    @ns.plain.task(retries=2, backoff=FAST)
    def body(kind: str) -> str:
        _raise(kind)
        return "unreachable"

    ns.timed = Workflow("base_timed", app=app)

    @ns.timed.task(timeout=30)  # the body runs in a thread of its own (timeouts.py)
    def timed_body(kind: str) -> str:
        _raise(kind)
        return "unreachable"

    ns.fallback = Workflow("base_fallback", app=app)

    @ns.fallback.task(fallback=lambda kind: f"fallback:{kind}")
    def rescued(kind: str) -> str:
        _raise(kind)
        return "unreachable"

    @ns.fallback.task
    def after(rescued: str) -> str:
        return f"after:{rescued}"

    ns.lenient = Workflow("base_lenient", app=app)

    @ns.lenient.task(critical=False)
    def optional(kind: str) -> str:
        _raise(kind)
        return "unreachable"

    @ns.lenient.task
    def summary(optional: str | None) -> str:
        return f"summary:{optional}"


def _around_the_body(app: Orchestrator, ns: SimpleNamespace) -> None:
    """What runs around a step's function raises: fallback, gate, when=, on_retry."""
    ns.failing_fallback = Workflow("base_failing_fallback", app=app)

    def broken_fallback(kind: str) -> str:
        _raise(kind)
        return "unreachable"

    @ns.failing_fallback.task(fallback=broken_fallback)
    def primary(kind: str) -> str:
        raise RuntimeError("primary failed")

    ns.gated = Workflow("base_gated", app=app)

    def gate(output: str) -> bool:
        _raise(output)
        return True

    @ns.gated.task(gate=gate, retries=1, backoff=FAST)
    def gated(kind: str) -> str:
        return kind

    ns.predicate = Workflow("base_when", app=app)

    def when(kind: str) -> bool:
        _raise(kind)
        return True

    @ns.predicate.task(when=when)
    def guarded(kind: str) -> str:
        return kind

    ns.hook = Workflow("base_on_retry", app=app)

    def on_retry(attempt: int, error: BaseException, params: dict[str, object]) -> None:
        raise SystemExit("on_retry gave up")

    @ns.hook.task(retries=1, backoff=FAST, on_retry=on_retry)
    def hooked(kind: str) -> str:
        raise RuntimeError("first failure")


def define(app: Orchestrator) -> SimpleNamespace:
    """Every place a step's own code runs, raising a BaseException of the kind asked."""
    ns = SimpleNamespace()
    _step_bodies(app, ns)
    _around_the_body(app, ns)
    ns.mapped = Workflow("base_map", app=app)

    @ns.mapped.task(map="kinds", concurrency=2)
    def element(kinds: str) -> str:
        if kinds != "ok":
            _raise(kinds)
        return "fine"

    ns.healthy = Workflow("base_healthy", app=app)

    @ns.healthy.task
    def ping(text: str) -> str:
        return f"pong:{text}"

    return ns


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """One orchestrator (4 worker threads); every workflow declared before it starts."""
    with embedded_orchestrator(tmp_path_factory.mktemp("base"), embedded_concurrency=4) as orch:
        yield define(orch)


def _still_serves(flows: SimpleNamespace, text: str) -> None:
    result = flows.healthy.run(text=text, timeout=20)
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs == {"ping": f"pong:{text}"}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_step_base_exception_is_a_failed_step_after_its_retries(
        flows: SimpleNamespace, kind: str) -> None:
    # Five runs per kind: more than the worker's four threads could ever hold.
    handles = [flows.plain.submit(kind=kind) for _ in range(5)]
    for handle in handles:
        result = handle.wait(timeout=20)
        step = result.steps["body"]
        assert result.status is RunStatus.FAILED
        assert (step.status, step.error_type, step.attempts) == (StepStatus.FAILED, TYPES[kind], 3)
        assert [a["error_type"] for a in step.attempt_log] == [TYPES[kind]] * 3
        assert [a["status"] for a in step.attempt_log] == ["failed"] * 3
    _still_serves(flows, f"after-{kind}")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_base_exception_under_a_timeout_is_a_failed_attempt(
        flows: SimpleNamespace, kind: str) -> None:
    result = flows.timed.run(kind=kind, timeout=20)
    step = result.steps["timed_body"]
    assert (step.status, step.error_type, step.attempts) == (StepStatus.FAILED, TYPES[kind], 1)
    _still_serves(flows, f"timed-{kind}")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fallback_and_non_critical_apply_to_base_exceptions(
        flows: SimpleNamespace, kind: str) -> None:
    rescued = flows.fallback.run(kind=kind, timeout=20)
    assert rescued.status is RunStatus.SUCCEEDED
    assert rescued.steps["rescued"].status is StepStatus.FALLBACK
    assert rescued.steps["rescued"].error_type == TYPES[kind]
    assert rescued.outputs["after"] == f"after:fallback:{kind}"

    lenient = flows.lenient.run(kind=kind, timeout=20)
    assert lenient.status is RunStatus.SUCCEEDED
    assert lenient.steps["optional"].status is StepStatus.FAILED
    assert lenient.outputs["summary"] == "summary:None"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_base_exception_in_fallback_gate_when_or_on_retry_fails_the_step(
        flows: SimpleNamespace, kind: str) -> None:
    fallback = flows.failing_fallback.run(kind=kind, timeout=20)
    step = fallback.steps["primary"]
    assert (fallback.status, step.status) == (RunStatus.FAILED, StepStatus.FAILED)
    assert step.error is not None and "fallback failed" in step.error
    assert TYPES[kind].split(".")[1] in step.error

    gated = flows.gated.run(kind=kind, timeout=20)
    step = gated.steps["gated"]
    assert (step.status, step.error_type, step.attempts) == (StepStatus.FAILED, TYPES[kind], 2)

    predicate = flows.predicate.run(kind=kind, timeout=20)
    step = predicate.steps["guarded"]
    assert (step.status, step.error_type) == (StepStatus.FAILED, TYPES[kind])
    _still_serves(flows, f"places-{kind}")


def test_base_exception_in_on_retry_fails_the_step(flows: SimpleNamespace) -> None:
    result = flows.hook.run(kind="exit", timeout=20)
    step = result.steps["hooked"]
    assert (result.status, step.status) == (RunStatus.FAILED, StepStatus.FAILED)
    assert step.error_type == "builtins.SystemExit"
    assert step.error is not None and "on_retry gave up" in step.error
    # The hook's failure replaces the attempt's, and is retried like it.
    assert [a["error_type"] for a in step.attempt_log] == ["builtins.RuntimeError"] * 2
    _still_serves(flows, "after-on-retry")


def test_map_elements_raising_base_exceptions_fail_only_their_slots(
        flows: SimpleNamespace) -> None:
    kinds = ["ok", "exit", "ok", "interrupt", "base", "ok"]
    result = flows.mapped.run(kinds=kinds, timeout=30)
    step = result.steps["element"]
    assert result.status is RunStatus.FAILED  # a critical map with failed elements
    failed = sorted((a["map_index"], a["error_type"]) for a in step.attempt_log
                    if a["status"] == "failed")
    assert failed == [(1, TYPES["exit"]), (3, TYPES["interrupt"]), (4, TYPES["base"])]
    _still_serves(flows, "after-map")


# -- the pieces ------------------------------------------------------------------------------


def test_as_failure_carries_a_base_exception_and_describe_names_the_original() -> None:
    error = RuntimeError("plain")
    assert as_failure(error) is error
    original = KeyboardInterrupt()
    try:
        raise as_failure(original) from original
    except StepAborted as carried:
        text, kind = describe(carried)
    assert kind == "builtins.KeyboardInterrupt"
    assert "KeyboardInterrupt" in text


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_call_with_timeout_hands_a_base_exception_back(kind: str) -> None:
    def fn() -> None:
        _raise(kind)

    with pytest.raises(type(KINDS[kind]())):
        call_with_timeout(fn, {}, 5.0)

