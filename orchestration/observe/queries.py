"""What the operator asks at 2 AM: per-step figures, queue depths, the DAG as Graphviz."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from orchestration.core.stats import StepStats, percentile, step_stats
from orchestration.define.workflow import Host
from orchestration.store.models import AttemptRow, RunRow

if TYPE_CHECKING:
    from orchestration.define.compiling import CompiledWorkflow


@dataclass(frozen=True)
class ModelStats:
    """Calls to one model, how many failed, and how full their context windows were
    (prompt tokens / the model's context window: median and largest)."""

    model: str
    attempts: int
    failed: int
    context_p50: float | None = None
    context_max: float | None = None

    @property
    def error_rate(self) -> float:
        """Failed attempts / attempts."""
        return self.failed / self.attempts if self.attempts else 0.0


@dataclass(frozen=True)
class WorkflowStats:
    """A workflow's figures over a window."""

    workflow: str
    runs: int
    runs_by_status: dict[str, int]
    cost_per_run: float
    steps: list[StepStats]
    models: list[ModelStats]


def workflow_stats(orchestrator: Host, workflow: str,
                   since: datetime | None) -> WorkflowStats:
    """Per-step latency percentiles, retries, fallbacks; error rate per model; cost per run."""
    store = orchestrator.store
    counts = store.status_counts(workflow=workflow, since=since)
    order = list(orchestrator.workflows[workflow].steps) if workflow in orchestrator.workflows \
        else []
    steps = step_stats(store.step_rows(workflow=workflow, since=since), order=order)
    runs_query = select(func.count(), func.coalesce(func.sum(RunRow.cost_usd), 0.0)).where(
        RunRow.workflow == workflow)
    # Every model call of every attempt, so a model whose failures a fallback model
    # answered still shows its errors.
    calls_query = (select(AttemptRow.calls).join(RunRow, RunRow.id == AttemptRow.run_id)
                   .where(RunRow.workflow == workflow, AttemptRow.calls.is_not(None)))
    if since is not None:
        runs_query = runs_query.where(RunRow.created_at >= since)
        calls_query = calls_query.where(RunRow.created_at >= since)
    per_model: dict[str, list[int]] = {}
    filled: dict[str, list[float]] = {}
    with store.reader.connect() as conn:
        runs, cost = conn.execute(runs_query).one()
        for (calls,) in conn.execute(calls_query):
            for call in calls or ():
                tally = per_model.setdefault(str(call.get("model")), [0, 0])
                tally[0] += 1
                tally[1] += 0 if call.get("ok") else 1
                if call.get("context_utilisation") is not None:
                    filled.setdefault(str(call.get("model")), []).append(
                        float(call["context_utilisation"]))
    models = [ModelStats(model, n, failed, percentile(filled.get(model, []), 50),
                         max(filled[model]) if filled.get(model) else None)
              for model, (n, failed) in sorted(per_model.items())]
    return WorkflowStats(workflow, int(runs), {s.value: n for s, n in counts.items()},
                         float(cost) / runs if runs else 0.0, steps, models)


def queue_depths(orchestrator: Host, queues: list[str]) -> dict[str, int | None]:
    """Messages waiting in each queue, asked of the broker (None where it cannot say)."""
    depths: dict[str, int | None] = {}
    with orchestrator.celery.connection_for_read() as connection:
        channel = connection.default_channel
        for queue in queues:
            try:
                depths[queue] = int(channel.queue_declare(queue=queue, passive=True)
                                    .message_count)
            except Exception:  # the broker has no such queue (yet)
                depths[queue] = None
                channel = connection.channel()
    return depths


def known_queues(orchestrator: Host) -> list[str]:
    """Every queue of the registered workflows, and the default queue."""
    queues = {orchestrator.settings.default_queue}
    for workflow in orchestrator.workflows.values():
        queues |= {bound.queue for bound in workflow.validate().steps.values()}
    return sorted(queues)


def graph_dot(name: str, compiled: CompiledWorkflow) -> str:
    """The DAG in Graphviz dot: maps as double boxes, branches as diamonds."""
    lines = [f'digraph "{name}" {{', "  rankdir=LR;", "  node [shape=box];"]
    for step, bound in compiled.steps.items():
        spec = bound.spec
        names = getattr(getattr(spec.fn, "__code__", None), "co_names", ())
        shape = ("box3d" if spec.map else "hexagon" if "wait_for_input" in names
                 else "parallelogram" if "run_child" in names
                 else "diamond" if spec.when is not None else "box")
        extra = f"\\nmap over {spec.map}" if spec.map else ""
        lines.append(f'  "{step}" [shape={shape}, label="{step}\\n{bound.queue}{extra}"];')
        lines.extend(f'  "{up}" -> "{step}";' for up in sorted(bound.upstream))
    lines.append("}")
    return "\n".join(lines)
