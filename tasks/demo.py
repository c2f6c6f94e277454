"""The demo: the support-ticket workflow over a batch of sample tickets.

``python -m tasks.demo --tickets 500`` (what ``make demo`` runs). With no ORCH_* settings
it runs on the embedded default: an in-process worker and SQLite under ./var/.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestration import RunHandle, RunStatus, default_orchestrator
from orchestration.core.clock import utcnow
from orchestration.core.stats import step_stats
from tasks.support.models import category_model, load_sample_tickets, urgency_model
from tasks.support.workflow import support


def main(argv: list[str] | None = None) -> int:
    """Run the batch, show progress, print the summary; exit 1 if any run did not succeed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tickets", type=int, default=500, help="how many sample tickets")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait in all")
    args = parser.parse_args(argv)
    # Wide enough for the summary table when the output is a log, not a terminal.
    console = Console(width=None if sys.stdout.isatty() else 120)
    orchestrator = default_orchestrator()
    settings = orchestrator.settings
    where = "embedded (in-process worker, memory broker)" if settings.embedded else \
        "broker " + settings.broker_url.split("@")[-1]
    console.print(f"[bold]support_ticket[/] demo: {args.tickets} tickets on {where}; "
                  f"results DB {orchestrator.store.engine.url.render_as_string()}")

    tickets = load_sample_tickets(args.tickets)
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
    finished = _progress(console, orchestrator, len(handles), batch_start, args.timeout)
    elapsed = time.perf_counter() - started
    console.print(f"submitted {len(handles)} runs in {submitted:.2f} s; "
                  f"{finished} finished in {elapsed:.1f} s ({finished / elapsed:.0f} runs/s)")
    return _summary(console, orchestrator, handles, tickets, batch_start)


def _progress(console: Console, orchestrator: object, total: int, since: object,
              timeout: float) -> int:
    store = orchestrator.store  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    done = 0
    with Progress(TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        bar = progress.add_task("runs", total=total)
        while done < total and time.monotonic() < deadline:
            counts = store.status_counts(workflow=support.name, since=since)
            done = sum(n for status, n in counts.items() if status.is_terminal)
            progress.update(bar, completed=done)
            if done < total:
                time.sleep(0.1)
    return done


def _summary(console: Console, orchestrator: object, handles: list[RunHandle],
             tickets: list[dict[str, object]], since: object) -> int:
    store = orchestrator.store  # type: ignore[attr-defined]
    counts = store.status_counts(workflow=support.name, since=since)
    table = Table(title="runs by status")
    table.add_column("status")
    table.add_column("runs", justify="right")
    for status in RunStatus:
        if counts.get(status):
            table.add_row(status.value, str(counts[status]))
    console.print(table)

    rows = store.step_rows(workflow=support.name, since=since)
    steps = Table(title="steps (latency from claim to record, ms)")
    steps.add_column("step", no_wrap=True)
    for column in ("runs", "p50", "p95", "retries", "fallbacks", "failed", "skipped"):
        steps.add_column(column, justify="right")
    for s in step_stats(rows, order=list(support.steps)):
        steps.add_row(s.step, str(s.runs), _ms(s.p50_ms), _ms(s.p95_ms), str(s.retries),
                      str(s.fallbacks), str(s.failed), str(s.skipped))
    console.print(steps)

    sample = [handle.result() for handle in handles[:200]]
    agree = Counter(r.outputs.get("classify_ticket") == t["category"]
                    for r, t in zip(sample, tickets, strict=False))
    local = sum(1 for r in sample if "[local fallback" in str(r.outputs.get("generate_response")))
    console.print(f"classifier agrees with the human label on {agree[True]}/{len(sample)} "
                  f"sampled tickets; {local} replies came from the labelled local fallback "
                  "(set OPENAI_API_KEY to use gpt-4o-mini)")
    example = handles[0].run_id
    console.print("inspect one run:")
    console.print(f"  .venv/bin/orchestrate show {example}", style="bold", soft_wrap=True)
    ok = counts.get(RunStatus.SUCCEEDED, 0) == len(handles)
    return 0 if ok else 1


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    code = main()
    default_orchestrator().shutdown()
    sys.exit(code)
