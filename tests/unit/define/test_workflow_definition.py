"""Definition and validation: every mistake is named before anything is written or enqueued."""

from __future__ import annotations

from typing import Any

import pytest

from orchestration import InvalidInput, Workflow, WorkflowDefinitionError
from orchestration.app import Orchestrator


def test_step_is_callable_and_reports_its_options(orchestrator: Orchestrator) -> None:
    wf = Workflow("options", app=orchestrator)

    @wf.task(retries=2, timeout=5, queue="model.fast", output="label", critical=False)
    def classify(text: str) -> str:
        return text.upper()

    assert classify("hi") == "HI"  # the plain function, for users' own unit tests
    spec = wf.steps["classify"]
    assert (spec.retries, spec.output, spec.critical, spec.task_name) == (
        2, "label", False, "options.classify")
    assert spec.timeout is not None and spec.timeout.seconds() == 5.0
    assert wf.validate().steps["classify"].queue == "model.fast"


def test_model_routes_to_its_own_queue(orchestrator: Orchestrator) -> None:
    wf = Workflow("routing", app=orchestrator, queue="wf-default")

    @wf.task(model="gpt-4o-mini")
    def draft(text: str) -> str:
        return text

    @wf.task
    def plain(text: str) -> str:
        return text

    steps = wf.validate().steps
    assert steps["draft"].queue == "model.gpt-4o-mini"
    assert steps["plain"].queue == "wf-default"


def test_cycle_through_depends_on_shows_the_cycle(orchestrator: Orchestrator) -> None:
    wf = Workflow("cyclic", app=orchestrator)

    @wf.task(depends_on="second")
    def first() -> int:
        return 1

    @wf.task(depends_on=first)
    def second() -> int:
        return 2

    with pytest.raises(WorkflowDefinitionError, match="cycle") as info:
        wf.validate()
    assert "first -> second -> first" in str(info.value) or \
        "second -> first -> second" in str(info.value)


def test_cycle_through_parameters_is_rejected(orchestrator: Orchestrator) -> None:
    wf = Workflow("cyclic_params", app=orchestrator)

    @wf.task
    def ping(pong: int) -> int:
        return pong

    @wf.task
    def pong(ping: int) -> int:
        return ping

    with pytest.raises(WorkflowDefinitionError, match=r"cycle: (ping -> pong -> ping|pong -> "
                                                       r"ping -> pong)"):
        wf.validate()


def test_step_depending_on_itself(orchestrator: Orchestrator) -> None:
    wf = Workflow("selfish", app=orchestrator)

    @wf.task(depends_on="loop")
    def loop() -> int:
        return 1

    with pytest.raises(WorkflowDefinitionError, match=r"'selfish\.loop' depends on itself"):
        wf.validate()


def test_unknown_depends_on_is_named(orchestrator: Orchestrator) -> None:
    wf = Workflow("unknown_dep", app=orchestrator)

    @wf.task(depends_on="fetch_ticket")
    def classify(text: str) -> str:
        return text

    with pytest.raises(WorkflowDefinitionError, match="depends_on names 'fetch_ticket'"):
        wf.validate()


def test_unbound_parameter_with_declared_inputs(orchestrator: Orchestrator) -> None:
    wf = Workflow("declared", app=orchestrator, inputs=["text"])

    @wf.task
    def classify(text: str, languge: str) -> str:
        return text

    with pytest.raises(WorkflowDefinitionError,
                       match=r"'declared\.classify'.*parameter 'languge' is provided by no"):
        wf.validate()


def test_optional_parameter_need_not_be_declared(orchestrator: Orchestrator) -> None:
    wf = Workflow("declared_optional", app=orchestrator, inputs=["text"])

    @wf.task
    def classify(text: str, language: str = "en") -> str:
        return text

    compiled = wf.validate()
    assert compiled.inputs == {"text"} and compiled.required_inputs == {"text"}


def test_duplicate_step_names(orchestrator: Orchestrator) -> None:
    wf = Workflow("dupes", app=orchestrator)

    @wf.task
    def score(text: str) -> int:
        return 1

    with pytest.raises(WorkflowDefinitionError, match="two steps named 'score'"):
        @wf.task(name="score")
        def other(text: str) -> int:
            return 2


def test_duplicate_output_names(orchestrator: Orchestrator) -> None:
    wf = Workflow("dupe_outputs", app=orchestrator)

    @wf.task(output="urgency")
    def rules(text: str) -> str:
        return "low"

    with pytest.raises(WorkflowDefinitionError,
                       match="steps 'rules' and 'model' both output 'urgency'"):
        @wf.task(output="urgency")
        def model(text: str) -> str:
            return "high"


def test_unknown_option_suggests_the_right_one(orchestrator: Orchestrator) -> None:
    wf = Workflow("typo", app=orchestrator)
    with pytest.raises(WorkflowDefinitionError,
                       match=r"unknown option 'retry' \(did you mean 'retries'\?\)"):
        @wf.task(retry=3)
        def step(text: str) -> str:
            return text


@pytest.mark.parametrize(("options", "message"), [
    ({"retries": -1}, "retries must be a whole number >= 0, got -1"),
    ({"retries": 1.5}, "retries must be a whole number >= 0"),
    ({"retries": True}, "retries must be a whole number >= 0"),
    ({"timeout": 0}, "timeout must be > 0 seconds, got 0"),
    ({"timeout": -2.5}, "timeout must be > 0 seconds"),
    ({"timeout": "30s"}, "timeout must be seconds, a callable or a TimeoutPolicy"),
    ({"critical": "yes"}, "critical must be True or False"),
    ({"queue": ""}, "queue must be a non-empty string"),
    ({"queue": "   "}, "queue must be a non-empty string"),
    ({"model": 4}, "model must be a non-empty string"),
    ({"max_cost": -0.1}, "max_cost must be a number >= 0"),
    ({"backoff": "fast"}, "backoff must be a number or Backoff"),
    pytest.param({"backoff": -1}, "invalid backoff"),
    ({"output": "not an identifier"}, "output must be a Python identifier"),
    ({"depends_on": 42}, "depends_on takes steps or step/output names, got 42"),
])
def test_bad_option_values(orchestrator: Orchestrator, options: dict[str, Any],
                           message: str) -> None:
    wf = Workflow("bad_values", app=orchestrator)
    with pytest.raises(WorkflowDefinitionError, match=message) as info:
        @wf.task(**options)
        def classify(text: str) -> str:
            return text
    assert "step bad_values.classify" in str(info.value)  # names the culprit
    assert wf.steps == {}


@pytest.mark.parametrize("signature", ["*args", "**kwargs", "text, /"])
def test_parameters_that_cannot_bind_by_name(orchestrator: Orchestrator, signature: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def handler({signature}):\n    return None", namespace)
    wf = Workflow("unbindable", app=orchestrator)
    with pytest.raises(WorkflowDefinitionError, match="cannot be bound by name"):
        wf.task(namespace["handler"])


def test_parameter_naming_a_renamed_step_gets_a_hint(orchestrator: Orchestrator) -> None:
    wf = Workflow("renamed", app=orchestrator)

    @wf.task(output="urgency")
    def extract_urgency(text: str) -> str:
        return "high"

    @wf.task
    def route(extract_urgency: str) -> str:
        return extract_urgency

    with pytest.raises(WorkflowDefinitionError,
                       match="names step 'extract_urgency', whose output is called 'urgency'; "
                             "rename the parameter"):
        wf.validate()


def test_reserved_names(orchestrator: Orchestrator) -> None:
    wf = Workflow("reserved_param", app=orchestrator)

    @wf.task
    def step(idempotency_key: str) -> str:
        return idempotency_key

    with pytest.raises(WorkflowDefinitionError, match="'idempotency_key' is reserved"):
        wf.validate()

    declared = Workflow("reserved_input", app=orchestrator, inputs=["ctx", "text"])

    @declared.task
    def other(text: str) -> str:
        return text

    with pytest.raises(WorkflowDefinitionError, match="'ctx' is reserved"):
        declared.validate()


def test_input_clashing_with_an_output(orchestrator: Orchestrator) -> None:
    wf = Workflow("clash", app=orchestrator, inputs=["summary"])

    @wf.task
    def summary(text: str = "") -> str:
        return text

    with pytest.raises(WorkflowDefinitionError, match="'summary' is both an input and a step"):
        wf.validate()


def test_workflow_names(orchestrator: Orchestrator) -> None:
    with pytest.raises(WorkflowDefinitionError, match="workflow name must be"):
        Workflow("support ticket!", app=orchestrator)
    Workflow("twice", app=orchestrator)
    with pytest.raises(WorkflowDefinitionError, match="two workflows named 'twice'"):
        Workflow("twice", app=orchestrator)
    empty = Workflow("empty", app=orchestrator)
    with pytest.raises(WorkflowDefinitionError, match="'empty' has no steps"):
        empty.validate()


# -- submit: rejected inputs write nothing and publish nothing ---------------------------


def _one_step(orchestrator: Orchestrator, calls: list[str],
              inputs: list[str] | None = None) -> Workflow:
    wf = Workflow("guarded", app=orchestrator, inputs=inputs)

    @wf.task
    def echo(text: str, limit: int = 3) -> str:
        calls.append(text)
        return text[:limit]

    return wf


@pytest.mark.parametrize(("inputs", "declared", "message"), [
    ({}, None, "missing input.* text"),
    ({"limit": 2}, None, "missing input.* text"),
    ({"text": "hi", "extra": 1}, ["text", "limit"], r"unknown input.* extra \(declared: limit, "
                                                      "text\\)"),
    ({"text": object()}, None, "input 'text' is not JSON-serialisable"),
    ({"text": "hi", "limit": {1, 2}}, None, "input 'limit' is not JSON-serialisable \\(set\\)"),
    ({"text": b"bytes"}, None, "input 'text' is not JSON-serialisable \\(bytes\\)"),
])
def test_rejected_inputs_write_and_publish_nothing(
        orchestrator: Orchestrator, published: list[tuple[str, Any]], inputs: dict[str, Any],
        declared: list[str] | None, message: str) -> None:
    calls: list[str] = []
    wf = _one_step(orchestrator, calls, declared)
    with pytest.raises(InvalidInput, match=message) as info:
        wf.submit(**inputs)
    assert "guarded" in str(info.value)
    assert orchestrator.store.list_runs() == []
    assert published == [] and calls == []


def test_definition_error_at_submit_writes_and_publishes_nothing(
        orchestrator: Orchestrator, published: list[tuple[str, Any]]) -> None:
    wf = Workflow("broken_graph", app=orchestrator)

    @wf.task(depends_on="nowhere")
    def step(text: str) -> str:
        return text

    with pytest.raises(WorkflowDefinitionError, match="'nowhere'"):
        wf.submit(text="hi")
    assert orchestrator.store.list_runs() == []
    assert published == []


def test_nan_input_is_not_json(orchestrator: Orchestrator,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    wf = _one_step(orchestrator, [])
    monkeypatch.setattr(wf, "dispatch", lambda run_id, inputs: None)  # no worker needed
    with pytest.raises(InvalidInput, match="'limit' is not JSON"):
        wf.submit(text="hi", limit=float("nan"))
