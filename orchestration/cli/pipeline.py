"""``orchestrate pipeline``: validate, draw, run a pipeline file; print the schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from orchestration.app import Orchestrator
from orchestration.cli.common import STATUS_STYLE, console, orchestrator_for_cli
from orchestration.cli.graph import mermaid
from orchestration.core.envelope import dumps
from orchestration.core.status import RunStatus
from orchestration.errors import OrchestrationError, PipelineError, Problem
from orchestration.pipelines import check_pipeline, load_pipeline, plan_of, schema
from orchestration.pipelines.plan import UNKNOWN_TARGET
from orchestration.pipelines.steps import Router

FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def pipeline() -> None:
    """Pipeline files: workflows declared in JSON or YAML."""


def _orchestrator(file: Path) -> Orchestrator:
    """The default orchestrator; ORCH_IMPORTS imported only if FILE routes to a workflow
    it does not find among pipelines (importing them can take seconds). The pipeline
    folder is not loaded: the file checked may be one of its own, broken."""
    orchestrator = orchestrator_for_cli()
    if any(UNKNOWN_TARGET in p.message for p in check_pipeline(file, orchestrator=orchestrator)):
        orchestrator = orchestrator_for_cli(load_workflows=True, pipelines=False)
    return orchestrator


@pipeline.command()
@click.argument("file", type=FILE)
def validate(file: Path) -> None:
    """Check FILE against the schema and every name in it; print every problem.

    Each line is FILE:LINE: /json/pointer: problem (the line when known). Exit code 1
    when there is any problem.
    """
    problems = check_pipeline(file, orchestrator=_orchestrator(file))
    if not problems:
        workflow = plan_of(file, orchestrator=_orchestrator(file))
        compiled = workflow.validate()
        console.print(Text(f"{file}: ok: pipeline {workflow.name!r}, {len(compiled.steps)} "
                           f"step(s), version {compiled.version}", style="green"))
        return
    for problem in problems:
        click.echo(_line(file, problem))
    raise SystemExit(1)


def _line(file: Path, problem: Problem) -> str:
    where = f"{problem.file or file}{f':{problem.line}' if problem.line else ''}"
    return f"{where}: {problem.pointer or '/'}: {problem.message}"


@pipeline.command()
@click.argument("file", type=FILE)
def graph(file: Path) -> None:
    """FILE's steps as Mermaid text: the DAG, the canvas plan, and where routing leads."""
    try:
        workflow = plan_of(file, orchestrator=_orchestrator(file))
    except PipelineError as exc:
        raise click.ClickException(str(exc)) from exc
    lines = [mermaid(workflow.validate())]
    for name, spec in workflow.steps.items():
        if isinstance(spec.fn, Router):
            routes = [*spec.fn.table.items(), *(
                [("(default)", spec.fn.default)] if spec.fn.default else [])]
            for value, route in routes:
                node = route.target if route.is_step else \
                    f'{route.target}[/"{route.target}<br/>child run"/]'
                lines.append(f"    {name} -.->|{value}| {node}")
    click.echo("\n".join(lines))


@pipeline.command()
@click.argument("file", type=FILE)
@click.option("--input", "-i", "inputs", multiple=True, metavar="KEY=VALUE",
              help="an input (VALUE is read as JSON when it is JSON, else as text); repeat")
@click.option("--timeout", default=120.0, show_default=True, help="seconds to wait")
def run(file: Path, inputs: tuple[str, ...], timeout: float) -> None:
    """Load FILE, start a run with the inputs given, wait, and print the result.

    With no ORCH_BROKER_URL the run executes in this process (the embedded default);
    with a broker, workers must load the same file (ORCH_PIPELINES). Exit code 1 when
    the run does not succeed.
    """
    orchestrator = _orchestrator(file)
    values = dict(_pair(item) for item in inputs)
    try:
        workflow = load_pipeline(file, orchestrator=orchestrator)
    except PipelineError as exc:
        raise click.ClickException(str(exc)) from exc
    folder = orchestrator.settings.pipelines
    if not orchestrator.settings.embedded and (
            folder is None or file.resolve().parent != folder.resolve()):
        console.print(Text(f"note: workers run this only if they load {file} "
                           f"(ORCH_PIPELINES is {folder})", style="yellow"))
    try:
        result = workflow.submit(**values).wait(timeout=timeout)
    except OrchestrationError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if orchestrator.settings.embedded:
            orchestrator.shutdown()
    console.print(Text(f"run {result.run_id}: {result.status.value}",
                       style="green" if result.status is RunStatus.SUCCEEDED else "red"))
    for name, step in result.steps.items():
        line = Text(f"  {name}: ")
        line.append(step.status.value, style=STATUS_STYLE.get(step.status, ""))
        if step.output is not None:
            line.append(f" -> {_short(step.output)}")
        if step.error and step.status.value != "succeeded":
            line.append(f" ({step.error.strip().splitlines()[-1][:200]})", style="red")
        console.print(line)
    click.echo(json.dumps(result.outputs, indent=2, ensure_ascii=False, default=str))
    if result.status is not RunStatus.SUCCEEDED:
        raise SystemExit(1)


@pipeline.command("schema")
def print_schema() -> None:
    """Print the pipeline file JSON Schema (draft 2020-12), for editors and CI."""
    click.echo(json.dumps(schema(), indent=2))


def _pair(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--input")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else dumps(value)
    return text if len(text) <= 160 else text[:157] + "..."
