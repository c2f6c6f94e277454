"""``orchestrate db``: the results database's schema and retention."""

from __future__ import annotations

import json

import click
from rich.table import Table
from rich.text import Text

from orchestration.cli.common import console, orchestrator_for_cli
from orchestration.core.durations import parse_duration
from orchestration.store.engine import upgrade
from orchestration.submit.retention import prune_runs


@click.group()
def db() -> None:
    """Results database commands."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations (workers also do this on first use)."""
    orchestrator = orchestrator_for_cli()
    upgrade(orchestrator.store.engine)
    console.print(Text(f"schema is current: {orchestrator.store.engine.url.render_as_string()}"))


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value, "--older-than")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds is None:
        raise click.BadParameter("--older-than takes a duration (30d, 12h, ...), not 'off'")
    return seconds


@db.command("prune")
@click.option("--older-than", callback=_duration,
              help="delete runs that ended longer ago than this (30d, 12h, 90m, seconds), "
                   "instead of ORCH_RETENTION and each workflow's retention=")
@click.option("--workflow", "-w", help="only this workflow's runs")
@click.option("--dry-run", is_flag=True, help="count what would be deleted; delete nothing")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def db_prune(older_than: float | None, workflow: str | None, dry_run: bool,
             as_json: bool) -> None:
    """Delete finished runs past their retention, with everything recorded about them.

    Runs pending, running or waiting are never deleted. Deletes in batches of 500 runs
    (short transactions; safe while workers write).
    """
    orchestrator = orchestrator_for_cli(load_workflows=True)
    if older_than is None and orchestrator.settings.retention is None and not any(
            wf.retention is not None for wf in orchestrator.workflows.values()):
        raise click.ClickException("no retention is configured: set ORCH_RETENTION (e.g. "
                                   "30d) or a workflow's retention=, or pass --older-than")
    pruned = prune_runs(orchestrator, older_than=older_than, workflow=workflow,
                        dry_run=dry_run)
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "runs": len(pruned.runs),
                               "rows": pruned.rows}, indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    table = Table(title=f"{verb} {len(pruned.runs)} run(s), {pruned.total} row(s)")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in sorted(pruned.rows.items()):
        table.add_row(name, str(rows))
    console.print(table)
