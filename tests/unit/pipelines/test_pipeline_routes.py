"""A pipeline file's model step may name a model route of the catalogue."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import MODELS_FILE
from orchestration import Orchestrator, PipelineError, load_pipeline
from orchestration.testing import embedded_orchestrator


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Orchestrator]:
    # No worker starts: nothing is submitted in this module.
    with embedded_orchestrator(tmp_path, models_file=MODELS_FILE) as orchestrator:
        yield orchestrator


def write(folder: Path, model: str) -> Path:
    path = folder / "pl_routed.json"
    path.write_text(json.dumps({"pipeline": "pl_routed", "inputs": ["text"],
                                "steps": {"answer": {"model": model, "prompt": "{{ text }}"}}}))
    return path


def test_a_model_step_may_name_a_route(host: Orchestrator, tmp_path: Path) -> None:
    workflow = load_pipeline(write(tmp_path, "support-tiered"), orchestrator=host)
    spec = workflow.steps["answer"]
    assert spec.model == "support-tiered"
    assert workflow.queue_of(spec) == "model.support-tiered"


def test_an_unknown_name_is_still_refused_listing_the_routes(host: Orchestrator,
                                                             tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"model 'support-tiers' is not in the model "
                                            r"catalogue \(known: .*support-tiered"):
        load_pipeline(write(tmp_path, "support-tiers"), orchestrator=host)
