"""The demo's summary: the figures of :mod:`tasks.demo.figures`, as tables and lines."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from orchestration.core.stats import step_stats
from tasks.demo.figures import Figures


def render(console: Console, figures: Figures, step_rows: list[tuple[str, str, int,
                                                                      float | None, float]],
           steps: list[str], database_url: str, example_run: str | None,
           workflow: str) -> None:
    """Print the summary of a batch."""
    runs = Table(title="runs by status")
    runs.add_column("status")
    runs.add_column("runs", justify="right")
    for status, count in sorted(figures.by_status.items()):
        runs.add_row(status, str(count))
    console.print(runs)

    table = Table(title="steps (latency from claim to record, ms)")
    table.add_column("step", no_wrap=True)
    for column in ("runs", "p50", "p95", "retries", "fallbacks", "failed", "skipped"):
        table.add_column(column, justify="right")
    for s in step_stats(step_rows, order=steps):
        table.add_row(s.step, str(s.runs), _ms(s.p50_ms), _ms(s.p95_ms), str(s.retries),
                      str(s.fallbacks), str(s.failed), str(s.skipped))
    console.print(table)

    models = Table(title="model calls (from each attempt's call trace)")
    models.add_column("model", no_wrap=True)
    for column in ("requests", "ok", "5xx", "timeouts", "4xx", "retried", "refused (open)",
                   "as fallback", "p50 ms"):
        models.add_column(column, justify="right")
    for m in sorted(figures.models.values(), key=lambda m: -m.requests - m.refused):
        models.add_row(m.model, str(m.requests), str(m.ok), str(m.unavailable),
                       str(m.timeouts), str(m.rejected), str(m.retries), str(m.refused),
                       str(m.answered_as_fallback), _ms(_p50(m.latencies_ms)))
    console.print(models)

    for line in lines(figures, workflow):
        console.print(line, soft_wrap=True)
    console.print("open the dashboard for these runs (then http://127.0.0.1:8080/runs"
                  f"?workflow={workflow}):")
    console.print(f"  ORCH_DATABASE_URL={database_url} .venv/bin/orchestrate serve",
                  style="bold", soft_wrap=True)
    if example_run is not None:
        console.print(f"  or one run: .venv/bin/orchestrate show {example_run}", soft_wrap=True)


def lines(figures: Figures, workflow: str) -> list[str]:
    """The headline figures, one line each (what the README quotes)."""
    step_retries = sum(figures.step_retries.values())
    step_fallbacks = sum(figures.step_fallbacks.values())
    out = [
        f"runs: {figures.by_status.get('succeeded', 0)} succeeded, "
        f"{figures.by_status.get('failed', 0)} failed of {figures.runs}",
        f"retries: {figures.call_retries} model calls retried, {step_retries} step "
        "attempts retried",
        f"fallbacks: {figures.fallback_models} replies from a fallback model, "
        f"{step_fallbacks} step fallback answers (every model failed on every attempt)",
        f"timeouts: {figures.timeouts} ({_timeouts(figures)})",
    ]
    for model in sorted({e.model for e in figures.events}):
        refused = figures.models[model].refused if model in figures.models else 0
        out.append(f"breaker {model}: " + "; ".join(_cycles(figures, model))
                   + f" ({refused} calls refused while open, sent to the next model)")
    if not figures.events:
        out.append("breakers: none opened")
    p50, p95 = figures.run_latency(50), figures.run_latency(95)
    out.append(f"cost: ${figures.cost_per_run:.6f} per run, ${figures.cost_total:.4f} in all; "
               f"run latency (submitted to finished, queueing included) p50 {_s(p50)}, "
               f"p95 {_s(p95)}")
    return out


def _cycles(figures: Figures, model: str) -> list[str]:
    """Each opening of ``model``'s breaker: when, failed probes, when a probe closed it."""
    cycles: list[str] = []
    probes = 0
    for event in (e for e in figures.events if e.model == model):
        if event.kind == "opened":
            cycles.append(f"opened at +{event.at:.1f} s")
            probes = 0
        elif event.kind == "probe_failed":
            probes += 1
        elif cycles:
            failed = f"{probes} probe(s) failed, " if probes else ""
            cycles[-1] += f", {failed}closed at +{event.at:.1f} s by a successful probe"
            probes = 0
    if cycles and probes:
        cycles[-1] += f", {probes} probe(s) failed, still open at the end"
    return cycles


def _timeouts(figures: Figures) -> str:
    parts = []
    for m in figures.models.values():
        if m.timeouts:
            low, high = min(m.timeout_after_ms) / 1000, max(m.timeout_after_ms) / 1000
            parts.append(f"{m.model}: {m.timeouts} calls cut after {low:.2f}-{high:.2f} s")
    if figures.step_timeouts:
        parts.append(f"{figures.step_timeouts} step attempts")
    return "; ".join(parts) or "none"


def _p50(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"
