"""``orchestrate beat``: fire the workflows' cron schedules."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click
from rich.text import Text

from orchestration.cli.common import console, orchestrator_for_cli
from orchestration.errors import ConfigurationError
from orchestration.events.beat import Beat


@click.command()
@click.option("--poll", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="longest wait between passes (seconds): queued ticks are looked at "
                   "this often")
def beat(poll: float) -> None:
    """Start runs on the cron schedules of the workflows in ORCH_IMPORTS (UTC).

    Each tick starts at most one run, even with two beat processes (its idempotency key
    is schedule:<name>:<tick>); every tick is recorded in the events table (see
    `orchestrate events`). After downtime only the latest missed tick fires.
    """
    orchestrator = orchestrator_for_cli(load_workflows=True)
    try:
        beater = Beat(orchestrator, poll=poll)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc
    schedules = beater.schedules()
    if not schedules:
        console.print(Text("no schedules registered (declare one with "
                           "workflow.schedule(cron, ...)); waiting anyway"))
    for schedule in schedules:
        console.print(Text(f"{schedule.name}: {schedule.cron} (UTC) -> {schedule.workflow}, "
                           f"overlap {schedule.overlap}"))
    stop = threading.Event()

    def finish(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    beater.run(stop)
