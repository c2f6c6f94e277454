"""``orchestrate pipeline validate|graph|run|schema`` as an operator runs them (subprocesses).

No ``ORCH_*`` variable of the calling shell is passed on: no broker is configured, so
``pipeline run`` executes on the embedded default, with the local provider.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from orchestration.pipelines import schema
from tests.support.processes import ORCHESTRATE, ROOT, child_env

SHIPPED = ROOT / "tasks" / "pipelines"


def orchestrate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = child_env({k: v for k, v in os.environ.items() if not k.startswith("ORCH_")},
                    ORCH_DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}",
                    ORCH_LOG_LEVEL="WARNING")
    return subprocess.run([*ORCHESTRATE, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_validate_says_ok_for_the_shipped_pipelines(tmp_path: Path) -> None:
    for name in ("customer_support_orchestrator.json", "billing_agent_orchestrator.yaml"):
        done = orchestrate(tmp_path, "pipeline", "validate", str(SHIPPED / name))
        assert done.returncode == 0, done.stdout + done.stderr
        assert ": ok: pipeline" in done.stdout and "version " in done.stdout


def test_validate_prints_every_problem_with_its_line_and_pointer(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline: p_cli_bad\n"
                   "inputs: [text]\n"
                   "steps:\n"
                   "  classify_ticket:\n"
                   "    model: gpt-4o-mini\n"
                   "    prompt: '{{ txt }}'\n"
                   "    errors: {timeout: 'retry(x)'}\n")
    done = orchestrate(tmp_path, "pipeline", "validate", str(bad))

    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert f"{bad}:6: /steps/classify_ticket/prompt: the placeholder {{{{ txt }}}} reads " \
           "'txt', which is no input (inputs: text) and no step output (outputs: " \
           "classify_ticket)" in lines
    assert any(line.startswith(f"{bad}:7: /steps/classify_ticket/errors/timeout: ")
               for line in lines)


def test_schema_prints_the_published_schema(tmp_path: Path) -> None:
    done = orchestrate(tmp_path, "pipeline", "schema")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == schema()


def test_graph_shows_the_dag_and_where_routing_leads(tmp_path: Path) -> None:
    done = orchestrate(tmp_path, "pipeline", "graph",
                       str(SHIPPED / "customer_support_orchestrator.json"))
    assert done.returncode == 0, done.stderr
    assert "classify_ticket --> route_ticket" in done.stdout
    assert "route_ticket -.->|technical| tech_support_orchestrator" in done.stdout


def test_run_executes_a_pipeline_with_no_broker_configured(tmp_path: Path) -> None:
    done = orchestrate(tmp_path, "pipeline", "run",
                       str(SHIPPED / "customer_support_orchestrator.json"),
                       "--input", "text=A billing question about my invoice")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout
    outputs = json.loads(done.stdout[done.stdout.index("\n{") + 1:])
    assert outputs["classification"] == "billing"
    assert "reply" in outputs["route_ticket"]


def test_run_refuses_inputs_that_are_not_key_value(tmp_path: Path) -> None:
    done = orchestrate(tmp_path, "pipeline", "run",
                       str(SHIPPED / "general_response.yaml"), "--input", "text")
    assert done.returncode == 2
    assert "'text' is not KEY=VALUE" in done.stderr


def test_validate_imports_the_workflow_modules_a_file_routes_to(tmp_path: Path) -> None:
    routed = tmp_path / "to_python.yaml"
    routed.write_text("pipeline: p_cli_to_python\n"
                      "inputs: [ticket_id, text, kind]\n"
                      "steps:\n"
                      "  route:\n"
                      "    route_on: kind\n"
                      "    routing: {support: support_ticket}\n")
    done = orchestrate(tmp_path, "pipeline", "validate", str(routed))
    assert done.returncode == 0, done.stdout + done.stderr  # found in ORCH_IMPORTS
