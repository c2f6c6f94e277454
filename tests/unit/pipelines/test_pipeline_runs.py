"""Pipelines run like any workflow on the embedded default: routing tables (to steps,
sub-pipelines, a Python workflow, the default, and a value with no entry), model steps
with an output schema or choices against a fake LLM API, declared conditions and gates.

One orchestrator for the module; every workflow is declared before the first submit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestration import Orchestrator, RunStatus, StepStatus, Workflow, load_pipelines
from orchestration.testing import embedded_orchestrator
from tests.fakes.llm_server import FakeLLMServer
from tests.support import pipeline_steps

VALID = Path(__file__).parent / "valid"
KEY_ENV = "FAKE_PIPELINE_KEY"
TIMEOUT = 30.0


@dataclass
class Deployment:
    orchestrator: Orchestrator
    workflows: dict[str, Workflow]
    server: FakeLLMServer


@pytest.fixture(scope="module")
def deployment(server: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Deployment]:
    directory = tmp_path_factory.mktemp("pipeline-runs")
    models = directory / "models.yaml"

    def model() -> dict[str, object]:
        return {"provider": "fake", "retries": 0}

    models.write_text(json.dumps({
        "providers": {"fake": {"kind": "openai", "base_url": server.url, "api_key_env": KEY_ENV}},
        "models": {"fake-json": model(), "fake-echo": model(), "fake-choice": model(),
                   "fake-down": {"provider": "fake", "retries": 2, "fallbacks": ["fake-echo"]}},
        "default_model": "fake-echo"}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, "sk-test")
        with embedded_orchestrator(directory, models_file=models) as orchestrator:
            child = Workflow("py_child", inputs=["text"], orchestrator=orchestrator)
            child.task(pipeline_steps.py_child_step, name="py_step")
            loaded = load_pipelines(VALID, orchestrator=orchestrator)
            yield Deployment(orchestrator, {w.name: w for w in loaded}, server)


def run(deployment: Deployment, name: str, **inputs: object):  # type: ignore[no-untyped-def]
    return deployment.workflows[name].run(timeout=TIMEOUT, **inputs)


# -- routing to steps of the same pipeline ----------------------------------------------


@pytest.mark.parametrize(("kind", "selected", "output"), [
    ("a", "handle_a", "HELLO WORLD"), ("b", "handle_b", 2), ("zzz", "handle_other", "HELLO WORLD")])
def test_a_routing_table_selects_one_step_and_the_others_are_not_selected(
        deployment: Deployment, kind: str, selected: str, output: object) -> None:
    result = run(deployment, "pl_routes_to_steps", kind=kind, text="hello world")

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.steps["route"].output == {"value": kind, "selected": selected}
    assert result.steps[selected].output == output
    for other in {"handle_a", "handle_b", "handle_other"} - {selected}:
        assert result.steps[other].status is StepStatus.SKIPPED
        assert "not selected" in (result.steps[other].error or "")


# -- routing to sub-pipelines and workflows (child runs) ---------------------------------


def test_a_value_routes_to_its_sub_pipeline_as_a_child_run(deployment: Deployment) -> None:
    result = run(deployment, "pl_routes_to_children", text="one two three")

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.steps["route"].output == {"shouted": "ONE TWO THREE"}
    children = deployment.orchestrator.store.list_runs(workflow="pl_child_one", limit=50)
    assert any(child.status is RunStatus.SUCCEEDED for child in children)


def test_a_value_routes_to_a_python_workflow(deployment: Deployment) -> None:
    result = run(deployment, "pl_routes_to_children", text="python please")

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.steps["route"].output == {"py_step": "python saw 13 characters"}


def test_a_value_with_no_entry_goes_to_the_default_with_the_inputs_it_takes(
        deployment: Deployment) -> None:
    result = run(deployment, "pl_routes_to_children", text="other words here")

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.steps["route"].output == {"words": 3, "echo_label": "label=other"}


def test_a_value_with_no_entry_and_no_default_fails_naming_the_value_and_the_table(
        deployment: Deployment) -> None:
    result = run(deployment, "pl_strict_router", text="nine lives")

    assert result.status is RunStatus.FAILED
    error = result.steps["route"].error or ""
    assert "the value 'nine' of 'label' has no entry in its routing table ('one')" in error
    assert result.steps["route"].attempts == 1  # not retried


# -- model steps -------------------------------------------------------------------------


def test_a_model_step_with_an_output_schema_returns_the_parsed_validated_json(
        deployment: Deployment) -> None:
    server = deployment.server
    server.configure("fake-json", fenced_json={"label": "billing", "priority": 2})
    result = run(deployment, "pl_structured", text="charged twice")

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.steps["parse_ticket"].output == {"label": "billing", "priority": 2}
    assert result.steps["label"].output == "billing"
    # the template read the parsed fields; the answer echoes the prompt it got
    assert result.steps["answer"].output == "[fake-echo] echo: Label billing, priority 2"
    request = server.stats()["fake-json"]["last_request"]
    assert request["messages"][0] == {
        "role": "system", "content": "Return the ticket as JSON with a label and a priority."}
    assert request["messages"][1] == {"role": "user", "content": "Ticket: charged twice"}


def test_an_answer_that_breaks_the_output_schema_is_an_invalid_output_failure(
        deployment: Deployment) -> None:
    deployment.server.configure("fake-json", fenced_json={"label": "billing", "priority": 9})
    result = run(deployment, "pl_structured", text="charged twice")

    assert result.status is RunStatus.FAILED
    assert result.steps["parse_ticket"].error_type.endswith("InvalidModelOutput")
    assert deployment.server.stats()["fake-json"]["requests"] >= 3  # re-asked, like complete_json


def test_a_declared_when_skips_the_step_when_it_does_not_hold(deployment: Deployment) -> None:
    deployment.server.configure("fake-json", fenced_json={"label": "general", "priority": 4})
    result = run(deployment, "pl_structured", text="hello")

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.steps["answer"].status is StepStatus.SKIPPED
    assert result.steps["label"].output == "general"


@pytest.mark.parametrize(("reply", "chosen"), [
    ("Billing.", "billing"), ("The category is: technical", "technical"), ("GENERAL", "general")])
def test_a_choices_answer_is_normalised_to_one_choice(deployment: Deployment, reply: str,
                                                       chosen: str) -> None:
    deployment.server.configure("fake-choice", reply=reply)
    result = run(deployment, "pl_closed_set", text="anything")

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.steps["classify"].output == chosen
    system = deployment.server.stats()["fake-choice"]["last_request"]["messages"][0]
    assert system["content"] == "Answer with exactly one of: billing | technical | general"


def test_an_answer_outside_the_choices_is_an_invalid_output_failure(
        deployment: Deployment) -> None:
    deployment.server.configure("fake-choice", reply="billing or technical, hard to say")
    result = run(deployment, "pl_closed_set", text="anything")

    assert result.status is RunStatus.FAILED
    step = result.steps["classify"]
    assert step.error_type.endswith("InvalidModelOutput")
    assert "is none of the choices billing, technical, general" in (step.error or "")


def test_a_declared_gate_fails_the_attempt_and_the_fallback_answers(
        deployment: Deployment) -> None:
    result = run(deployment, "pl_gated", text="hi")

    assert result.status is RunStatus.SUCCEEDED, result.error
    step = result.steps["short"]
    assert step.status is StepStatus.FALLBACK
    assert step.output == "too short"
    assert "length 2 is under the minimum 10" in (step.error or "")


def test_steps_are_celery_tasks_named_after_the_pipeline(deployment: Deployment) -> None:
    tasks = deployment.orchestrator.celery.tasks
    assert "pl_routes_to_steps.handle_a" in tasks
    assert "pl_structured.parse_ticket" in tasks


# -- maps and per-error policies ---------------------------------------------------------


def test_a_model_step_and_a_code_step_map_over_lists(deployment: Deployment) -> None:
    result = run(deployment, "pl_mapped", items=["a b", "c"])

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs["text"] == ["[fake-echo] echo: Item: a b",
                                      "[fake-echo] echo: Item: c"]
    assert result.outputs["words"] == [5, 4]


def test_errors_route_an_unavailable_model_to_its_fallback_after_one_call(
        deployment: Deployment) -> None:
    server = deployment.server
    server.configure("fake-down", error_rate=1.0, error_status=503)
    result = run(deployment, "pl_unavailable", text="hello")

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs["ask"] == "[fake-echo] echo: hello"
    assert server.stats()["fake-down"]["requests"] == 1  # no retry on the failing model
