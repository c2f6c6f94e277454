"""``orchestrate``: reads runs from the results DB named by ``ORCH_DATABASE_URL``.

Runs are made by an in-process orchestrator; the CLI then builds the default
orchestrator from the environment, exactly as a separate ``orchestrate`` process would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from click.testing import CliRunner, Result

import orchestration.define.host as host_module
from orchestration import RunStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.cli import main
from orchestration.testing import embedded_orchestrator


def _workflows(app: Orchestrator) -> SimpleNamespace:
    ok = Workflow("cli_ok", app=app)

    @ok.task
    def classify(text: str) -> str:
        return "billing"

    @ok.task(output="urgency")
    def score(classify: str) -> str:
        return "high"

    failing = Workflow("cli_failing", app=app)

    @failing.task
    def parse(text: str) -> str:
        raise ValueError("no route for ticket")

    @failing.task
    def answer(parse: str) -> str:
        return parse

    markup = Workflow("cli_markup", app=app)

    @markup.task
    def render(text: str) -> str:
        raise ValueError("template has an unbalanced [/] tag")

    return SimpleNamespace(ok=ok, failing=failing, markup=markup)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with embedded_orchestrator(tmp_path_factory.mktemp("cli")) as app:
        flows = _workflows(app)
        done = SimpleNamespace(ok=flows.ok.run(text="invoice", timeout=10),
                               failing=flows.failing.run(text="?", timeout=10),
                               markup=flows.markup.run(text="?", timeout=10))
        assert done.ok.status is RunStatus.SUCCEEDED and done.failing.status is RunStatus.FAILED
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ORCH_DATABASE_URL", app.settings.database_url)
            patch.setenv("ORCH_IMPORTS", "")
            patch.setenv("COLUMNS", "250")
            patch.delenv("ORCH_BROKER_URL", raising=False)
            patch.setattr(host_module, "_default", None)  # rebuilt from the environment
            yield done
            built = host_module._default
            if built is not None:
                built.shutdown()


def invoke(*args: str, columns: int | None = None) -> Result:
    env = {"COLUMNS": str(columns)} if columns else None
    return CliRunner().invoke(main, list(args), env=env)


def test_runs_lists_every_run(runs: SimpleNamespace) -> None:
    result = invoke("runs")
    assert result.exit_code == 0, result.output
    for run, status in ((runs.ok, "succeeded"), (runs.failing, "failed")):
        line = next(line for line in result.output.splitlines() if run.run_id in line)
        assert status in line and run.workflow in line
    assert "critical step(s) failed: parse" in result.output  # the error column


def test_runs_filters(runs: SimpleNamespace) -> None:
    failed = invoke("runs", "--status", "failed")
    assert runs.failing.run_id in failed.output and runs.ok.run_id not in failed.output
    only_ok = invoke("runs", "-w", "cli_ok")
    assert runs.ok.run_id in only_ok.output and runs.failing.run_id not in only_ok.output
    assert invoke("runs", "--status", "exploded").exit_code != 0


def test_runs_keeps_full_ids_at_80_columns(runs: SimpleNamespace) -> None:
    result = invoke("runs", columns=80)
    assert runs.ok.run_id in result.output and "succeeded" in result.output


def test_show_lists_steps_with_status(runs: SimpleNamespace) -> None:
    result = invoke("show", runs.failing.run_id)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert runs.failing.run_id in lines[0] and "failed" in lines[0]
    assert any("parse failed" in line for line in lines)
    assert any("answer skipped" in line for line in lines)
    assert "ValueError: no route for ticket" in result.output
    ok = invoke("show", runs.ok.run_id).output
    assert "classify succeeded" in ok and "score succeeded" in ok and "attempts=1" in ok


def test_show_json(runs: SimpleNamespace) -> None:
    result = invoke("show", runs.ok.run_id, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["run_id"], data["workflow"], data["status"]) == (
        runs.ok.run_id, "cli_ok", "succeeded")
    assert data["outputs"] == {"classify": "billing", "urgency": "high"}
    assert data["inputs"] == {"text": "invoice"}
    assert {name: step["status"] for name, step in data["steps"].items()} == {
        "classify": "succeeded", "score": "succeeded"}
    failed = json.loads(invoke("show", runs.failing.run_id, "--json").output)
    assert failed["steps"]["parse"]["error_type"] == "builtins.ValueError"


def test_show_unknown_run(runs: SimpleNamespace) -> None:
    result = invoke("show", "no-such-run")
    assert result.exit_code == 1
    assert "no run 'no-such-run'" in result.output


def test_show_prints_errors_verbatim(runs: SimpleNamespace) -> None:
    result = invoke("show", runs.markup.run_id)
    assert result.exit_code == 0, repr(result.exception)
    assert "unbalanced [/] tag" in result.output


def test_graph_prints_mermaid(runs: SimpleNamespace) -> None:
    wf = Workflow("cli_graph")  # on the default orchestrator, as module-level workflows are

    @wf.task(queue="model.classifier")
    def classify(text: str) -> str:
        return text

    @wf.task(output="urgency")
    def extract(text: str, classify: str) -> str:
        return text

    @wf.task
    def route(classify: str, urgency: str) -> str:
        return classify

    result = invoke("graph", "cli_graph")
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    assert lines[0] == "flowchart LR"
    assert {"classify --> extract", "classify --> route", "extract --> route"} <= set(lines)
    assert sum("-->" in line for line in lines) == 3
    assert 'classify["classify<br/>model.classifier"]' in lines
    assert lines[-1].startswith("%% canvas: chain(classify, extract, route)")


def test_graph_of_an_unknown_workflow(runs: SimpleNamespace) -> None:
    result = invoke("graph", "nope")
    assert result.exit_code == 1 and "unknown workflow 'nope'" in result.output


def test_db_upgrade(runs: SimpleNamespace) -> None:
    result = invoke("db", "upgrade")
    assert result.exit_code == 0 and "schema is current" in result.output
