"""What the dashboard shows, as JSON-ready dicts: the pages and the JSON API read these.

Everything comes from the results DB as stored (inputs and outputs are redacted when
written), the registered workflows' compiled graphs, the breakers and the broker. No
setting or credential is ever part of a view.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestration.app import Orchestrator
from orchestration.core.results import RunResult, RunSummary, StepRecord
from orchestration.core.status import RunStatus, StepStatus
from orchestration.observe.dashboard import failed_calls, run_page, workflow_names
from orchestration.observe.queries import known_queues, queue_depths, workflow_stats

PAGE_SIZE = 50
_WINDOW = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class BadParameter(ValueError):
    """A query parameter that cannot be read; the message names it."""


def parse_time(name: str, value: str | None, *, now: datetime | None = None
               ) -> datetime | None:
    """``30m``/``6h``/``7d`` (that long ago), an ISO time, or ``all``/empty (no bound)."""
    if value is None or value.strip() in ("", "all"):
        return None
    text = value.strip()
    match = _WINDOW.fullmatch(text)
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadParameter(f"{name}={text[:40]!r}: use a window such as 30m, 6h or 7d, an ISO "
                           "time such as 2026-01-31T12:00, or all") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_status(value: str | None) -> RunStatus | None:
    """A run status filter (empty: any)."""
    if not value:
        return None
    try:
        return RunStatus(value)
    except ValueError:
        raise BadParameter(f"status={value[:40]!r}: one of "
                           f"{', '.join(s.value for s in RunStatus)}") from None


def parse_page(value: str | None) -> int:
    """A 1-based page number."""
    if not value:
        return 1
    if not value.isdigit() or not 1 <= int(value) <= 100_000:
        raise BadParameter(f"page={value[:20]!r}: a page number from 1")
    return int(value)


def jsonable(value: Any) -> Any:
    """Datetimes as ISO text, enums as their values, containers recursively."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (RunStatus, StepStatus)):
        return value.value
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def runs_view(orchestrator: Orchestrator, *, workflow: str | None, status: str | None,
              since: str | None, until: str | None, page: str | None) -> dict[str, Any]:
    """A page of runs with the filters applied (``BadParameter`` names a bad filter)."""
    number = parse_page(page)
    found = run_page(orchestrator, workflow=workflow or None, status=parse_status(status),
                     since=parse_time("since", since), until=parse_time("until", until),
                     offset=(number - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    return {"runs": [summary_view(run) for run in found.runs], "page": number,
            "per_page": PAGE_SIZE, "has_next": found.has_next,
            "filters": {"workflow": workflow or "", "status": status or "",
                        "since": since or "", "until": until or ""},
            "workflows": workflow_names(orchestrator)}


def summary_view(run: RunSummary) -> dict[str, Any]:
    """One line of the runs list."""
    duration = (run.finished_at - run.created_at).total_seconds() \
        if run.finished_at and run.created_at else None
    return {"run_id": run.run_id, "workflow": run.workflow, "status": run.status.value,
            "created_at": jsonable(run.created_at), "finished_at": jsonable(run.finished_at),
            "duration_s": duration, "cost_usd": run.cost_usd, "error": run.error}


def run_view(orchestrator: Orchestrator, run_id: str) -> dict[str, Any]:
    """A run with its graph, every step (also those not started yet) and every attempt."""
    run = orchestrator.store.get_run(run_id)
    graph = graph_view(orchestrator, run.workflow, run)
    by_output = {step.output_name: step.output for step in run.steps.values()
                 if step.status.produced_output}
    sources = _sources(orchestrator, run.workflow)
    steps = []
    for node in graph["nodes"]:
        record = run.steps.get(node["name"])
        view = step_view(record) if record is not None else _pending_step(node)
        bound = sources.get(node["name"])
        view["inputs"] = None if bound is None else {
            param: run.inputs[source] if source in run.inputs else by_output.get(source)
            for param, source in bound.items()}
        steps.append(view)
    return {"run_id": run.run_id, "workflow": run.workflow, "status": run.status.value,
            "error": run.error, "error_type": run.error_type, "cost_usd": run.cost_usd,
            "tokens_in": sum(s.tokens_in for s in run.steps.values()),
            "tokens_out": sum(s.tokens_out for s in run.steps.values()),
            "created_at": jsonable(run.created_at), "started_at": jsonable(run.started_at),
            "finished_at": jsonable(run.finished_at), "duration_s": run.duration_s,
            "parent_run_id": run.parent_run_id, "inputs": jsonable(run.inputs),
            "terminal": run.status.is_terminal,
            "waiting": [s["name"] for s in steps if s["status"] == StepStatus.WAITING.value],
            "graph": graph, "steps": steps}


def step_view(step: StepRecord) -> dict[str, Any]:
    """One recorded step: status, output, error, model, tokens, cost, gate, attempts."""
    return {"name": step.name, "status": step.status.value, "output_name": step.output_name,
            "output": jsonable(step.output), "error": step.error,
            "error_type": step.error_type, "model": step.model, "queue": step.queue,
            "worker": step.worker, "attempts": step.attempts, "latency_ms": step.latency_ms,
            "cost_usd": step.cost_usd, "tokens_in": step.tokens_in,
            "tokens_out": step.tokens_out, "gate": step.gate, "cache_hit": step.cache_hit,
            "deliveries": step.deliveries, "crashes": step.crashes,
            "started_at": jsonable(step.started_at), "finished_at": jsonable(step.finished_at),
            "attempt_log": [jsonable(attempt) for attempt in step.attempt_log]}


def _pending_step(node: dict[str, Any]) -> dict[str, Any]:
    return {"name": node["name"], "status": StepStatus.PENDING.value, "output_name": None,
            "output": None, "error": None, "error_type": None, "model": None,
            "queue": node.get("queue"), "worker": None, "attempts": 0, "latency_ms": None,
            "cost_usd": 0.0, "tokens_in": 0, "tokens_out": 0, "gate": None,
            "cache_hit": False, "deliveries": 0, "crashes": 0, "started_at": None,
            "finished_at": None, "attempt_log": []}


def graph_view(orchestrator: Orchestrator, workflow: str,
               run: RunResult | None = None) -> dict[str, Any]:
    """The workflow's compiled DAG (nodes in declaration order, edges upstream -> step),
    each node with its status in ``run``; steps the run recorded beyond the graph (or the
    recorded steps alone, when this process does not know the workflow) are appended."""
    nodes: list[dict[str, Any]] = []
    edges: list[list[str]] = []
    compiled = _compiled(orchestrator, workflow)
    if compiled is not None:
        for name, bound in compiled.steps.items():
            nodes.append({"name": name, "queue": bound.queue, "kind": _kind(bound)})
            edges.extend([up, name] for up in sorted(bound.upstream))
    known = {node["name"] for node in nodes}
    for name, step in (run.steps.items() if run is not None else ()):
        if name not in known:
            nodes.append({"name": name, "queue": step.queue, "kind": "step"})
    for node in nodes:
        record = run.steps.get(node["name"]) if run is not None else None
        node["status"] = record.status.value if record is not None else (
            StepStatus.PENDING.value if run is not None else "declared")
    return {"nodes": nodes, "edges": edges, "known": compiled is not None}


def _kind(bound: Any) -> str:
    spec = bound.spec
    names = getattr(getattr(spec.fn, "__code__", None), "co_names", ())
    if spec.map:
        return "map"
    if "wait_for_input" in names:
        return "human"
    if "run_child" in names:
        return "child"
    return "branch" if spec.when is not None else "step"


def _compiled(orchestrator: Orchestrator, workflow: str) -> Any:
    """The workflow's compiled graph; None when this process does not know it (or it does
    not compile: the recorded steps are shown then, without edges)."""
    found = orchestrator.workflows.get(workflow)
    if found is None:
        return None
    try:
        return found.validate()
    except Exception:
        return None


def _sources(orchestrator: Orchestrator, workflow: str) -> dict[str, dict[str, str]]:
    compiled = _compiled(orchestrator, workflow)
    if compiled is None:
        return {}
    return {name: dict(bound.sources) for name, bound in compiled.steps.items()}


def workflow_view(orchestrator: Orchestrator, workflow: str, since: str | None
                  ) -> dict[str, Any]:
    """p50/p95 per step, error rate per model, cost per run, fallback rate."""
    window = since or "24h"
    report = workflow_stats(orchestrator, workflow, parse_time("since", window))
    step_runs = sum(step.runs for step in report.steps)
    fallbacks = sum(step.fallbacks for step in report.steps)
    return {
        "workflow": workflow, "since": window, "runs": report.runs,
        "runs_by_status": report.runs_by_status, "cost_per_run": report.cost_per_run,
        "fallback_rate": fallbacks / step_runs if step_runs else 0.0,
        "steps": [{"step": s.step, "runs": s.runs, "p50_ms": s.p50_ms, "p95_ms": s.p95_ms,
                   "p99_ms": s.p99_ms, "retries": s.retries, "fallbacks": s.fallbacks,
                   "fallback_rate": s.fallbacks / s.runs if s.runs else 0.0,
                   "failed": s.failed, "skipped": s.skipped, "cost_usd": s.cost_usd}
                  for s in report.steps],
        "models": [{"model": m.model, "attempts": m.attempts, "failed": m.failed,
                    "error_rate": m.error_rate} for m in report.models],
        "graph": graph_view(orchestrator, workflow),
    }


def breakers_view(orchestrator: Orchestrator, *, recent: timedelta = timedelta(hours=1)
                  ) -> dict[str, Any]:
    """Each catalogue model's breaker (state, failures counted, opened at) and its latest
    failed calls."""
    breakers = orchestrator.resilience.breakers
    failures = failed_calls(orchestrator, since=datetime.now(UTC) - recent)
    models = []
    for name in sorted(set(orchestrator.catalogue.models) | set(failures)):
        entry: dict[str, Any] = {"model": name, "in_catalogue":
                                 name in orchestrator.catalogue.models}
        if entry["in_catalogue"]:
            try:
                state, counted, opened_at = breakers.get(name).snapshot()
            except Exception as exc:  # e.g. Redis unreachable: say so, show the rest
                entry.update(state="unknown", failures=None, opened_at=None,
                             problem=f"{type(exc).__name__}: {exc}"[:200])
            else:
                entry.update(state=state, failures=counted, opened_at=jsonable(opened_at))
        else:
            entry.update(state="unknown", failures=None, opened_at=None)
        entry["recent_failures"] = [
            {"at": jsonable(call.at), "run_id": call.run_id, "step": call.step,
             "error": call.error, "error_kind": call.error_kind}
            for call in failures.get(name, [])]
        models.append(entry)
    return {"shared": breakers.shared, "recent_window_s": recent.total_seconds(),
            "models": models}


def queues_view(orchestrator: Orchestrator) -> dict[str, Any]:
    """Messages waiting per known queue, as the broker says (None where it cannot)."""
    queues = known_queues(orchestrator)
    try:
        depths = queue_depths(orchestrator, queues)
    except Exception as exc:  # the broker is down: say so rather than fail the page
        return {"queues": [{"queue": q, "waiting": None} for q in queues],
                "problem": f"the broker did not answer: {type(exc).__name__}"}
    return {"queues": [{"queue": q, "waiting": n} for q, n in depths.items()],
            "problem": None}
