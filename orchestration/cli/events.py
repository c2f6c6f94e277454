"""``orchestrate events``, ``emit`` and ``consume``: events received, sent, read from a stream."""

from __future__ import annotations

import json
import signal
from types import FrameType

import click
from rich.table import Table
from rich.text import Text

from orchestration.cli.common import console, orchestrator_for_cli, settle_embedded
from orchestration.core.settings import Settings
from orchestration.errors import OrchestrationError
from orchestration.events.ingest import ingest
from orchestration.events.outcomes import EventOutcome, Outcome
from orchestration.events.stream import (
    DEFAULT_GROUP,
    DEFAULT_STREAM,
    StreamConsumer,
    StreamOptions,
    connect,
)

OUTCOME_STYLE = {Outcome.STARTED: "green", Outcome.DUPLICATE: "yellow",
                 Outcome.UNMATCHED: "dim", Outcome.REJECTED: "red", Outcome.SKIPPED: "dim"}


@click.command()
@click.option("--name", help="only events of this name")
@click.option("--outcome", type=click.Choice([o.value for o in Outcome]))
@click.option("--event-id", help="only this event id")
@click.option("--limit", "-n", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def events(name: str | None, outcome: str | None, event_id: str | None, limit: int,
           as_json: bool) -> None:
    """Recent events, newest first: what each did and the run it started."""
    rows = orchestrator_for_cli().store.events.recent(name=name, outcome=outcome,
                                                      event_id=event_id, limit=limit)
    if as_json:
        click.echo(json.dumps([{
            "event_id": r.record.event_id, "name": r.record.name, "source": r.record.source,
            "received_at": r.record.received_at.isoformat(), "outcome": r.record.outcome,
            "trigger": r.record.trigger, "run_id": r.record.run_id,
            "run_status": r.run_status, "workflow": r.workflow, "reason": r.record.reason,
            "payload": r.record.payload} for r in rows], indent=2, default=str))
        return
    table = Table()
    for column in ("received", "event", "event id", "source", "outcome", "trigger", "run",
                   "run status", "reason"):
        table.add_column(column, no_wrap=column not in ("reason", "event id"))
    for row in rows:
        record = row.record
        style = next((style for kind, style in OUTCOME_STYLE.items()
                      if kind.value == record.outcome), "")
        table.add_row(Text(record.received_at.strftime("%Y-%m-%d %H:%M:%S")),
                      Text(record.name), Text(record.event_id), Text(record.source),
                      Text(record.outcome, style=style), Text(record.trigger or "-"),
                      Text(record.run_id or "-"), Text(row.run_status or "-"),
                      Text(record.reason or ""))
    console.print(table)


@click.command()
@click.argument("name")
@click.option("--payload", default="{}", show_default=True, help="the payload, as JSON")
@click.option("--event-id", default=None,
              help="the event's id (deduplicates deliveries); generated if not given")
@click.option("--priority", type=int, default=None,
              help="the started runs' priority, 0 (normal) to 9 (the most urgent); "
                   "default: each trigger's own")
@click.option("--timeout", default=300.0, show_default=True,
              help="on the embedded default, how long to stay while the started runs go on")
def emit(name: str, payload: str, event_id: str | None, priority: int | None,
         timeout: float) -> None:
    """Emit event NAME: every trigger listening starts its run (at most once per id)."""
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from exc
    orchestrator = orchestrator_for_cli(load_workflows=True)
    try:
        outcomes = ingest(orchestrator, name, value, event_id=event_id, source="emit",
                          priority=priority)
    except OrchestrationError as exc:
        raise click.ClickException(str(exc)) from exc
    for outcome in outcomes:
        click.echo(describe(name, outcome))
    settle_embedded(orchestrator, [o.run_id for o in outcomes
                                   if o.outcome is Outcome.STARTED and o.run_id], timeout)


def describe(name: str, outcome: EventOutcome) -> str:
    """One line for one outcome: ``started support_ticket run <id> (trigger t)``."""
    parts = [f"{outcome.outcome.value}: event {name!r} id {outcome.event_id}"]
    if outcome.trigger:
        parts.append(f"trigger {outcome.trigger}")
    if outcome.run_id:
        parts.append(f"run {outcome.run_id}")
    if outcome.reason:
        parts.append(outcome.reason)
    return ", ".join(parts)


@click.command()
@click.option("--stream", default=DEFAULT_STREAM, show_default=True)
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@click.option("--consumer", default=None, help="this consumer's name in the group "
              "(default <host>-<pid>; reuse a name to take over its pending entries)")
@click.option("--redis-url", envvar="ORCH_STREAM_URL", default=None,
              help="the Redis holding the stream [env ORCH_STREAM_URL; default "
                   "ORCH_REDIS_URL, else a redis:// broker]")
@click.option("--batch", default=50, show_default=True, help="entries per read")
@click.option("--claim-idle", default=60.0, show_default=True,
              help="seconds an entry stays pending on a silent consumer before it is claimed")
def consume(stream: str, group: str, consumer: str | None, redis_url: str | None,
            batch: int, claim_idle: float) -> None:
    """Start the runs of events read from a Redis Stream (a consumer group); runs until
    stopped (SIGTERM, Ctrl-C)."""
    orchestrator = orchestrator_for_cli(load_workflows=True)
    url = redis_url or stream_url(orchestrator.settings)
    options = StreamOptions(stream=stream, group=group, consumer=consumer or "",
                            batch=batch, claim_idle=claim_idle)
    reader = StreamConsumer(orchestrator, connect(url, options.block), options)

    def stop(signum: int, frame: FrameType | None) -> None:
        reader.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    console.print(Text(f"consuming {stream} as {reader.consumer} in group {group}"))
    reader.run()


def stream_url(settings: Settings) -> str:
    """The Redis of the stream: ORCH_REDIS_URL, else the broker's when it is Redis."""
    if settings.redis_url:
        return settings.redis_url
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return settings.broker_url
    raise click.UsageError("no Redis to read the stream from: pass --redis-url "
                           "(or set ORCH_STREAM_URL or ORCH_REDIS_URL)")
