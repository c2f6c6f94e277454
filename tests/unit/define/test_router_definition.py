"""``wf.router(...)``: semantic routers are checked when declared, each error naming the
culprit; the decision applies the threshold and the default; ``chose()`` selects branches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestration import Workflow, WorkflowDefinitionError
from orchestration.define.intents import RouterSpec, load_examples
from orchestration.testing import embedded_orchestrator

EXAMPLES = {"billing": ["I was charged twice", "refund my payment"],
            "technical": ["the app crashes", "error 500 on save"],
            "general": ["what are your hours", "thanks a lot"]}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with embedded_orchestrator(tmp_path_factory.mktemp("intents")) as orchestrator:
        yield orchestrator


def _workflow(app: Any, name: str, inputs: list[str] | None = None) -> Workflow:
    return Workflow(name, app=app, inputs=inputs if inputs is not None else ["message"])


def _router(app: Any, name: str, **options: Any) -> Any:
    wf = _workflow(app, name)
    settings: dict[str, Any] = {"text": "message", "examples": EXAMPLES, "default": "general"}
    settings.update(options)
    return wf.router("route", **settings)


@pytest.mark.parametrize(("options", "message"), [
    ({"default": "sales"}, r"router r_default\.route: default='sales' must be one of its "
                           r"labels \(billing, technical, general\)"),
    ({"default": None}, r"default=None must be one of its labels"),
    ({"examples": {}}, r"examples \(examples=\) must map each label to a list"),
    ({"examples": {"billing": ["x"], "general": []}}, r"label 'general' \(examples=\) has no "
                                                      r"examples"),
    ({"examples": {"billing": ["x"], "general": ["", "y"]}}, r"label 'general'.*empty, "
                                                             r"repeated or non-text"),
    ({"examples": {"general": ["only one label"]}}, r"need at least 2 labels"),
    ({"examples": {"billing": "one string", "general": ["y"]}}, r"label 'billing'.*must have a "
                                                                r"list of example utterances"),
    ({"threshold": 0}, r"threshold must be a number in \(0, 1\], got 0"),
    ({"threshold": 1.2}, r"threshold must be a number in \(0, 1\], got 1.2"),
    ({"threshold": True}, r"threshold must be a number in \(0, 1\], got True"),
    ({"method": "llm"}, r"method must be one of similarity, classifier, got 'llm'"),
    ({"text": None}, r"text= names the input or step output the router classifies"),
    ({"retrys": 2}, r"unknown option 'retrys' \(did you mean 'retries'\?\)"),
])
def test_a_bad_router_is_refused_naming_the_culprit(options: dict[str, Any],
                                                    message: str, tmp_path: Path) -> None:
    with embedded_orchestrator(tmp_path) as app, \
            pytest.raises(WorkflowDefinitionError, match=message):
        _router(app, f"r_{next(iter(options))}", **options)


def test_chose_an_unknown_label_is_refused(app: Any) -> None:
    router = _router(app, "r_chose")
    with pytest.raises(WorkflowDefinitionError,
                       match=r"router 'r_chose.route': chose\('sales'\): no such label; its "
                             r"labels: billing, technical, general"):
        router.chose("billing", "sales")
    with pytest.raises(WorkflowDefinitionError, match=r"chose\(\) needs at least one label"):
        router.chose()


def test_routes_are_checked(app: Any) -> None:
    child = _workflow(app, "r_child", inputs=["message"])

    @child.task
    def reply(message: str) -> str:
        return message

    routes = {"billing": child, "technical": child, "general": child}
    with pytest.raises(WorkflowDefinitionError, match=r"routes names 'sales', which is no label"):
        _router(app, "r_routes1", routes={**routes, "sales": child})
    with pytest.raises(WorkflowDefinitionError,
                       match=r"routes gives no workflow for label\(s\) general; every label"):
        _router(app, "r_routes2", routes={"billing": child, "technical": child})
    with pytest.raises(WorkflowDefinitionError, match=r"routes\['general'\] must be a Workflow"):
        _router(app, "r_routes3", routes={**routes, "general": "support_general"})
    router = _router(app, "r_routes4", routes=routes)
    with pytest.raises(WorkflowDefinitionError, match=r"starts a child run per route"):
        router.chose("billing")
    assert router.spec.params == ("message",)  # the child's input, read from the run


def test_a_route_needing_an_input_the_parent_lacks_fails_validation(app: Any) -> None:
    child = _workflow(app, "r_needy", inputs=["message", "ticket_id"])

    @child.task
    def reply(message: str, ticket_id: int) -> str:
        return message

    router = _router(app, "r_needy_parent",
                     routes={"billing": child, "technical": child, "general": child})
    assert set(router.spec.params) == {"message", "ticket_id"}
    wf = router.spec.workflow
    with pytest.raises(WorkflowDefinitionError, match=r"parameter 'ticket_id' is provided by "
                                                      r"no step output and no workflow input"):
        app.workflows[wf].validate()


def test_examples_load_from_json_and_yaml_files(tmp_path: Path) -> None:
    (tmp_path / "e.json").write_text(json.dumps(EXAMPLES))
    (tmp_path / "e.yaml").write_text("billing: [a b, c d]\ngeneral:\n  - e f\n")
    assert load_examples(tmp_path / "e.json", "r")[0] == {k: tuple(v)
                                                          for k, v in EXAMPLES.items()}
    assert load_examples(str(tmp_path / "e.yaml"), "r") == (
        {"billing": ("a b", "c d"), "general": ("e f",)}, str(tmp_path / "e.yaml"))
    for name, content, message in (
            ("missing.json", None, r"cannot read examples file"),
            ("bad.json", "{nope", r"is not valid JSON"),
            ("bad.yaml", "a: [", r"is not valid YAML"),
            ("e.txt", "x", r"must be \.json, \.yaml or \.yml")):
        if content is not None:
            (tmp_path / name).write_text(content)
        with pytest.raises(WorkflowDefinitionError, match=message):
            load_examples(tmp_path / name, "router w.r")


def _spec(threshold: float) -> RouterSpec:
    return RouterSpec(step="route", text="message",
                      examples={k: tuple(v) for k, v in EXAMPLES.items()},
                      threshold=threshold, default="general", method="similarity",
                      source="examples=")


def test_the_best_label_at_or_over_the_threshold_is_the_route() -> None:
    decision = _spec(0.5).decide({"billing": 0.7, "technical": 0.2, "general": 0.1})
    assert decision == {"route": "billing", "confidence": 0.7, "label": "billing",
                        "defaulted": False, "threshold": 0.5, "method": "similarity",
                        "scores": {"billing": 0.7, "technical": 0.2, "general": 0.1}}
    assert _spec(0.7).decide({"billing": 0.7})["route"] == "billing"  # at the threshold


def test_under_the_threshold_the_default_route_is_taken_and_said() -> None:
    spec = _spec(0.55)
    decision = spec.decide({"billing": 0.3, "technical": 0.54, "general": 0.1})
    assert (decision["route"], decision["label"], decision["defaulted"]) == (
        "general", "technical", True)
    assert spec.describe(decision) == ("routed to default 'general': best 'technical' 0.54 "
                                       "< threshold 0.55")
    # A tie goes to the label listed first.
    assert spec.decide({"billing": 0.6, "technical": 0.6})["route"] == "billing"


def test_chose_is_a_when_predicate_on_the_router_output(app: Any) -> None:
    router = _router(app, "r_when")
    predicate = router.chose("billing", "technical")
    assert predicate(route={"route": "technical"}) is True
    assert predicate(route={"route": "general"}) is False
    assert predicate(route=None) is False  # the router was skipped
    wf = app.workflows["r_when"]

    @wf.task(when=router.chose("billing"))
    def billing(message: str) -> str:
        return message

    bound = wf.validate().steps["billing"]
    assert bound.upstream == frozenset({"route"})


def test_new_examples_make_a_new_workflow_version(app: Any) -> None:
    first = _router(app, "r_version_a")
    second = _router(app, "r_version_b",
                     examples={**EXAMPLES, "general": ["what are your hours"]})
    assert first.spec.fn.__qualname__ != second.spec.fn.__qualname__
