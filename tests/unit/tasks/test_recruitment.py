"""The resume-processing workflow: parsing, the fit score, and scoring in batches of ten
across runs on the embedded default."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestration import RunStatus
from orchestration.testing import embedded_orchestrator
from tasks.recruitment.workflow import build_workflow, decide, fit, parse, resumes

STRONG = ("Backend engineer, 9+ years: Python, PostgreSQL, distributed systems, message "
          "queues (RabbitMQ), on-call rotations, Kubernetes, Go, observability.")
WEAK = "Frontend developer, 2 years of React and TypeScript."


def test_parsing_finds_skills_and_years() -> None:
    assert parse(STRONG) == {"skills": ["python", "postgresql", "distributed systems",
                                        "message queues", "on-call", "kubernetes", "go",
                                        "observability"], "years": 9}
    assert parse(WEAK) == {"skills": ["react", "typescript"], "years": 2}
    assert parse("Golang and pythonic code")["skills"] == []  # whole words only


def test_fit_and_decision() -> None:
    assert fit(parse(STRONG)) == {"score": 1.0, "missing": []}
    weak = fit(parse(WEAK))
    assert weak["score"] == pytest.approx(0.05) and len(weak["missing"]) == 5
    assert [decide(s) for s in (0.9, 0.5, 0.1)] == ["interview", "review", "reject"]


def test_the_shipped_workflow_scores_in_batches_of_ten() -> None:
    spec = resumes.validate().steps["score_candidate"].spec
    assert (spec.batch_size, spec.batch_wait) == (10, 0.5)


@pytest.fixture(scope="module")
def calls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[int]]]:
    sizes: list[int] = []
    with embedded_orchestrator(Path(tmp_path_factory.mktemp("recruitment")),
                               embedded_concurrency=4) as orch:
        # A partly filled batch waits a minute: only full batches of ten are called.
        flow = build_workflow(app=orch, name="recruitment_test", batch_wait=60)
        step = flow.validate().steps["score_candidate"].spec
        original = step.fn

        def counted(skills: list[dict[str, Any]]) -> list[dict[str, Any]]:
            sizes.append(len(skills))
            return list(original(skills))

        object.__setattr__(step, "fn", counted)
        yield flow, sizes


def test_twenty_resumes_are_scored_in_two_calls(calls: tuple[Any, list[int]]) -> None:
    flow, sizes = calls
    handles = flow.submit_many([{"candidate_id": i, "resume": STRONG if i % 2 else WEAK}
                                for i in range(20)])
    results = [handle.wait(timeout=60) for handle in handles]
    assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 20
    assert sizes == [10, 10]
    decisions = [r.outputs["decision"]["decision"] for r in results]
    assert decisions == ["reject", "interview"] * 10


def test_workers_import_the_workflow_and_serve_its_queue() -> None:
    from config import WORKFLOW_MODULES

    assert "tasks.recruitment.workflow" in WORKFLOW_MODULES
    procfile = (Path(__file__).resolve().parents[3] / "Procfile").read_text()
    queues = {bound.queue for bound in resumes.validate().steps.values()}
    assert queues == {"default"} and "-Q default " in procfile
