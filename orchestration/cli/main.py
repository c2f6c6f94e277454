"""``orchestrate``: the command group, and the commands on runs, workers and queues.

Reads the same ``ORCH_*`` settings as workers; imports the workflow modules of
``ORCH_IMPORTS`` to know workflow graphs.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import click
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from orchestration.cli.beat import beat
from orchestration.cli.common import (
    STATUS_STYLE,
    console,
    orchestrator_for_cli,
    settle_embedded,
)
from orchestration.cli.db import db
from orchestration.cli.errors import OperatorGroup
from orchestration.cli.events import consume, emit, events
from orchestration.cli.graph import graph
from orchestration.cli.memory import memory
from orchestration.cli.pipeline import pipeline
from orchestration.cli.serve import serve
from orchestration.core.clock import as_utc
from orchestration.core.results import RunResult, StepRecord, cancel_run
from orchestration.core.status import RunStatus, StepStatus
from orchestration.errors import OrchestrationError
from orchestration.execute.attempts import POLICY_ESCALATE
from orchestration.observe.exporter import flower_command, serve_metrics
from orchestration.observe.queries import known_queues, queue_depths, workflow_stats
from orchestration.store.batches import Batches
from orchestration.worker.versions import version_summary, waiting_reason


@click.group(cls=OperatorGroup)
@click.option("--debug", is_flag=True, help="show the traceback of an error")
def main(debug: bool) -> None:
    """Inspect and operate workflow runs."""


@main.command()
@click.option("--workflow", "-w", help="only this workflow")
@click.option("--status", "-s", type=click.Choice([s.value for s in RunStatus]))
@click.option("--limit", "-n", default=20, show_default=True)
def runs(workflow: str | None, status: str | None, limit: int) -> None:
    """Recent runs, newest first."""
    summaries = orchestrator_for_cli().store.list_runs(
        workflow=workflow, status=RunStatus(status) if status else None, limit=limit)
    table = Table()
    with_errors = any(run.error for run in summaries)
    for column in ("run id", "workflow", "status", "created", "took", "cost $"):
        table.add_column(column, no_wrap=True)
    if with_errors:
        table.add_column("error")
    for run in summaries:
        duration = (run.finished_at - run.created_at).total_seconds() \
            if run.finished_at and run.created_at else None
        row = [run.run_id, run.workflow, run.status.value, _time(run.created_at),
               "-" if duration is None else f"{duration:.2f} s", f"{run.cost_usd:.4f}"]
        if with_errors:
            row.append((run.error or "")[:60])
        table.add_row(*map(Text, row))
    console.print(table)


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def show(run_id: str, as_json: bool) -> None:
    """One run: its steps with status, timeline, attempts, cost and errors."""
    orchestrator = orchestrator_for_cli()
    try:
        run = orchestrator.store.get_run(run_id)
    except OrchestrationError as exc:
        raise click.ClickException(str(exc)) from exc
    permit_waits = orchestrator.store.permit_waits.of_run(run_id)
    batched = Batches(orchestrator.store.engine, orchestrator.store.reader).of_run(run_id)
    versioned = waiting_reason(orchestrator.store, run_id)
    if as_json:
        shown = _run_json(run)
        shown["version_waits"] = versioned
        shown["permit_waits"] = [{"scope": scope, "step": waiting, "ahead": ahead}
                                 for scope, waiting, ahead in permit_waits]
        shown["batch_elements"] = [{"step": step, "status": status, "buffered": buffered}
                                   for step, status, buffered in batched]
        click.echo(json.dumps(shown, indent=2, default=str))
        return
    duration = f"{run.duration_s:.3f} s" if run.duration_s is not None else "not finished"
    # Text, not markup: workflow names, errors and worker names are data and may hold
    # '[...]' that rich would read as tags.
    tree = Tree(Text.assemble((run.workflow, "bold"), f" run {run.run_id}: ",
                              (run.status.value, "bold"),
                              f" ({duration}, ${run.cost_usd:.4f})"))
    if run.error:
        tree.add(Text(run.error, style="red"))
    for scope, waiting, ahead in permit_waits:
        what = f"step {waiting}" if waiting else "the run"
        tree.add(Text(f"queued: {what} waits for a max_parallel permit of {scope} "
                      f"({ahead} ahead of it)", style="yellow"))
    for reason in versioned:
        tree.add(Text(f"version: {reason}", style="yellow"))
    for step_name, status, buffered in batched:
        tree.add(Text(f"batched: step {step_name} " + (
            f"waits for its batch ({buffered} element(s) buffered)" if status == "waiting"
            else "is in a batch call now" if status == "taken"
            else "was called in a batch; its run goes on"), style="yellow"))
    origin = run.created_at
    for step in run.steps.values():
        tree.add(_step_line(step, origin))
    console.print(tree)


SHOWN_ERROR_STATUSES = frozenset({StepStatus.FAILED, StepStatus.FALLBACK, StepStatus.SKIPPED,
                                  StepStatus.CANCELLED})


def _step_line(step: StepRecord, origin: datetime | None) -> Tree:
    offset = (step.started_at - origin).total_seconds() * 1000 \
        if step.started_at and origin else None
    timing = "" if offset is None else f" +{offset:.0f} ms"
    latency = "" if step.latency_ms is None else f" took {step.latency_ms:.1f} ms"
    where = f" on {step.queue}" + (f" by {step.worker}" if step.worker else "")
    extra = f" model={step.model}" if step.model else ""
    node = Tree(Text.assemble((step.name, STATUS_STYLE.get(step.status, "")),
                              f" {step.status.value}{timing}{latency}"
                              f" attempts={step.attempts}{where}{extra}"))
    for attempt in step.attempt_log:
        line = Text(f"attempt {attempt['attempt']}: {attempt['status']} "
                    f"{attempt['latency_ms']:.1f} ms")
        if attempt.get("policy"):
            line.append(f" [on_error {attempt['policy']}]", style="yellow")
        if attempt.get("error"):
            line.append(f" {_last_line(attempt['error'])}", style="red")
        node.add(line)
    if step.error and step.status is StepStatus.WAITING \
            and step.error.startswith(POLICY_ESCALATE):
        # an escalated step: why it waits (first line), and what a person does about it
        node.add(Text(f"{step.error.strip().splitlines()[0]} -- approve with: orchestrate "
                      "approve RUN_ID --data JSON (becomes its output)", style="yellow"))
    if step.error and step.status in SHOWN_ERROR_STATUSES:
        node.add(Text(_last_line(step.error), style="red"))
    return node


def _last_line(error: str) -> str:
    lines = error.strip().splitlines()
    return lines[-1] if lines else error


def _run_json(run: RunResult) -> dict[str, object]:
    return {
        "run_id": run.run_id, "workflow": run.workflow, "status": run.status.value,
        "error": run.error, "cost_usd": run.cost_usd, "inputs": run.inputs,
        "outputs": run.outputs, "created_at": run.created_at, "finished_at": run.finished_at,
        "steps": {name: {"status": s.status.value, "attempts": s.attempts, "queue": s.queue,
                         "worker": s.worker, "latency_ms": s.latency_ms, "error": s.error,
                         "error_type": s.error_type, "deliveries": s.deliveries,
                         "attempt_log": [_attempt_json(a) for a in s.attempt_log]}
                  for name, s in run.steps.items()},
    }


def _attempt_json(attempt: dict[str, object]) -> dict[str, object]:
    keys = ("attempt", "status", "model", "latency_ms", "error_type", "error_kind", "policy",
            "map_index", "calls")
    return {key: attempt.get(key) for key in keys}


@main.command()
@click.argument("run_id")
@click.option("--data", "data", default="null", show_default=True,
              help="the input, as JSON")
@click.option("--name", default=None, help="which input, if the run waits for several")
def approve(run_id: str, data: str, name: str | None) -> None:
    """Deliver a person's input to a waiting run; it continues on a worker."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--data") from exc
    try:
        count = orchestrator_for_cli(load_workflows=True).approve(run_id, value, name)
    except OrchestrationError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(Text(f"delivered to {count} waiting step(s) of run {run_id}"))


@main.command()
@click.argument("run_id")
@click.option("--inputs", default=None, help="inputs to give again (JSON object), e.g. "
              "secrets, which are never stored")
@click.option("--upgrade", is_flag=True, help="a run started on another workflow version: "
              "run its remaining steps on this version (same steps only)")
def resume(run_id: str, inputs: str | None, upgrade: bool) -> None:
    """Continue a failed or cancelled run: only failed, skipped and cancelled steps run."""
    try:
        values = json.loads(inputs) if inputs else None
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--inputs") from exc
    try:
        orchestrator = orchestrator_for_cli(load_workflows=True)
        handle = orchestrator.resume(run_id, values, upgrade=upgrade)
        state = orchestrator.store.recovery.run_state(handle.run_id)
    except OrchestrationError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(Text(f"resumed run {run_id} on {state.workflow}@{state.version}"))


@main.command()
@click.option("--idle", "idle", type=float, default=None,
              help="seconds without progress (default ORCH_RECONCILE_AFTER)")
def reconcile(idle: float | None) -> None:
    """Re-dispatch runs whose messages were lost; expire overdue human waits."""
    done = orchestrator_for_cli(load_workflows=True).reconcile(idle)
    console.print(Text(f"re-dispatched {len(done.redispatched)} run(s), failed "
                       f"{len(done.failed)} unrecoverable, expired {done.waits_expired} wait(s)"))
    for run_id in done.redispatched:
        console.print(Text(f"  re-dispatched {run_id}"))
    for run_id in done.failed:
        console.print(Text(f"  failed {run_id}"))


@main.command()
@click.argument("workflow")
@click.option("--inputs", default="{}", show_default=True, help="the inputs, as a JSON object")
@click.option("--idempotency-key", default=None)
@click.option("--priority", type=int, default=None,
              help="0 (normal, the default) to 9 (the most urgent)")
@click.option("--timeout", default=300.0, show_default=True,
              help="on the embedded default, how long to stay while the run goes on")
def submit(workflow: str, inputs: str, idempotency_key: str | None, priority: int | None,
           timeout: float) -> None:
    """Start a run of WORKFLOW; prints its id."""
    orchestrator = orchestrator_for_cli(load_workflows=True)
    found = orchestrator.workflows.get(workflow)
    if found is None:
        raise click.ClickException(f"unknown workflow {workflow!r} "
                                   f"(known: {', '.join(sorted(orchestrator.workflows))})")
    try:
        values = json.loads(inputs)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--inputs") from exc
    if not isinstance(values, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--inputs")
    for option in ("priority", "idempotency_key"):
        if option in values:
            raise click.BadParameter(f"{option!r} is an option of the run, not an input: use "
                                     f"--{option.replace('_', '-')}", param_hint="--inputs")
    try:
        handle = found.submit(idempotency_key=idempotency_key, priority=priority, **values)
    except OrchestrationError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(handle.run_id)
    settle_embedded(orchestrator, [handle.run_id], timeout)


@main.command()
@click.argument("run_id")
def cancel(run_id: str) -> None:
    """Cancel a run and its child runs: steps not yet started never start."""
    try:
        cancelled = cancel_run(orchestrator_for_cli().store, run_id)
    except OrchestrationError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(Text(f"cancelled {len(cancelled)} run(s): {', '.join(cancelled)}"))


@main.command()
@click.argument("workflow")
@click.option("--since", default="24h", show_default=True,
              help="window: e.g. 30m, 6h, 7d, or 'all'")
def stats(workflow: str, since: str) -> None:
    """Per-step p50/p95/p99 latency, retries, fallback rate; errors per model; cost per run."""
    orchestrator = orchestrator_for_cli(load_workflows=True)
    report = workflow_stats(orchestrator, workflow, _since(since))
    by_status = ", ".join(f"{n} {s}" for s, n in sorted(report.runs_by_status.items()))
    console.print(Text.assemble((workflow, "bold"), f" over {since}: {report.runs} runs "
                                f"({by_status}), ${report.cost_per_run:.6f} per run"))
    table = Table(title="steps (latency ms)")
    for column in ("step", "runs", "p50", "p95", "p99", "retries", "fallback %", "failed",
                   "skipped", "cost $"):
        table.add_column(column, justify="left" if column == "step" else "right", no_wrap=True)
    for s in report.steps:
        table.add_row(Text(s.step), str(s.runs), _ms(s.p50_ms), _ms(s.p95_ms), _ms(s.p99_ms),
                      str(s.retries), f"{100 * s.fallbacks / s.runs:.1f}" if s.runs else "-",
                      str(s.failed), str(s.skipped), f"{s.cost_usd:.6f}")
    console.print(table)
    if report.models:
        models = Table(title="models (attempts)")
        for column in ("model", "attempts", "failed", "error rate", "context p50",
                       "context max"):
            models.add_column(column, justify="left" if column == "model" else "right")
        for m in report.models:
            models.add_row(Text(m.model), str(m.attempts), str(m.failed),
                           f"{100 * m.error_rate:.1f}%", _percent(m.context_p50),
                           _percent(m.context_max))
        console.print(models)


@main.command()
def workers() -> None:
    """Worker processes by their heartbeat in the results DB: alive, stopped or dead."""
    orchestrator = orchestrator_for_cli()
    settings = orchestrator.settings
    now = datetime.now(UTC)
    table = Table()
    for column in ("worker", "instance", "pid", "state", "last beat", "queues"):
        table.add_column(column, no_wrap=column != "queues")
    for instance, name, host, pid, queues, beat_at, stopped_at in \
            orchestrator.store.workers.listed():
        age = (now - (as_utc(beat_at) or now)).total_seconds()
        state = ("stopped" if stopped_at is not None else
                 "alive" if age <= settings.worker_dead_after else "dead")
        table.add_row(Text(f"{name} ({host})"), instance[:12], str(pid), state,
                      f"{age:.0f} s ago", Text(", ".join(queues)))
    console.print(table)
    for line in version_summary(orchestrator.store, now - timedelta(
            seconds=settings.worker_dead_after)):
        console.print(Text(line))


@main.command()
def queues() -> None:
    """Messages waiting per queue, from the broker."""
    orchestrator = orchestrator_for_cli(load_workflows=True)
    depths = queue_depths(orchestrator, known_queues(orchestrator))
    table = Table()
    table.add_column("queue", no_wrap=True)
    table.add_column("waiting", justify="right")
    for queue, depth in depths.items():
        table.add_row(Text(queue), "-" if depth is None else str(depth))
    console.print(table)


@main.command()
@click.option("--port", default=9808, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True)
def metrics(port: int, address: str) -> None:
    """Serve Prometheus metrics: the workers' (PROMETHEUS_MULTIPROC_DIR) and queue depths."""
    serve_metrics(orchestrator_for_cli(load_workflows=True), address, port)


@main.command()
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option("--port", default=5555, show_default=True)
def flower(address: str, port: int) -> None:
    """Start Flower; beyond loopback it refuses to start without FLOWER_BASIC_AUTH."""
    try:
        launch = flower_command(address, port, os.environ)
    except OrchestrationError as exc:
        raise click.ClickException(str(exc)) from exc
    os.execvpe(launch.argv[0], launch.argv, launch.env)


def _since(window: str) -> datetime | None:
    if window == "all":
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = float(window[:-1]) * units[window[-1]]
    except (KeyError, ValueError):
        raise click.BadParameter("use e.g. 30m, 6h, 7d or all", param_hint="--since") from None
    return datetime.now(UTC) - timedelta(seconds=seconds)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


main.add_command(db)
main.add_command(graph)
main.add_command(memory)
main.add_command(pipeline)
main.add_command(serve)
main.add_command(events)
main.add_command(emit)
main.add_command(consume)
main.add_command(beat)
