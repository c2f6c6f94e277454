"""What bench/scale_db.py times: the store calls behind the operator's commands, their
plans, and the step hot path's writes.

Each query is the call the command makes (``orchestrate runs`` -> ``Store.list_runs``,
``show`` -> ``get_run`` + the run's permit waits and batch elements, ``stats`` ->
``workflow_stats``, the reconciler -> ``Recovery.stale_runs``, the dashboard's runs list
-> ``run_page`` + ``workflow_names``). The SQL each call sends is captured from the engine
and explained (``EXPLAIN (ANALYZE, BUFFERS)`` on PostgreSQL, ``EXPLAIN QUERY PLAN`` on
SQLite) with the parameters it was sent with.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Engine, event, exists, func, select, text

from orchestration.core.clock import as_utc
from orchestration.core.status import RunStatus, StepStatus
from orchestration.define.workflow import Host
from orchestration.observe.dashboard import run_page, workflow_names
from orchestration.observe.queries import workflow_stats
from orchestration.store.batches import Batches
from orchestration.store.models import PermitWaitRow, RunRow, StepRow
from orchestration.store.repository import AttemptRecord, PlannedStep, RunFinish, StepOutcome, Store

#: The indexes migration 0018 adds, and those it drops: the "before" pass has the latter.
INDEXES = {"ix_runs_workflow_created_at": "runs (workflow, created_at)",
           "ix_runs_workflow": "runs (workflow)"}
NEW_INDEXES = ("ix_runs_workflow_created_at",)
REPLACED = ("ix_runs_workflow",)


class _Host:
    """The two attributes of a Host the observe queries read."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.workflows: dict[str, Any] = {}


@dataclass(frozen=True)
class Query:
    """One operator call: its label, the command it stands for, and how to make it."""

    label: str
    command: str
    call: Callable[[Store, Host, str], object]


def stale_runs_0017(store: Store, idle_since: datetime) -> list[str]:
    """The reconciler's scan as shipped up to migration 0017 (the "before" pass): the latest
    progress of *every* run's steps, grouped, joined to the pending/running runs."""
    progress = (select(StepRow.run_id.label("run_id"),
                       func.max(func.coalesce(StepRow.finished_at, StepRow.started_at))
                       .label("last"))
                .group_by(StepRow.run_id).subquery())
    query = (select(RunRow.id, RunRow.workflow, RunRow.workflow_version, RunRow.inputs,
                    RunRow.created_at, progress.c.last)
             .join(progress, progress.c.run_id == RunRow.id, isouter=True)
             .where(RunRow.status.in_([RunStatus.PENDING.value, RunStatus.RUNNING.value]),
                    RunRow.created_at < idle_since,
                    ~exists().where(PermitWaitRow.run_id == RunRow.id)))
    with store.reader.connect() as conn:
        return [row.id for row in conn.execute(query)
                if row.last is None or as_utc(row.last) < idle_since]  # type: ignore[operator]


def workflow_names_0017(store: Store) -> list[str]:
    """The dashboard's workflow list as shipped up to 0017: ``SELECT DISTINCT workflow``."""
    with store.reader.connect() as conn:
        return sorted(name for (name,) in conn.execute(select(RunRow.workflow).distinct()))


def queries(popular: str, rare: str, *, before: bool = False) -> list[Query]:
    """The calls measured, at ``now`` (a run id is passed for ``show``); ``before``: the
    reconciler's scan and the dashboard's workflow list as shipped before this change."""
    def ago(seconds: float) -> datetime:
        return datetime.now(UTC) - timedelta(seconds=seconds)

    def show(store: Store, _host: Host, run_id: str) -> object:
        run = store.get_run(run_id)
        store.permit_waits.of_run(run_id)
        Batches(store.engine, store.reader).of_run(run_id)
        return run

    return [
        Query("runs -w popular", f"runs -w {popular}",
              lambda s, h, r: s.list_runs(workflow=popular, limit=20)),
        Query("runs -w rare", f"runs -w {rare}",
              lambda s, h, r: s.list_runs(workflow=rare, limit=20)),
        Query("runs -s failed", "runs -s failed",
              lambda s, h, r: s.list_runs(status=RunStatus.FAILED, limit=20)),
        Query("runs -s cancelled", "runs -s cancelled",
              lambda s, h, r: s.list_runs(status=RunStatus.CANCELLED, limit=20)),
        Query("runs -w rare -s failed", f"runs -w {rare} -s failed",
              lambda s, h, r: s.list_runs(workflow=rare, status=RunStatus.FAILED, limit=20)),
        Query("runs since 1h", "list_runs(since=1h)",
              lambda s, h, r: s.list_runs(since=ago(3600), limit=20)),
        Query("runs -s failed since 7d -w popular", "list_runs(w, failed, since=7d)",
              lambda s, h, r: s.list_runs(workflow=popular, status=RunStatus.FAILED,
                                          since=ago(7 * 86400), limit=20)),
        Query("show", "show <run>", show),
        Query("stats -w popular 24h", f"stats {popular} --since 24h",
              lambda s, h, r: workflow_stats(h, popular, ago(86400))),
        Query("stats -w rare 24h", f"stats {rare} --since 24h",
              lambda s, h, r: workflow_stats(h, rare, ago(86400))),
        Query("reconciler scan", "stale_runs(idle 300 s)",
              (lambda s, h, r: stale_runs_0017(s, ago(300))) if before
              else (lambda s, h, r: s.recovery.stale_runs(ago(300)))),
        Query("dashboard page 1", "run_page()",
              lambda s, h, r: run_page(h)),
        Query("dashboard -w rare -s failed 7d", "run_page(w, failed, since=7d)",
              lambda s, h, r: run_page(h, workflow=rare, status=RunStatus.FAILED,
                                       since=ago(7 * 86400))),
        Query("dashboard page 5 -w popular", "run_page(w, offset=200)",
              lambda s, h, r: run_page(h, workflow=popular, offset=200)),
        Query("dashboard workflow list", "workflow_names()",
              (lambda s, h, r: workflow_names_0017(s)) if before
              else (lambda s, h, r: workflow_names(h))),
    ]


def host_of(store: Store) -> Host:
    """A Host with the store and no registered workflows (enough for the observe reads)."""
    return cast(Host, _Host(store))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def time_queries(store: Store, items: list[Query], sample_ids: list[str],
                 reps: int) -> dict[str, list[float]]:
    """Each query's durations in ms over ``reps`` calls (after one warm-up call)."""
    host = host_of(store)
    rng = random.Random(5)
    result: dict[str, list[float]] = {}
    for item in items:
        item.call(store, host, rng.choice(sample_ids))
        took = []
        for _ in range(reps):
            run_id = rng.choice(sample_ids)
            started = time.perf_counter()
            item.call(store, host, run_id)
            took.append((time.perf_counter() - started) * 1000)
        result[item.label] = took
    return result


def p50_p95(values: list[float]) -> tuple[float, float]:
    """The median and the 95th percentile."""
    return statistics.median(values), percentile(values, 95)


def explain(store: Store, items: list[Query], run_id: str) -> str:
    """Every statement each query sends, with its plan (actually executed on PostgreSQL)."""
    engine = store.reader
    postgres = engine.dialect.name == "postgresql"
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any,
                _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, parameters))

    host = host_of(store)
    out: list[str] = []
    for item in items:
        captured.clear()
        event.listen(engine, "before_cursor_execute", capture)
        try:
            item.call(store, host, run_id)
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        out.append(f"=== {item.label}  ({item.command})")
        with engine.connect() as conn:
            for statement, parameters in captured:
                prefix = "EXPLAIN (ANALYZE, BUFFERS) " if postgres else "EXPLAIN QUERY PLAN "
                rows = conn.exec_driver_sql(prefix + statement, parameters).all()
                out.append("--- " + " ".join(statement.split()))
                out.append(f"    params: {parameters}")
                if postgres:
                    out.extend("    " + str(row[0]) for row in rows)
                else:
                    out.extend(f"    {row[1]}/{row[2]} {row[3]}" for row in rows)
        out.append("")
    return "\n".join(out)


def set_new_indexes(engine: Engine, present: bool) -> None:
    """Migration 0018's indexes (``present``) or those it replaced, then analyze runs."""
    build, drop = (NEW_INDEXES, REPLACED) if present else (REPLACED, NEW_INDEXES)
    with engine.begin() as conn:
        for name in drop:
            conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
        for name in build:
            conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON {INDEXES[name]}"))
        conn.execute(text("ANALYZE runs"))


def write_round(store: Store, runs: int) -> tuple[float, float]:
    """(µs per run created, µs per step claimed + recorded) over ``runs`` 4-step runs."""
    names = ["a", "b", "c", "d"]
    planned = [PlannedStep(n, n, "default", None, True) for n in names]
    ids = [str(uuid.uuid4()) for _ in range(runs)]
    started = time.perf_counter()
    for run_id in ids:
        store.create_run(run_id, "support_triage", "v3", {"ticket": "T-1"}, planned)
    created = (time.perf_counter() - started) / runs * 1e6
    started = time.perf_counter()
    for run_id in ids:
        for position, name in enumerate(names):
            claim = store.claim_step(run_id, name, worker="w1", task_id=f"{run_id}:{name}",
                                     first=position == 0, holder="bench")
            now = datetime.now(UTC)
            outcome = StepOutcome(StepStatus.SUCCEEDED, output={"ok": True}, attempts=[
                AttemptRecord(1, "succeeded", now - timedelta(milliseconds=3), now)])
            store.record_step(run_id, name, outcome, worker="w1", claimed_at=claim.claimed_at,
                              finish=RunFinish(RunStatus.SUCCEEDED) if name == "d" else None)
    stepped = (time.perf_counter() - started) / (runs * len(names)) * 1e6
    return created, stepped


def write_cost(store: Store, runs: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Median (create µs, step µs) without and with the new indexes, rounds alternating."""
    seen: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for index in range(rounds * 2):
        present = index % 2 == 1
        set_new_indexes(store.engine, present)
        # Untimed: the index build's writes (WAL, checkpoint) land here, not in the round.
        write_round(store, max(10, runs // 4))
        seen[present].append(write_round(store, runs))
    return {("with" if present else "without"): (
        statistics.median(c for c, _ in rounds_), statistics.median(s for _, s in rounds_))
        for present, rounds_ in seen.items()}
