"""Loading pipeline files: versions, reloading, name clashes, sub-pipelines found beside a
file, triggers and schedules attached, and a folder loaded all or nothing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestration import Orchestrator, PipelineError, Workflow, load_pipeline, load_pipelines
from orchestration.core.settings import Settings
from orchestration.pipelines import check_pipeline, content_hash
from orchestration.pipelines.steps import ModelCall
from orchestration.testing import embedded_orchestrator
from tests.support import pipeline_steps

SHIPPED = Path(__file__).resolve().parents[3] / "tasks" / "pipelines"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Orchestrator]:
    # No worker starts: nothing is submitted in this module.
    with embedded_orchestrator(tmp_path) as orchestrator:
        yield orchestrator


def write(folder: Path, name: str, document: dict[str, object]) -> Path:
    path = folder / name
    path.write_text(json.dumps(document, indent=2))
    return path


def simple(name: str = "pl_simple", prompt: str = "{{ text }}") -> dict[str, object]:
    return {"pipeline": name, "inputs": ["text"],
            "steps": {"answer": {"model": "gpt-4o-mini", "prompt": prompt}}}


def test_the_version_of_a_pipeline_is_the_hash_of_its_content(host: Orchestrator,
                                                              tmp_path: Path) -> None:
    document = simple()
    workflow = load_pipeline(write(tmp_path, "a.json", document), orchestrator=host)

    assert workflow.validate().version == content_hash(document)
    assert len(content_hash(document)) == 16
    # the same content in YAML is the same version; another prompt is another one
    assert content_hash(json.loads(json.dumps(document))) == content_hash(document)
    assert content_hash(simple(prompt="Say: {{ text }}")) != content_hash(document)


def test_loading_the_same_file_again_returns_the_registered_workflow(host: Orchestrator,
                                                                    tmp_path: Path) -> None:
    path = write(tmp_path, "a.json", simple())
    first = load_pipeline(path, orchestrator=host)
    assert load_pipeline(path, orchestrator=host) is first
    assert load_pipelines(tmp_path, orchestrator=host) == [first]


def test_a_changed_file_or_a_python_workflow_of_that_name_is_a_clash(host: Orchestrator,
                                                                     tmp_path: Path) -> None:
    load_pipeline(write(tmp_path, "a.json", simple()), orchestrator=host)
    with pytest.raises(PipelineError, match=r"/pipeline.*'pl_simple' is already registered "
                                            r"\(from .*a\.json\)"):
        load_pipeline(write(tmp_path, "a.json", simple(prompt="Hi {{ text }}")),
                      orchestrator=host)
    python = Workflow("pl_python", orchestrator=host)
    python.task(pipeline_steps.shout)
    with pytest.raises(PipelineError, match="already registered \\(by Python code\\)"):
        load_pipeline(write(tmp_path, "b.json", simple("pl_python")), orchestrator=host)


def test_a_pipeline_steps_are_declared_like_python_steps(host: Orchestrator,
                                                         tmp_path: Path) -> None:
    workflow = load_pipeline(SHIPPED / "customer_support_orchestrator.json", orchestrator=host)
    compiled = workflow.validate()

    assert workflow.declared_inputs == frozenset({"text"})
    assert compiled.steps["classify_ticket"].queue == "model.claude-4-haiku"
    assert compiled.steps["classify_ticket"].spec.output == "classification"
    assert compiled.steps["route_ticket"].upstream == frozenset({"classify_ticket"})
    assert str(compiled.steps["classify_ticket"].spec.on_error) == (
        "timeout: retry(3), model_unavailable: route_to_fallback")
    # the routing table is the closed set of the classifier's answers
    classify = compiled.steps["classify_ticket"].spec.fn
    assert isinstance(classify, ModelCall)
    assert classify.choices == ("billing", "technical", "general")
    # the sub-pipelines it routes to were found beside it and loaded first
    assert {"billing_agent_orchestrator", "tech_support_orchestrator",
            "general_response"} <= set(host.workflows)
    trigger = workflow.triggers[0]
    assert (trigger.name, trigger.event, trigger.inputs["text"].text) == (
        "new_ticket", "zendesk.ticket.created", "$.ticket.description")


def test_a_schedule_in_a_file_is_attached(host: Orchestrator, tmp_path: Path) -> None:
    document = dict(simple("pl_nightly"), schedules={
        "nightly": {"cron": "0 3 * * *", "inputs": {"text": "report"}, "overlap": "queue"}})
    workflow = load_pipeline(write(tmp_path, "n.json", document), orchestrator=host)
    (schedule,) = workflow.schedules
    assert (schedule.name, schedule.cron, dict(schedule.inputs), schedule.overlap) == (
        "nightly", "0 3 * * *", {"text": "report"}, "queue")


def test_a_folder_is_loaded_all_or_nothing_with_the_problems_of_each_file(
        host: Orchestrator, tmp_path: Path) -> None:
    write(tmp_path, "good.json", simple("pl_good"))
    write(tmp_path, "bad.json", simple("pl_bad", prompt="{{ nope }}"))
    (tmp_path / "notes.txt").write_text("not a pipeline")
    with pytest.raises(PipelineError) as caught:
        load_pipelines(tmp_path, orchestrator=host)
    (problem,) = caught.value.problems
    assert problem.file is not None and problem.file.endswith("bad.json")
    assert problem.pointer == "/steps/answer/prompt"
    assert "pl_good" not in host.workflows and "pl_bad" not in host.workflows


def test_check_pipeline_registers_nothing(host: Orchestrator, tmp_path: Path) -> None:
    shutil.copy(SHIPPED / "general_response.yaml", tmp_path)
    assert check_pipeline(tmp_path / "general_response.yaml", orchestrator=host) == []
    assert "general_response" not in host.workflows


def test_a_json_file_problem_has_its_line(host: Orchestrator, tmp_path: Path) -> None:
    path = write(tmp_path, "a.json", simple(prompt="{{ nope }}"))
    line = path.read_text().splitlines().index('      "prompt": "{{ nope }}"') + 1
    (problem,) = check_pipeline(path, orchestrator=host)
    assert (problem.pointer, problem.line) == ("/steps/answer/prompt", line)


def test_a_routing_cycle_between_pipelines_is_a_problem(host: Orchestrator,
                                                        tmp_path: Path) -> None:
    for name, other in (("pl_ping", "pl_pong"), ("pl_pong", "pl_ping")):
        write(tmp_path, f"{name}.json", {"pipeline": name, "inputs": ["kind"], "steps": {
            "route": {"route_on": "kind", "routing": {"x": other}}}})
    with pytest.raises(PipelineError, match="pipelines route to each other in a cycle"):
        load_pipeline(tmp_path / "pl_ping.json", orchestrator=host)


def test_a_deployment_loads_its_folder_of_orch_pipelines(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().pipelines == SHIPPED  # the deployment's PIPELINES (config)
    folder = tmp_path / "pipelines"
    folder.mkdir()
    write(folder, "a.json", dict(simple("pl_deployed"), steps={
        "answer": {"model": "a-model-of-another-catalogue", "prompt": "{{ text }}"}}))
    monkeypatch.setenv("ORCH_PIPELINES", str(folder))
    assert Settings().pipelines == folder

    with embedded_orchestrator(tmp_path, pipelines=folder) as orchestrator:
        # a worker does not check models against its own catalogue (validate does)
        (workflow,) = orchestrator.load_pipelines()
        assert orchestrator.workflows["pl_deployed"] is workflow
        assert orchestrator.load_pipelines() == [workflow]
        problems = check_pipeline(folder / "a.json", orchestrator=orchestrator)
        assert [p.pointer for p in problems] == ["/steps/answer/model"]
