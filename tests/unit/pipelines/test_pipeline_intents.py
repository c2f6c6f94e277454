"""A pipeline's intent step (``intents:``): a semantic router declared in the file, whose
decision a routing step routes on; its problems are reported at their pointers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestration import Orchestrator, PipelineError, RunStatus, StepStatus, load_pipeline
from orchestration.testing import embedded_orchestrator

EXAMPLES = {
    "billing": ["I was charged twice for my subscription", "refund the payment on my invoice",
                "my credit card was billed again", "the invoice amount is wrong"],
    "technical": ["the app crashes when I open it", "error 500 when saving a report",
                  "the export produces an empty file", "the dashboard does not load"],
    "general": ["what are your opening hours", "thanks for the help",
                "do you have a roadmap", "where is the documentation"],
}


def document(name: str, **intents: Any) -> dict[str, Any]:
    settings = {"text": "text", "examples": "intents.json", "default": "general",
                "threshold": 0.3, **intents}
    return {
        "pipeline": name, "inputs": ["text"],
        "steps": {
            "route_intent": {"intents": settings},
            "route": {"route_on": "route_intent.route",
                      "routing": {"billing": "handle_billing", "technical": "handle_other",
                                  "general": "handle_other"}},
            "handle_billing": {"call": "tests.support.pipeline_steps:word_count",
                               "output_key": "billing_words"},
            "handle_other": {"call": "tests.support.pipeline_steps:word_count",
                             "output_key": "other_words"},
        }}


def write(directory: Path, doc: dict[str, Any]) -> Path:
    path = directory / f"{doc['pipeline']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orchestrator, Path]]:
    directory = tmp_path_factory.mktemp("pipeline-intents")
    (directory / "intents.json").write_text(json.dumps(EXAMPLES))
    with embedded_orchestrator(directory) as orchestrator:
        yield orchestrator, directory


def test_an_intent_step_decides_and_a_routing_step_routes_on_it(
        app: tuple[Orchestrator, Path]) -> None:
    orchestrator, directory = app
    workflow = load_pipeline(write(directory, document("pl_intents")),
                             orchestrator=orchestrator)
    billed = workflow.run(text="my card was charged twice", timeout=30)
    assert billed.status is RunStatus.SUCCEEDED, billed.error
    decision = billed.outputs["route_intent"]
    assert (decision["route"], decision["defaulted"]) == ("billing", False)
    assert billed.steps["handle_billing"].output == 5
    assert billed.steps["handle_other"].status is StepStatus.SKIPPED
    assert billed.steps["route_intent"].attempt_log[0]["policy"].startswith(
        "routed to 'billing'")
    vague = workflow.run(text="zzz qqq", timeout=30)
    assert vague.outputs["route_intent"]["route"] == "general"
    assert vague.outputs["route_intent"]["defaulted"] is True
    assert vague.steps["handle_other"].status is StepStatus.SUCCEEDED


@pytest.mark.parametrize(("intents", "pointer", "message"), [
    ({"threshold": 2}, "/steps/route_intent/intents/threshold", "2"),
    ({"default": "sales"}, "/steps/route_intent/intents/default",
     "default='sales' must be one of its labels (billing, technical, general)"),
    ({"examples": "nowhere.yaml"}, "/steps/route_intent/intents/examples",
     "cannot read examples file"),
    ({"examples": {"billing": ["x"]}}, "/steps/route_intent/intents/examples",
     "need at least 2 labels"),
    ({"text": "body"}, "/steps/route_intent/intents/text",
     "the intent step's text reads 'body', which is no input"),
    ({"method": "llm"}, "/steps/route_intent/intents/method", "'llm'"),
])
def test_a_bad_intent_step_is_reported_at_its_pointer(
        app: tuple[Orchestrator, Path], intents: dict[str, Any], pointer: str,
        message: str) -> None:
    orchestrator, directory = app
    name = f"pl_bad_intents_{next(iter(intents))}"
    with pytest.raises(PipelineError) as caught:
        load_pipeline(write(directory, document(name, **intents)), orchestrator=orchestrator)
    problems = [(p.pointer, p.message) for p in caught.value.problems]
    assert any(at == pointer and message in text for at, text in problems), problems
