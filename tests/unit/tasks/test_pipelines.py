"""The shipped pipelines (tasks/pipelines) run offline on the embedded default with the
local provider: the article's support pipeline routes each ticket to its sub-pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestration import Orchestrator, RunStatus, StepStatus, load_pipelines
from orchestration.llm.providers.local import LABEL
from orchestration.testing import embedded_orchestrator

PIPELINES = Path(__file__).resolve().parents[3] / "tasks" / "pipelines"
ARTICLE = """{
"pipeline": "customer_support_orchestrator",
"triggers": {
"new_ticket": {
"event": "zendesk.ticket.created",
"action": "classify_ticket"
}
},
"steps": {
"classify_ticket": {
"model": "claude-4-haiku",
"system_prompt": "Classify this ticket as: billing, technical, or general",
"output_key": "classification",
"errors": {
"timeout": "retry(3)",
"model_unavailable": "route_to_fallback"
}
},
"route_ticket": {
"depends_on": ["classify_ticket"],
"routing": {
"billing": "billing_agent_orchestrator",
"technical": "tech_support_orchestrator",
"general": "general_response"
}
}
}
}"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    with embedded_orchestrator(tmp_path_factory.mktemp("shipped")) as orchestrator:
        load_pipelines(PIPELINES, orchestrator=orchestrator)
        yield orchestrator


def test_the_shipped_file_is_the_articles_config_plus_inputs_and_the_trigger_mapping() -> None:
    shipped = (PIPELINES / "customer_support_orchestrator.json").read_text().splitlines()
    added = ['"inputs": ["text"],', '"inputs": {"text": "$.ticket.description"}']
    article = ARTICLE.splitlines()
    kept = [line for line in shipped if line not in added]
    # the article's lines, in order; the only change inside them is the comma that the
    # added trigger mapping needs after "action"
    assert [line.rstrip(",") for line in kept] == [line.rstrip(",") for line in article]
    assert [line for line in shipped if line in added] == added


@pytest.mark.parametrize(("text", "label", "child", "steps"), [
    ("Billing: I was charged twice for my plan", "billing", "billing_agent_orchestrator",
     {"reply"}),
    ("The app crashes at start: a technical fault since v3.2", "technical",
     "tech_support_orchestrator", {"diagnosis", "reply"}),
    ("Where is your office?", "general", "general_response", {"reply"}),
])
def test_the_article_pipeline_routes_each_ticket_to_its_sub_pipeline(
        deployment: Orchestrator, text: str, label: str, child: str, steps: set[str]) -> None:
    pipeline = deployment.workflows["customer_support_orchestrator"]
    result = pipeline.run(text=text, timeout=60)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs["classification"] == label
    assert set(result.steps["route_ticket"].output) == steps
    (run,) = [r for r in deployment.store.list_runs(workflow=child, limit=100)
              if deployment.store.get_run(r.run_id).parent_run_id == result.run_id]
    assert run.status is RunStatus.SUCCEEDED
    classify = result.steps["classify_ticket"]
    assert classify.status is StepStatus.SUCCEEDED
    assert "local" in (classify.model or "")  # answered offline, and it says so
    assert LABEL in next(iter(result.steps["route_ticket"].output.values()))


def test_the_content_summary_pipeline_runs_model_and_code_steps(deployment: Orchestrator) -> None:
    pipeline = deployment.workflows["content_summary_pipeline"]
    result = pipeline.run(title="Orchestration", text="word " * 120, timeout=60)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs["article_words"] == 120
    assert result.outputs["summary"].startswith(LABEL)
    # the review step says, honestly, that no model wrote this summary
    assert "no LLM configured" in result.outputs["problem"]


def test_workers_serve_the_queues_of_the_shipped_pipelines(deployment: Orchestrator) -> None:
    from config.queues import QUEUES

    shipped = {path.name for path in PIPELINES.iterdir()}
    queues = {bound.queue for workflow in deployment.workflows.values()
              if str(getattr(workflow, "source_path", "")).rsplit("/", 1)[-1] in shipped
              for bound in workflow.validate().steps.values()}
    assert {"model.claude-4-haiku", "model.gpt-4o-mini", "default"} <= queues
    assert queues <= {spec.name for spec in QUEUES}
    procfile = (PIPELINES.parents[1] / "Procfile").read_text()
    compose = (PIPELINES.parents[1] / "docker-compose.yml").read_text()
    for queue in queues:
        assert f"-Q {queue} " in procfile and f"-Q {queue} " in compose, queue
