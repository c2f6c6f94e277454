"""The articles' vocabulary at definition: gather= checked, other spellings answered."""

from __future__ import annotations

from typing import Any

import pytest

from orchestration import Workflow, WorkflowDefinitionError
from orchestration.app import Orchestrator


def _declare(wf: Workflow, **options: Any) -> None:
    @wf.task(**options)
    def step(text: str) -> str:
        return text


# -- gather= ---------------------------------------------------------------------------


def test_gather_binds_the_mapping_not_an_input(orchestrator: Orchestrator) -> None:
    wf = Workflow("gathers", app=orchestrator, inputs=["text"])

    @wf.task
    def a(text: str) -> str:
        return text

    @wf.task(output="b_out")
    def b(text: str) -> str:
        return text

    @wf.task(depends_on=[a, "b_out"], gather="results")
    def merge(results: dict[str, str], text: str) -> str:
        return text

    compiled = wf.validate()  # 'results' is no input, although inputs= does not list it
    merge_step = compiled.steps["merge"]
    assert merge_step.gathered == {"a": "a", "b_out": "b_out"}
    assert merge_step.sources == {"text": "text"}
    assert merge_step.upstream == {"a", "b"}
    assert compiled.required_inputs == {"text"}
    assert merge.spec.gather == "results"


@pytest.mark.parametrize(("options", "message"), [
    ({"depends_on": ["a"], "gather": "missing"},
     r"gather='missing' must name a parameter of the function .*parameters: text"),
    ({"depends_on": ["a"], "gather": 3}, "gather=3 must name a parameter"),
    ({"gather": "text"}, r"gather='text' collects the outputs of depends_on, and depends_on "
                         "is empty"),
    ({"depends_on": [], "gather": "text"}, "depends_on is empty"),
    ({"depends_on": ["a"], "gather": "text", "map": "text"},
     "cannot be both map= and gather="),
])
def test_gather_is_checked_when_the_decorator_runs(orchestrator: Orchestrator,
                                                   options: dict[str, Any],
                                                   message: str) -> None:
    wf = Workflow("bad_gather", app=orchestrator)
    with pytest.raises(WorkflowDefinitionError, match=message):
        _declare(wf, **options)


def test_a_gathered_parameter_cannot_also_be_bound_by_name(orchestrator: Orchestrator) -> None:
    wf = Workflow("twice", app=orchestrator)

    @wf.task
    def results(text: str) -> str:  # its output is called 'results'
        return text

    @wf.task(depends_on=[results], gather="results")
    def merge(results: dict[str, str]) -> int:
        return len(results)

    with pytest.raises(WorkflowDefinitionError,
                       match=r"step 'twice.merge': parameter 'results' receives the depends_on "
                             r"outputs \(gather='results'\) and is also a step output"):
        wf.validate()


def test_a_gathered_parameter_cannot_be_a_declared_input(orchestrator: Orchestrator) -> None:
    wf = Workflow("declared", app=orchestrator, inputs=["results"])

    @wf.task
    def a(results: str) -> str:
        return results

    @wf.task(depends_on=[a], gather="results")
    def merge(results: dict[str, str]) -> int:
        return len(results)

    with pytest.raises(WorkflowDefinitionError, match="also a step output or workflow input"):
        wf.validate()


def test_gather_needs_its_dependencies_to_exist(orchestrator: Orchestrator) -> None:
    wf = Workflow("ghost", app=orchestrator)

    @wf.task(depends_on=["ghost"], gather="results")
    def merge(results: dict[str, str]) -> int:
        return len(results)

    with pytest.raises(WorkflowDefinitionError, match="depends_on names 'ghost'"):
        wf.validate()


def test_gather_changes_the_workflow_version(orchestrator: Orchestrator) -> None:
    versions = []
    for index, gather in enumerate((None, "results")):
        wf = Workflow(f"versioned{index}", app=orchestrator)

        @wf.task(name="a")
        def a(x: int) -> int:
            return x

        options: dict[str, Any] = {"depends_on": ["a"], "name": "merge"}
        if gather:
            options["gather"] = gather

        @wf.task(**options)
        def merge(results: dict[str, int]) -> int:
            return len(results)

        versions.append(wf.validate().version)
    assert versions[0] != versions[1]


# -- options spelled differently --------------------------------------------------------


@pytest.mark.parametrize(("option", "answer"), [
    ("timeout_seconds", "this project spells it timeout"),
    ("on_failure", "this project spells it on_error .* or fallback"),
    ("cost_tracker", r"this project spells it max_cost .*ctx\.record_cost"),
    ("max_retries", "this project spells it retries"),
    ("upstream", "this project spells it gather"),
])
def test_other_spellings_name_the_equivalent(orchestrator: Orchestrator, option: str,
                                             answer: str) -> None:
    wf = Workflow("spelled", app=orchestrator)
    with pytest.raises(WorkflowDefinitionError,
                       match=rf"step spelled.step: unknown option '{option}': {answer}"):
        _declare(wf, **{option: 1})


def test_a_typo_is_still_suggested(orchestrator: Orchestrator) -> None:
    wf = Workflow("typo2", app=orchestrator)
    with pytest.raises(WorkflowDefinitionError, match=r"did you mean 'timeout'\?"):
        _declare(wf, timeot=3)


def test_workflow_cost_tracker_names_budget(orchestrator: Orchestrator) -> None:
    with pytest.raises(WorkflowDefinitionError,
                       match=r"workflow 'w': unknown option 'cost_tracker': this project "
                             r"spells it budget .*max_cost.*ctx\.record_cost"):
        Workflow("w", app=orchestrator, cost_tracker=object())


def test_workflow_unknown_options_are_definition_errors(orchestrator: Orchestrator) -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"did you mean 'budget'\?"):
        Workflow("w", app=orchestrator, budgte=1.0)
    with pytest.raises(WorkflowDefinitionError,
                       match="unknown option 'timeout_seconds': this project spells it "
                             r"timeout, an option of each step"):
        Workflow("w", app=orchestrator, timeout_seconds=30)
