"""Malformed pipeline files: each is rejected before anything runs, with every problem
named by its JSON pointer (and line), and nothing registered.

The files are in ``malformed/``; what each must be rejected with is in
``malformed_expected.yaml`` (pointer, part of the message, line).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from orchestration import Orchestrator, PipelineError, load_pipeline
from orchestration.testing import embedded_orchestrator

HERE = Path(__file__).parent
MALFORMED = HERE / "malformed"
EXPECTED = yaml.safe_load((HERE / "malformed_expected.yaml").read_text())


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    # The deployment's catalogue (config/models.yaml): gpt-4o-mini is a known model.
    with embedded_orchestrator(tmp_path_factory.mktemp("malformed")) as orchestrator:
        yield orchestrator


def test_there_are_more_than_thirty_malformed_files() -> None:
    files = sorted(p.name for p in MALFORMED.iterdir())
    assert len(files) >= 30
    assert sorted(EXPECTED) == files


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_malformed_file_is_rejected_naming_the_path_and_the_problem(
        name: str, host: Orchestrator) -> None:
    with pytest.raises(PipelineError) as caught:
        load_pipeline(MALFORMED / name, orchestrator=host)
    problems = caught.value.problems
    text = str(caught.value)
    for expected in EXPECTED[name]:
        matching = [p for p in problems if p.pointer == expected["pointer"]
                    and expected["contains"] in p.message]
        assert matching, (f"no problem at {expected['pointer']!r} saying "
                          f"{expected['contains']!r}; got:\n{text}")
        if "line" in expected:
            assert matching[0].line == expected["line"], text
        assert expected["contains"] in text
    assert not any(w.name.startswith("p_") for w in host.workflows.values())


def test_every_problem_is_reported_not_only_the_first(host: Orchestrator) -> None:
    with pytest.raises(PipelineError) as caught:
        load_pipeline(MALFORMED / "many_problems.yaml", orchestrator=host)
    assert len(caught.value.problems) >= 4
    assert str(caught.value).startswith(f"{MALFORMED / 'many_problems.yaml'}: ")
