"""Pipeline files on real workers (Redis broker, PostgreSQL results): the worker loads the
folder of ORCH_PIPELINES at start-up, the test process loads the same files to submit.

The folder holds the shipped support pipeline (the article's) and its three
sub-pipelines, answered offline by the local provider, plus two test pipelines: code
steps routing to a sub-pipeline or to the table's default, and a model step whose
output schema is answered by a fake LLM API.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from orchestration import (
    RunStatus,
    StepStatus,
    Workflow,
    default_orchestrator,
    get_run,
    list_runs,
    load_pipelines,
)
from orchestration.llm.catalogue import load_catalogue
from orchestration.pipelines import content_hash
from tests.fakes.llm_server import FakeLLMServer
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "tasks" / "pipelines"
ARTICLE = ("customer_support_orchestrator.json", "billing_agent_orchestrator.yaml",
           "tech_support_orchestrator.json", "general_response.yaml")
QUEUE = "it.pipelines"
QUEUES = [QUEUE, "default", "model.claude-4-haiku", "model.gpt-4o-mini", "model.fake-json"]
KEY_ENV = "FAKE_PIPELINE_KEY"
TIMEOUT = 60.0

TEST_PIPELINES = {
    "it_routes.yaml": {
        "pipeline": "pl_it_routes", "queue": QUEUE, "inputs": ["text"],
        "steps": {
            "label": {"call": "tests.support.pipeline_steps:first_word"},
            "route": {"depends_on": ["label"], "routing": {"one": "pl_it_child"},
                      "default": "pl_it_child_default"}}},
    "it_child.yaml": {
        "pipeline": "pl_it_child", "queue": QUEUE, "inputs": ["text"],
        "steps": {"shouted": {"call": "tests.support.pipeline_steps:shout"}}},
    "it_child_default.yaml": {
        "pipeline": "pl_it_child_default", "queue": QUEUE, "inputs": ["text", "label"],
        "steps": {"count": {"call": "tests.support.pipeline_steps:word_count",
                            "output_key": "words"},
                  "echo_label": {"call": "tests.support.pipeline_steps:echo_label"}}},
    "it_structured.json": {
        "pipeline": "pl_it_structured", "queue": QUEUE, "inputs": ["text"],
        "steps": {
            "parse_ticket": {
                "model": "fake-json", "prompt": "Ticket: {{ text }}", "output_key": "ticket",
                "output_schema": {"type": "object", "required": ["label", "priority"],
                                  "properties": {"label": {"type": "string"},
                                                 "priority": {"type": "integer"}}}},
            "label": {"call": "tests.support.pipeline_steps:label_of"}}},
}


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pipelines")
    for name in ARTICLE:
        shutil.copy(SHIPPED / name, directory / name)
    for name, document in TEST_PIPELINES.items():
        (directory / name).write_text(json.dumps(document, indent=2))  # JSON is YAML
    return directory


@pytest.fixture(scope="module")
def pipelines(workers: Workers, worker_logs: Path, folder: Path, fake_server: FakeLLMServer,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Workflow]]:
    catalogue = yaml.safe_load((ROOT / "config" / "models.yaml").read_text())
    catalogue["providers"]["fake"] = {"kind": "openai", "base_url": fake_server.url,
                                      "api_key_env": KEY_ENV}
    catalogue["models"]["fake-json"] = {"provider": "fake", "retries": 0}
    models = tmp_path_factory.mktemp("pipeline-models") / "models.yaml"
    models.write_text(json.dumps(catalogue))
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY",
                                                             "OPENAI_API_KEY")}
    env.update(ORCH_PIPELINES=str(folder), ORCH_MODELS_FILE=str(models), **{KEY_ENV: "sk-x"})
    pool = Workers(worker_logs, env=env)
    try:
        pool.start("it-pipelines", QUEUES, pool="threads", concurrency=4)
        # This process submits: it loads the same files, checking their models against
        # the workers' catalogue (its own is the packaged one).
        orchestrator = default_orchestrator()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(orchestrator, "catalogue", load_catalogue(models))
            loaded = load_pipelines(folder)
        yield {workflow.name: workflow for workflow in loaded}
    finally:
        pool.stop_all()


def _child_of(parent: str, workflow: str) -> str:
    children = [s.run_id for s in list_runs(workflow=workflow, limit=200)
                if get_run(s.run_id).parent_run_id == parent]
    assert len(children) == 1, children
    return children[0]


@pytest.mark.parametrize(("text", "label", "child"), [
    ("Billing: I was charged twice", "billing", "billing_agent_orchestrator"),
    ("Technical fault: the app crashes since v3.2", "technical", "tech_support_orchestrator"),
    ("Where is your office?", "general", "general_response"),
])
def test_the_article_pipeline_routes_each_ticket_to_its_sub_pipeline_on_a_worker(
        pipelines: dict[str, Workflow], text: str, label: str, child: str) -> None:
    result = pipelines["customer_support_orchestrator"].run(text=text, timeout=TIMEOUT)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs["classification"] == label
    assert "reply" in result.steps["route_ticket"].output
    assert result.steps["classify_ticket"].worker.startswith("it-pipelines@")
    run = get_run(_child_of(result.run_id, child))
    assert run.status is RunStatus.SUCCEEDED
    assert {s.worker.split("@")[0] for s in run.steps.values()} == {"it-pipelines"}


def test_a_value_with_an_entry_and_one_without_go_to_their_targets(
        pipelines: dict[str, Workflow]) -> None:
    routed = pipelines["pl_it_routes"].submit(text="one two")
    defaulted = pipelines["pl_it_routes"].submit(text="three four five")

    first, second = routed.wait(timeout=TIMEOUT), defaulted.wait(timeout=TIMEOUT)
    assert first.status is RunStatus.SUCCEEDED, first.error
    assert first.steps["route"].output == {"shouted": "ONE TWO"}
    _child_of(first.run_id, "pl_it_child")
    assert second.status is RunStatus.SUCCEEDED, second.error
    assert second.steps["route"].output == {"words": 3, "echo_label": "label=three"}
    _child_of(second.run_id, "pl_it_child_default")


def test_a_model_step_with_an_output_schema_and_a_code_step_on_a_worker(
        pipelines: dict[str, Workflow], fake_server: FakeLLMServer) -> None:
    fake_server.configure("fake-json", fenced_json={"label": "billing", "priority": 2})
    result = pipelines["pl_it_structured"].run(text="charged twice", timeout=TIMEOUT)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs["ticket"] == {"label": "billing", "priority": 2}  # parsed, checked
    assert result.outputs["label"] == "billing"  # the code step read it by name
    assert fake_server.stats()["fake-json"]["last_request"]["messages"] == [
        {"role": "user", "content": "Ticket: charged twice"}]
    assert result.steps["parse_ticket"].status is StepStatus.SUCCEEDED


def test_the_runs_table_records_the_content_hash_as_the_workflow_version(
        pipelines: dict[str, Workflow], folder: Path) -> None:
    handle = pipelines["pl_it_child"].submit(text="hash me")
    assert handle.wait(timeout=TIMEOUT).status is RunStatus.SUCCEEDED
    with default_orchestrator().store.engine.connect() as conn:
        version = conn.execute(text("select workflow_version from runs where id = :id"),
                               {"id": handle.run_id}).scalar_one()
    document = json.loads((folder / "it_child.yaml").read_text())
    assert version == content_hash(document)
