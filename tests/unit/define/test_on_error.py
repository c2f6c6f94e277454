"""``task(on_error=...)``: the kinds and actions accepted, and every mistake named at definition."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from orchestration import (
    BreakerOpen,
    BudgetExceeded,
    GateFailed,
    InputTimeout,
    InvalidModelOutput,
    OutputNotSerializable,
    ProviderError,
    RateLimited,
    StepAborted,
    StepTimeout,
    Workflow,
    WorkflowDefinitionError,
)
from orchestration.app import Orchestrator
from orchestration.define.on_error import Action, ErrorAction, ErrorPolicy, as_on_error
from orchestration.define.step import build_spec
from orchestration.errors import ErrorKind, error_kind


def step(**options: Any) -> Any:
    def classify(text: str) -> str:
        return text

    return build_spec("support", classify, options)


def test_the_articles_strings_are_accepted_verbatim() -> None:
    spec = step(on_error={"timeout": "retry(3)", "model_unavailable": "route_to_fallback"})
    assert spec.on_error is not None
    assert spec.on_error.entries == (
        (ErrorKind.TIMEOUT, ErrorAction(Action.RETRY, 3)),
        (ErrorKind.MODEL_UNAVAILABLE, ErrorAction(Action.ROUTE_TO_FALLBACK)))
    assert str(spec.on_error) == "timeout: retry(3), model_unavailable: route_to_fallback"


@pytest.mark.parametrize("action", ["retry(0)", "retry( 12 )", "route_to_fallback", "skip",
                                    "fail", "escalate"])
@pytest.mark.parametrize("kind", [kind.value for kind in ErrorKind])
def test_every_kind_takes_every_action(kind: str, action: str) -> None:
    policy = step(on_error={kind: action}).on_error
    assert policy is not None and policy.entry(ErrorKind(kind)) is not None


def test_no_entry_means_no_policy() -> None:
    assert step().on_error is None
    assert step(on_error={}).on_error is None


@pytest.mark.parametrize(("on_error", "expected"), [
    ({"timout": "retry(3)"}, "unknown error kind 'timout' (did you mean 'timeout'?); "
                             "allowed: timeout, model_unavailable"),
    ({"model_down": "skip"}, "unknown error kind 'model_down'"),
    ({3: "skip"}, "unknown error kind 3"),
    ({"timeout": "retry(-1)"}, "on_error['timeout'] = 'retry(-1)' is not an action (retry takes "
                               "a whole number >= 0"),
    ({"timeout": "retry(x)"}, "'retry(x)' is not an action (retry takes a whole number"),
    ({"timeout": "retry"}, "'retry' is not an action"),
    ({"timeout": "retry(2.5)"}, "'retry(2.5)' is not an action"),
    ({"model_unavailable": "route_to_fallbak"}, "(did you mean 'route_to_fallback'?); allowed: "
                                                "retry(n), route_to_fallback, skip, fail, "
                                                "escalate"),
    ({"timeout": 3}, "on_error['timeout'] = 3 is not an action"),
    ({"timeout": None}, "on_error['timeout'] = None is not an action"),
    ("retry(3)", "on_error must be a mapping of error kinds to actions"),
])
def test_mistakes_name_the_step_the_kind_and_what_is_allowed(on_error: Any,
                                                             expected: str) -> None:
    with pytest.raises(WorkflowDefinitionError) as caught:
        step(on_error=on_error)
    assert "step support.classify" in str(caught.value)
    assert expected in str(caught.value)


def test_escalate_is_refused_on_a_map_step() -> None:
    def label(texts: str) -> str:
        return texts

    with pytest.raises(WorkflowDefinitionError, match=r"step support.label: on_error\['error'\] "
                       r"= 'escalate' is not supported on a map step"):
        build_spec("support", label, {"map": "texts", "on_error": {"error": "escalate"}})
    spec = build_spec("support", label, {"map": "texts", "on_error": {"error": "skip"}})
    assert spec.on_error is not None


def test_a_typo_of_the_option_itself_is_suggested() -> None:
    with pytest.raises(WorkflowDefinitionError, match="did you mean 'on_error'"):
        step(on_errors={"timeout": "fail"})


def test_error_entry_applies_to_kinds_without_their_own() -> None:
    policy = as_on_error({"timeout": "retry(3)", "error": "skip"}, "here")
    assert policy is not None
    assert policy.entry(ErrorKind.TIMEOUT) == (ErrorKind.TIMEOUT, ErrorAction(Action.RETRY, 3))
    assert policy.entry(ErrorKind.GATE_FAILED) == (ErrorKind.ERROR, ErrorAction(Action.SKIP))
    # per model call, only a model-call kind's own entry acts
    assert policy.for_call(ErrorKind.TIMEOUT) == ErrorAction(Action.RETRY, 3)
    assert policy.for_call(ErrorKind.MODEL_UNAVAILABLE) is None
    assert ErrorPolicy(()).entry(ErrorKind.ERROR) is None


def test_the_workflow_version_changes_with_the_policy_only_when_one_is_set(
        orchestrator: Orchestrator) -> None:
    names = iter(range(10))

    def make(on_error: Any) -> str:
        wf = Workflow(f"versioned{next(names)}", app=orchestrator)
        options = {} if on_error is None else {"on_error": on_error}

        @wf.task(**options)
        def one(text: str) -> str:
            return text

        return wf.validate().version

    assert make(None) == make(None)
    assert make({"timeout": "fail"}) != make({"timeout": "skip"}) != make(None)


def _aborted() -> StepAborted:
    try:
        try:
            raise TimeoutError("inner")
        except TimeoutError as exc:
            raise StepAborted("carrier") from exc
    except StepAborted as carrier:
        return carrier


@pytest.mark.parametrize(("exc", "kind"), [
    (StepTimeout("slow"), ErrorKind.TIMEOUT),
    (TimeoutError("socket"), ErrorKind.TIMEOUT),
    (_aborted(), ErrorKind.TIMEOUT),
    (ProviderError("timed out", kind=ErrorKind.TIMEOUT), ErrorKind.TIMEOUT),
    (ProviderError("HTTP 503", status=503), ErrorKind.MODEL_UNAVAILABLE),
    (ProviderError("HTTP 529", status=529), ErrorKind.MODEL_UNAVAILABLE),
    (ProviderError("ConnectError calling m"), ErrorKind.MODEL_UNAVAILABLE),
    (BreakerOpen("m", "open"), ErrorKind.MODEL_UNAVAILABLE),
    (ProviderError("HTTP 429", status=429), ErrorKind.RATE_LIMITED),
    (RateLimited("limit"), ErrorKind.RATE_LIMITED),
    (ProviderError("HTTP 401", status=401, retryable=False), ErrorKind.ERROR),
    (ProviderError("bad role", retryable=False), ErrorKind.ERROR),
    (InvalidModelOutput("no JSON"), ErrorKind.INVALID_OUTPUT),
    (GateFailed("too short"), ErrorKind.GATE_FAILED),
    (BudgetExceeded("spent"), ErrorKind.BUDGET_EXCEEDED),
    (OutputNotSerializable("a set"), ErrorKind.ERROR),
    (InputTimeout("nobody"), ErrorKind.ERROR),
    (ValueError("bug"), ErrorKind.ERROR),
    (OSError(errno.ECONNREFUSED, "refused"), ErrorKind.ERROR),
])
def test_the_classifier_tells_the_kinds_apart(exc: BaseException, kind: ErrorKind) -> None:
    assert error_kind(exc) is kind
