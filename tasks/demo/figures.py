"""What the results database recorded about a batch of runs: the demo's summary figures.

Everything here is read back from the rows the engine wrote (runs, steps, and each step
attempt's model calls with their error kind and the breaker state after the call), never
counted by the demo as it goes, so the summary shows what the product recorded.

Breaker transitions are rebuilt from the calls: a call that failed and left its model's
breaker ``open`` while it was closed opened it; once open, a call that still reached the
provider and started after the opening is the half-open probe, which either closed it
(succeeded, breaker ``closed``) or re-opened it. Calls refused by an open breaker made no
request and are counted apart. Calls carry no clock of their own: each starts after the
calls before it in its attempt, and the attempt's time not spent in calls is spread over
its retry waits (exponential, as ``ctx.llm`` waits), so the last call ends when the
attempt did. Times are seconds from the batch's first run.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from orchestration.core.stats import percentile
from orchestration.store.models import AttemptRow, RunRow, StepRow

REFUSED = "circuit breaker open"


@dataclass(frozen=True)
class Call:
    """One model call as recorded on its attempt."""

    model: str
    ok: bool
    breaker: str | None
    error_kind: str | None
    error: str
    refused: bool  # the breaker was open: no request was made
    start: float  # seconds from the batch's first run
    end: float
    latency_ms: float
    run_id: str
    first_model: str  # the first model the attempt called (the one asked for)


@dataclass(frozen=True)
class BreakerEvent:
    """``opened``, ``probe_failed`` (re-opened) or ``closed``, ``at`` seconds into the batch."""

    model: str
    kind: str
    at: float


@dataclass
class ModelFigures:
    """One model's calls in the batch."""

    model: str
    requests: int = 0  # calls that reached the provider
    ok: int = 0
    unavailable: int = 0  # 5xx, connection errors
    timeouts: int = 0
    rejected: int = 0  # other 4xx: the provider is up but refused the request
    other_errors: int = 0
    refused: int = 0  # calls an open breaker refused (no request)
    retries: int = 0  # calls made again to this model within one attempt after a failure
    answered_as_fallback: int = 0  # successful calls in place of another model
    latencies_ms: list[float] = field(default_factory=list)
    timeout_after_ms: list[float] = field(default_factory=list)


@dataclass
class Figures:
    """The batch's figures, all read from the results database."""

    runs: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    step_retries: dict[str, int] = field(default_factory=dict)
    step_fallbacks: dict[str, int] = field(default_factory=dict)
    step_timeouts: int = 0
    models: dict[str, ModelFigures] = field(default_factory=dict)
    events: list[BreakerEvent] = field(default_factory=list)
    cost_total: float = 0.0
    run_latencies_s: list[float] = field(default_factory=list)

    @property
    def call_retries(self) -> int:
        """Calls retried on the same model inside ``ctx.llm``."""
        return sum(m.retries for m in self.models.values())

    @property
    def fallback_models(self) -> int:
        """Calls answered by a fallback model instead of the one asked for."""
        return sum(m.answered_as_fallback for m in self.models.values())

    @property
    def timeouts(self) -> int:
        """Model calls that timed out, plus step attempts that did."""
        return sum(m.timeouts for m in self.models.values()) + self.step_timeouts

    def openings(self, model: str | None = None) -> list[BreakerEvent]:
        """Breakers that opened from closed (not re-opened by a failed probe)."""
        return [e for e in self.events if e.kind == "opened" and model in (None, e.model)]

    def recoveries(self, model: str | None = None) -> list[BreakerEvent]:
        """Breakers closed again by a successful half-open probe."""
        return [e for e in self.events if e.kind == "closed" and model in (None, e.model)]

    @property
    def cost_per_run(self) -> float:
        """Mean cost of a run, USD."""
        return self.cost_total / self.runs if self.runs else 0.0

    def run_latency(self, q: float) -> float | None:
        """The q-th percentile of run latency (created to finished), seconds."""
        return percentile(self.run_latencies_s, q)


def collect(engine: Engine, workflow: str, since: datetime) -> Figures:
    """Read the figures of ``workflow``'s runs created since ``since``."""
    figures = Figures()
    with engine.connect() as conn:
        runs = conn.execute(select(RunRow.id, RunRow.status, RunRow.cost_usd, RunRow.created_at,
                                   RunRow.finished_at)
                            .where(RunRow.workflow == workflow,
                                   RunRow.created_at >= since)).all()
        steps = conn.execute(select(StepRow.name, StepRow.status, StepRow.attempts)
                             .join(RunRow, RunRow.id == StepRow.run_id)
                             .where(RunRow.workflow == workflow,
                                    RunRow.created_at >= since)).all()
        attempts = conn.execute(select(AttemptRow.run_id, AttemptRow.started_at,
                                       AttemptRow.finished_at, AttemptRow.error_kind,
                                       AttemptRow.calls)
                                .join(RunRow, RunRow.id == AttemptRow.run_id)
                                .where(RunRow.workflow == workflow,
                                       RunRow.created_at >= since)
                                .order_by(AttemptRow.started_at)).all()
    if not runs:
        return figures
    start = min(row.created_at for row in runs)
    figures.runs = len(runs)
    figures.by_status = Counter(str(row.status) for row in runs)
    figures.cost_total = sum(float(row.cost_usd or 0.0) for row in runs)
    figures.run_latencies_s = [(row.finished_at - row.created_at).total_seconds()
                               for row in runs if row.finished_at is not None]
    for name, status, count in steps:
        if count and count > 1:
            figures.step_retries[name] = figures.step_retries.get(name, 0) + count - 1
        if status == "fallback":
            figures.step_fallbacks[name] = figures.step_fallbacks.get(name, 0) + 1
    calls: list[Call] = []
    for run_id, started_at, finished_at, error_kind, recorded in attempts:
        if error_kind == "timeout" and not any(
                (c or {}).get("error_kind") == "timeout" for c in recorded or ()):
            figures.step_timeouts += 1
        made = _calls(run_id, (started_at - start).total_seconds(),
                      (finished_at - started_at).total_seconds(), recorded or [])
        _tally(figures, made)
        calls.extend(made)
    figures.events = breaker_events(calls)
    return figures


def _calls(run_id: str, at: float, duration: float,
           recorded: Sequence[dict[str, Any]]) -> list[Call]:
    """An attempt's calls, timed from its start ``at`` and its ``duration`` (seconds)."""
    first = str(recorded[0].get("model", "")) if recorded else ""
    latencies = [float(item.get("latency_ms") or 0.0) / 1000 for item in recorded]
    # Before each call: the retry wait ctx.llm made after a failed call to the same model.
    weights, streak = [], 0
    for index, item in enumerate(recorded):
        before = recorded[index - 1] if index else None
        retried = before is not None and before.get("model") == item.get("model") \
            and not before.get("ok") and REFUSED not in str(before.get("error") or "")
        streak = streak + 1 if retried else 0
        weights.append(2.0 ** (streak - 1) if retried else 0.0)
    slack = max(0.0, duration - sum(latencies))
    scale = slack / sum(weights) if sum(weights) else 0.0
    calls = []
    for item, latency, weight in zip(recorded, latencies, weights, strict=True):
        at += weight * scale
        error = str(item.get("error") or "")
        calls.append(Call(model=str(item.get("model", "")), ok=bool(item.get("ok")),
                          breaker=item.get("breaker"), error_kind=item.get("error_kind"),
                          error=error, refused=REFUSED in error, start=at, end=at + latency,
                          latency_ms=latency * 1000, run_id=run_id, first_model=first))
        at += latency
    return calls


def _tally(figures: Figures, attempt: Sequence[Call]) -> None:
    """Count one attempt's calls (in their order) into the models' figures."""
    previous: Call | None = None
    for call in attempt:
        model = figures.models.setdefault(call.model, ModelFigures(call.model))
        if previous is not None and previous.model == call.model and not previous.ok \
                and not previous.refused and not call.refused:
            model.retries += 1
        previous = call
        if call.refused:
            model.refused += 1
            continue
        model.requests += 1
        if call.ok:
            model.ok += 1
            model.latencies_ms.append(call.latency_ms)
            if call.model != call.first_model:
                model.answered_as_fallback += 1
        elif call.error_kind == "timeout":
            model.timeouts += 1
            model.timeout_after_ms.append(call.latency_ms)
        elif call.error_kind == "model_unavailable":
            model.unavailable += 1
        elif "HTTP 4" in call.error:
            model.rejected += 1
        else:
            model.other_errors += 1


def breaker_events(calls: Iterable[Call]) -> list[BreakerEvent]:
    """Each model's breaker transitions, in time order (see the module doc)."""
    events: list[BreakerEvent] = []
    opened: dict[str, float] = {}  # model -> when its breaker last opened (absent: closed)
    by_end: defaultdict[str, list[Call]] = defaultdict(list)
    for call in calls:
        if not call.refused:
            by_end[call.model].append(call)
    for model, made in by_end.items():
        for call in sorted(made, key=lambda c: c.end):
            if model not in opened:
                if not call.ok and call.breaker == "open":
                    opened[model] = call.end
                    events.append(BreakerEvent(model, "opened", call.end))
            elif call.start >= opened[model]:  # started after it opened: the probe
                if call.ok and call.breaker == "closed":
                    del opened[model]
                    events.append(BreakerEvent(model, "closed", call.end))
                elif not call.ok and call.breaker == "open":
                    opened[model] = call.end
                    events.append(BreakerEvent(model, "probe_failed", call.end))
    return sorted(events, key=lambda e: e.at)
