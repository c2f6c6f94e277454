"""``orchestrate graph``: a workflow's DAG as Mermaid (or DOT) text."""

from __future__ import annotations

import click

from orchestration.cli.common import orchestrator_for_cli
from orchestration.define.compiling import CompiledWorkflow
from orchestration.define.graph import Node, Parallel, Series
from orchestration.define.intents import RouterStep
from orchestration.define.step import BoundStep
from orchestration.observe.queries import graph_dot


@click.command()
@click.argument("workflow")
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid",
              show_default=True)
def graph(workflow: str, fmt: str) -> None:
    """The workflow's DAG as Mermaid text, with the canvas plan the compiler chose.

    Shapes: a map is a double-edged box, a conditional step a rhombus, a step that starts
    a child run a parallelogram, a step that waits for a person a hexagon.
    """
    orchestrator = orchestrator_for_cli(load_workflows=True)
    found = orchestrator.workflows.get(workflow)
    if found is None:
        raise click.ClickException(f"unknown workflow {workflow!r} "
                                   f"(known: {', '.join(sorted(orchestrator.workflows))})")
    compiled = found.validate()
    click.echo(graph_dot(workflow, compiled) if fmt == "dot" else mermaid(compiled))


def mermaid(compiled: CompiledWorkflow) -> str:
    """A compiled workflow as Mermaid text, with the canvas plan as a comment."""
    lines = ["flowchart LR"]
    for name, bound in compiled.steps.items():
        lines.append(f"    {_node(name, bound)}")
        lines.extend(f"    {up} --> {name}" for up in sorted(bound.upstream))
    decomposition = compiled.decomposition
    lines.append(f"%% canvas: {_plan_text(decomposition.plan)}")
    if not decomposition.exact:
        lines.append(f"%% not series-parallel: added waits {decomposition.added_waits}")
    return "\n".join(lines)


def _node(name: str, bound: BoundStep) -> str:
    spec = bound.spec
    names = getattr(getattr(spec.fn, "__code__", None), "co_names", ())
    tags = []
    if isinstance(spec.fn, RouterStep):  # a semantic router: its labels; routes= starts one
        tags.append(f"routes by intent: {' / '.join(spec.fn.spec.labels)}")
        names = ("run_child",) if spec.fn.spec.routes is not None else ()
    if spec.map:
        quorum = f", min {spec.min_success}" if spec.min_success is not None else ""
        tags.append(f"map over {spec.map}{quorum}")
    if spec.when is not None:
        tags.append("when ...")
    if "run_child" in names:
        tags.append("starts a child run")
    if "wait_for_input" in names:
        tags.append("waits for a person")
    label = "<br/>".join([name, bound.queue, *tags])
    if spec.map:
        return f'{name}[["{label}"]]'
    if "wait_for_input" in names:
        return f'{name}{{{{"{label}"}}}}'
    if "run_child" in names:
        return f'{name}[/"{label}"/]'
    if spec.when is not None:
        return f'{name}{{"{label}"}}'
    return f'{name}["{label}"]'


def _plan_text(plan: Node | Series | Parallel) -> str:
    if isinstance(plan, Node):
        return plan.name
    inner = ", ".join(_plan_text(part) for part in plan.parts)
    return f"chain({inner})" if isinstance(plan, Series) else f"group({inner})"
