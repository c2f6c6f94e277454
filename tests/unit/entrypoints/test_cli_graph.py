"""``orchestrate graph`` of the shipped workflows, as an operator runs it (a subprocess).

No broker or database is needed: the command imports the workflow modules of
``ORCH_IMPORTS`` (the default list) and prints the DAG. ``ORCH_*`` variables of the
calling shell are dropped so the default settings apply; the results DB URL points
into a temporary directory in case anything opened it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.support.processes import ORCHESTRATE, child_env

FRAUD_MODELS = ["model_logreg", "model_tree", "model_forest", "model_boosting", "model_bayes",
                "model_knn", "model_isolation"]
SUPPORT_EDGES = {("classify_ticket", "extract_urgency"), ("classify_ticket", "route_to_team"),
                 ("extract_urgency", "route_to_team"), ("route_to_team", "generate_response")}
SUPPORT_QUEUES = {"classify_ticket": "model.classifier", "extract_urgency": "model.urgency",
                  "route_to_team": "default", "generate_response": "model.gpt-4o-mini"}


def orchestrate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = child_env({k: v for k, v in os.environ.items() if not k.startswith("ORCH_")},
                    ORCH_DATABASE_URL=f"sqlite:///{tmp_path / 'graph.db'}")
    return subprocess.run([*ORCHESTRATE, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def mermaid_edges(text: str) -> set[tuple[str, str]]:
    return set(re.findall(r"^\s+(\w+) --> (\w+)$", text, flags=re.MULTILINE))


def dot_edges(text: str) -> set[tuple[str, str]]:
    return set(re.findall(r'^\s+"(\w+)" -> "(\w+)";$', text, flags=re.MULTILINE))


def dot_nodes(text: str) -> dict[str, str]:
    """Node name -> label, from ``"name" [shape=..., label="..."];`` lines."""
    return dict(re.findall(r'^\s+"(\w+)" \[shape=\w+, label="([^"]*)"\];$', text,
                           flags=re.MULTILINE))


def test_graph_fraud_voting_as_mermaid(tmp_path: Path) -> None:
    text = ok(orchestrate(tmp_path, "graph", "fraud_voting"))
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    for model in FRAUD_MODELS:
        assert f'    {model}["{model}<br/>model.fraud"]' in lines
    assert '    aggregate["aggregate<br/>default"]' in lines
    assert mermaid_edges(text) == {(model, "aggregate") for model in FRAUD_MODELS}
    # The canvas: the seven models in parallel (a chord), then the aggregate.
    assert f"%% canvas: chain(group({', '.join(FRAUD_MODELS)}), aggregate)" in lines
    assert not any("not series-parallel" in line for line in lines)


def test_graph_fraud_voting_as_dot(tmp_path: Path) -> None:
    text = ok(orchestrate(tmp_path, "graph", "fraud_voting", "--format", "dot"))
    lines = text.strip().splitlines()
    assert lines[0] == 'digraph "fraud_voting" {' and lines[-1] == "}"
    nodes = dot_nodes(text)
    assert set(nodes) == {*FRAUD_MODELS, "aggregate"}
    assert all(nodes[model] == f"{model}\\nmodel.fraud" for model in FRAUD_MODELS)
    assert nodes["aggregate"] == "aggregate\\ndefault"
    # Exactly the seven model nodes feed aggregate, and nothing else is an edge.
    assert dot_edges(text) == {(model, "aggregate") for model in FRAUD_MODELS}
    assert sum(" -> " in line for line in lines) == len(FRAUD_MODELS)


def test_graph_support_ticket_as_mermaid_and_dot(tmp_path: Path) -> None:
    mermaid = ok(orchestrate(tmp_path, "graph", "support_ticket"))
    assert mermaid.splitlines()[0] == "flowchart LR"
    for step, queue in SUPPORT_QUEUES.items():
        assert f'    {step}["{step}<br/>{queue}"]' in mermaid.splitlines()
    assert mermaid_edges(mermaid) == SUPPORT_EDGES
    assert ("%% canvas: chain(classify_ticket, extract_urgency, route_to_team, "
            "generate_response)") in mermaid

    dot = ok(orchestrate(tmp_path, "graph", "support_ticket", "--format", "dot"))
    assert dot.startswith('digraph "support_ticket" {')
    assert dot_nodes(dot) == {step: f"{step}\\n{queue}" for step, queue in SUPPORT_QUEUES.items()}
    assert dot_edges(dot) == SUPPORT_EDGES


def test_graph_of_an_unknown_workflow_names_the_known_ones(tmp_path: Path) -> None:
    done = orchestrate(tmp_path, "graph", "no_such_flow", "--format", "dot")
    assert done.returncode != 0
    assert "unknown workflow 'no_such_flow'" in done.stderr
    assert "fraud_voting" in done.stderr and "support_ticket" in done.stderr
