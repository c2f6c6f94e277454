"""The demo: the support-ticket workflow over a batch of sample tickets, under failure.

``python -m tasks.demo --tickets 500`` (what ``make demo`` runs). With no ORCH_* settings
it runs on the embedded default: an in-process worker and SQLite under ./var/.

The reply step's models (gpt-4o-mini, falling back to claude-4-haiku) are served by a
simulated provider on 127.0.0.1 that injects a seeded schedule of faults
(:mod:`tasks.demo.faults`): 5xx errors, slow answers that trip gpt-4o-mini's adaptive
timeout, a few tickets every model rejects (HTTP 400), and a gpt-4o-mini outage mid-batch
that opens its breaker, which recovers when the outage ends. ``--no-faults`` runs
the same batch with none. The summary is read back from the results database.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestration import Orchestrator, RunHandle, RunStatus, Workflow, default_orchestrator
from orchestration.core.clock import utcnow
from orchestration.core.settings import Settings
from tasks.demo.catalogue import PROVIDER, write_catalogue
from tasks.demo.faults import FaultSchedule, SimulatedProvider
from tasks.demo.figures import collect
from tasks.demo.summary import render
from tasks.support.models import category_model, load_sample_tickets, urgency_model


def main(argv: list[str] | None = None) -> int:
    """Run the batch, show progress, print the summary; exit 1 if any run did not succeed."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tickets", type=int, default=500, help="how many sample tickets")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait in all")
    parser.add_argument("--no-faults", action="store_true",
                        help="the simulated provider injects no faults (the calm run)")
    parser.add_argument("--seed", type=int, default=FaultSchedule.seed,
                        help="seed of the fault schedule")
    args = parser.parse_args(argv)
    # Failed attempts are the point of the demo: its summary reports them, not the log.
    os.environ.setdefault("ORCH_LOG_LEVEL", "ERROR")
    if args.tickets < 1:
        parser.error(f"--tickets must be at least 1, got {args.tickets}")
    # Wide enough for the summary tables when the output is a log, not a terminal.
    console = Console(width=None if sys.stdout.isatty() else 120)
    tickets = load_sample_tickets(args.tickets)
    schedule = FaultSchedule.calm() if args.no_faults else FaultSchedule(seed=args.seed)
    with SimulatedProvider(schedule, [str(t["text"]) for t in tickets]) as provider, \
            tempfile.TemporaryDirectory(prefix="orch-demo-") as scratch:
        # The catalogue must be in place before the default orchestrator is built.
        os.environ["ORCH_MODELS_FILE"] = str(write_catalogue(provider.url,
                                                             Path(scratch) / "models.yaml"))
        settings = Settings()
        if not settings.embedded:
            console.print("[yellow]note:[/] with ORCH_BROKER_URL set, steps run on your "
                          "workers with their own model catalogue: the simulated provider "
                          "and its faults apply only to the embedded default")
        # Importing a workflow builds the default orchestrator (hence this late import).
        from tasks.support.workflow import support

        orchestrator = default_orchestrator()
        if PROVIDER not in orchestrator.catalogue.providers:  # built before this call
            orchestrator.reconfigure(settings)
        return _run(console, orchestrator, support, tickets, schedule, args.timeout)


def _run(console: Console, orchestrator: Orchestrator, support: Workflow,
         tickets: list[dict[str, object]], schedule: FaultSchedule, timeout: float) -> int:
    settings = orchestrator.settings
    where = "embedded (in-process worker, memory broker)" if settings.embedded else \
        "broker " + settings.broker_url.split("@")[-1]
    database_url = orchestrator.store.engine.url.render_as_string()
    console.print(f"[bold]support_ticket[/] demo: {len(tickets)} tickets on {where}; "
                  f"results DB {database_url}")
    console.print(_describe(schedule, len(tickets)), soft_wrap=True)
    with console.status("training the local classifiers on the shipped labelled tickets"):
        started = time.perf_counter()
        category_model().predict("warm-up")
        urgency_model().predict("warm-up")
        console.print(f"models ready in {time.perf_counter() - started:.1f} s")

    batch_start = utcnow()
    started = time.perf_counter()
    handles: list[RunHandle] = [support.submit(ticket_id=t["ticket_id"], text=t["text"])
                                for t in tickets]
    submitted = time.perf_counter() - started
    finished = _progress(console, orchestrator, support.name, len(handles), batch_start,
                         timeout)
    elapsed = time.perf_counter() - started
    console.print(f"submitted {len(handles)} runs in {submitted:.2f} s; "
                  f"{finished} finished in {elapsed:.1f} s ({finished / elapsed:.0f} runs/s)")

    figures = collect(orchestrator.store.engine, support.name, batch_start)
    rows = orchestrator.store.step_rows(workflow=support.name, since=batch_start)
    render(console, figures, rows, list(support.steps), database_url,
           handles[0].run_id if handles else None, support.name)
    _agreement(console, handles, tickets)
    ok = figures.by_status.get(RunStatus.SUCCEEDED.value, 0) == len(handles)
    return 0 if ok else 1


def _describe(schedule: FaultSchedule, total: int) -> str:
    if not schedule.injects:
        return "faults: none (--no-faults): every model call answers"
    rejected = ", ".join(str(i) for i in sorted(schedule.rejected(total)))
    rates = ", ".join(f"{m} {r:.0%} 5xx" for m, r in schedule.error_rate.items())
    slow = ", ".join(f"{m} every {n}th request from the {2 * n}th answers after "
                     f"{schedule.slow_s:g} s" for m, n in schedule.slow_every.items())
    model = schedule.outage_model
    outage = "" if model is None else (f"{model} down for {schedule.outage_s:g} s from its "
                                       f"request {schedule.outage_begins(model, total)}; ")
    return (f"faults (seed {schedule.seed}, simulated provider): {rates}; {slow}; {outage}"
            f"tickets {rejected} rejected (HTTP 400) by every model")


def _progress(console: Console, orchestrator: Orchestrator, workflow: str, total: int,
              since: datetime, timeout: float) -> int:
    store = orchestrator.store
    deadline = time.monotonic() + timeout
    done = 0
    with Progress(TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        bar = progress.add_task("runs", total=total)
        while done < total and time.monotonic() < deadline:
            counts = store.status_counts(workflow=workflow, since=since)
            done = sum(n for status, n in counts.items() if status.is_terminal)
            progress.update(bar, completed=done)
            if done < total:
                time.sleep(0.1)
    return done


def _agreement(console: Console, handles: list[RunHandle],
               tickets: list[dict[str, object]]) -> None:
    sample = [handle.result() for handle in handles[:200]]
    agree = Counter(r.outputs.get("classify_ticket") == t["category"]
                    for r, t in zip(sample, tickets, strict=False))
    console.print(f"classifier agrees with the human label on {agree[True]}/{len(sample)} "
                  "sampled tickets; replies are labelled \\[demo: simulated <model>] (or "
                  "\\[fallback reply: ...] when no model answered)", soft_wrap=True)
