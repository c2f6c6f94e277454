"""``gather=``: a step receives every ``depends_on`` output as one mapping.

Through the compiler and the runtime: parallel dependencies, a failed non-critical one
(None, as a parameter of its own would be), an output passed by reference, a fused
chain, a map step, and a fallback called with the gathered mapping.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestration import RunStatus, StepStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.compile.canvas import build_canvas
from orchestration.core.envelope import Envelope
from orchestration.testing import embedded_orchestrator

BIG = "x" * 5000  # over the inline limit below: travels by reference


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    # Every workflow is declared before the first submit (one embedded worker).
    with embedded_orchestrator(Path(tmp_path_factory.mktemp("gather")),
                               inline_output_limit=1000) as orch:
        yield _declare(orch)


def _declare(orch: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(fan=Workflow("gather_fan", app=orch),
                         chain=Workflow("gather_chain", app=orch),
                         mapped=Workflow("gather_map", app=orch))

    @ns.fan.task
    def xgboost(amount: int) -> float:
        return amount / 100

    @ns.fan.task(output="forest_score")
    def forest(amount: int) -> float:
        return amount / 200

    @ns.fan.task(critical=False)
    def broken(amount: int) -> float:
        raise RuntimeError("this model is down")

    @ns.fan.task
    def report(amount: int) -> str:
        return BIG

    @ns.fan.task(depends_on=[xgboost, "forest_score", broken, report], gather="results")
    def aggregate_models(results: dict[str, Any], amount: int) -> dict[str, Any]:
        return {"keys": sorted(results), "xgboost": results["xgboost"],
                "forest": results["forest_score"], "broken": results["broken"],
                "report_len": len(results["report"]), "amount": amount}

    @ns.chain.task
    def first(x: int) -> int:
        return x + 1

    @ns.chain.task(depends_on=[first], gather="upstream")
    def second(upstream: dict[str, int]) -> int:
        return upstream["first"] * 10

    @ns.chain.task(depends_on=[first, second], gather="seen",
                   fallback=lambda seen: {"fallback_saw": seen})
    def third(seen: dict[str, int]) -> dict[str, Any]:
        raise ValueError("always fails: the fallback answers with what it was given")

    @ns.mapped.task
    def factor(x: int) -> int:
        return x * 2

    @ns.mapped.task(map="item", depends_on=[factor], gather="inputs")
    def scaled(item: int, inputs: dict[str, int]) -> int:
        return item * inputs["factor"]

    return ns


def test_every_dependency_arrives_by_its_depends_on_name(flows: SimpleNamespace) -> None:
    result = flows.fan.run(amount=50, timeout=30)
    assert result.status is RunStatus.SUCCEEDED
    assert result.steps["broken"].status is StepStatus.FAILED
    assert result.outputs["aggregate_models"] == {
        "keys": ["broken", "forest_score", "report", "xgboost"],
        "xgboost": 0.5, "forest": 0.25,
        "broken": None,  # failed, non-critical: None, as a parameter of its own receives
        "report_len": len(BIG),  # read back by reference from the results DB
        "amount": 50,
    }


def test_gather_works_in_a_fused_chain(flows: SimpleNamespace) -> None:
    compiled = flows.chain.validate()
    run_id = str(uuid.uuid4())
    message = Envelope.for_inputs(run_id, {"x": 1}, 10_000).to_message()
    canvas = build_canvas(compiled.decomposition.plan, compiled.steps, message, run_id,
                          flows.chain.app.celery)
    assert canvas.kwargs["fused"] == ["first", "second", "third"]
    result = flows.chain.run(x=1, timeout=30)
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs["second"] == 20
    assert result.steps["third"].status is StepStatus.FALLBACK
    assert result.outputs["third"] == {"fallback_saw": {"first": 2, "second": 20}}


def test_a_map_step_gathers_besides_its_list(flows: SimpleNamespace) -> None:
    result = flows.mapped.run(x=3, item=[1, 2, 3], timeout=30)
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs["scaled"] == [6, 12, 18]
