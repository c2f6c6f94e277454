"""``orchestrate memory``: a conversation's stored memory, and erasing it."""

from __future__ import annotations

import json

import click
from rich.table import Table
from rich.text import Text

from orchestration.cli.common import console, orchestrator_for_cli
from orchestration.submit.retention import forget as forget_conversation
from orchestration.submit.retention import prune_memory


@click.group()
def memory() -> None:
    """Conversation memory (Workflow(memory=Memory(...))): show, forget, prune."""


@memory.command()
@click.argument("key")
@click.option("--workflow", "-w", help="only this workflow's memory of the conversation")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def show(key: str, workflow: str | None, as_json: bool) -> None:
    """A conversation's summary and turns (as stored: redacted), per workflow."""
    store = orchestrator_for_cli().store.memory
    turns = store.turns(key, workflow)
    summaries = store.summaries(key, workflow)
    if as_json:
        click.echo(json.dumps({name: {
            "summary": None if name not in summaries else {
                "upto_seq": summaries[name].upto_seq, "tokens": summaries[name].tokens,
                "content": summaries[name].content, "run_id": summaries[name].run_id},
            "turns": [{"seq": t.seq, "role": t.role, "content": t.content, "tokens": t.tokens,
                       "run_id": t.run_id, "step": t.step,
                       "created_at": t.created_at.isoformat() if t.created_at else None}
                      for t in turns.get(name, [])],
        } for name in sorted(set(turns) | set(summaries))}, indent=2))
        return
    if not turns and not summaries:
        console.print(Text(f"no memory of conversation {key!r}"))
        return
    for name in sorted(set(turns) | set(summaries)):
        summary = summaries.get(name)
        console.print(Text.assemble((name, "bold"), f": {len(turns.get(name, []))} turn(s)"))
        if summary is not None:
            console.print(Text(f"summary of turns 1-{summary.upto_seq} ({summary.tokens} "
                               f"tokens): {summary.content}"))
        table = Table()
        for column in ("seq", "role", "tokens", "run id", "step", "content"):
            table.add_column(column, no_wrap=column != "content")
        for turn in turns.get(name, []):
            table.add_row(str(turn.seq), Text(turn.role), str(turn.tokens), turn.run_id or "-",
                          Text(turn.step or "-"), Text(turn.content))
        console.print(table)


@memory.command()
@click.argument("key")
@click.option("--workflow", "-w", help="only this workflow's memory of the conversation")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def forget(key: str, workflow: str | None, yes: bool) -> None:
    """Erase a conversation: its turns, summaries, and the runs that carried it."""
    if not yes:
        click.confirm(f"erase conversation {key!r} and the runs that carried it?", abort=True)
    done = forget_conversation(orchestrator_for_cli(load_workflows=True), key,
                               workflow=workflow)
    console.print(Text(f"forgotten: {done.turns} turn(s), {done.summaries} summary(ies), "
                       f"{done.runs} run(s), {done.events} event(s)"))


@memory.command()
def prune() -> None:
    """Delete turns and summaries past their workflow's retention now (the reconciler
    does this on every pass)."""
    rows = prune_memory(orchestrator_for_cli(load_workflows=True))
    console.print(Text(f"pruned {rows} row(s) past their retention"))
