"""The chaos tests' verdict: what must hold after the chaos, and the figures it reports.

Read from the results DB (plain SQL, plus an audit trigger installed in the test's own
database), the instrumentation Redis (execution counters and logs written by
``tests/chaos/workflows.py``) and what the scenario did (kills, outages, re-dispatches).

What fails a scenario (a *violation*):

- a run not terminal at the end (lost or stuck), or terminal in another status than
  the scenario expects (by default ``succeeded``; a ``PoisonStep`` failure is accepted
  only when SIGKILLs really hit the run ``MAX_CRASHES`` times);
- anything recorded twice: a run or a step reaching a terminal state more than once, a
  change after a terminal state, two ``step_attempts`` rows with the same attempt
  number, more than one ``succeeded`` attempt row for a step;
- a run recorded ``succeeded`` with a step that is not ``succeeded``, or a step recorded
  ``succeeded`` whose body never ran (no execution counted) or that has no
  ``succeeded`` attempt row;
- an output not built on its predecessor's recorded output (a discarded execution fed
  a later step);
- a step executed more times than interruptions explain (below), and crashes recorded
  on a run that no death explains.

Delivery is at least once, so a step may run again, but only when something forced it:
an execution of a step beyond its first is *allowed* for each

- SIGKILL whose busy mark named the run (per run, not per step: a kill during the
  claim of the next step of a fused message is seen as hitting the previous one, but a
  kill interrupts at most one step of the run), or
- execution of that step that started while an outage (broker or results DB) was on,
  or less than ``OUTAGE_SLACK_S`` before it began (so it was in flight), or
- death of a step that ends its own process (``os._exit``): such a step may run up to
  ``MAX_CRASHES`` times, one death each;

and a step whose retry policy made several attempts runs once per recorded attempt.

Anything else executed twice (a reconciler re-dispatch of a run that was only queued,
a duplicate delivery with no cause) is a violation.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine, text

from tests.chaos.harness import MAX_CRASHES, Kill, log
from tests.chaos.workflows import DELIVERIES_KEY, EXEC_PREFIX, EXECUTIONS_KEY, PUBLISHED_KEY, STEPS

TERMINAL = ("succeeded", "failed", "cancelled")
STEP_TERMINAL = ("succeeded", "fallback", "failed", "skipped", "cancelled")
OUTAGE_SLACK_S = 3.0  # longer than any chaos step body (1.6 s) plus its claim and record


@dataclass(frozen=True)
class Outage:
    """A window (wall clock) when the broker or the results DB was down."""

    what: str  # "broker" or "results DB"
    start: float
    end: float

    def overlaps(self, started: float) -> bool:
        """True if an execution that started at ``started`` was in flight during it."""
        return self.start - OUTAGE_SLACK_S <= started <= self.end


@dataclass
class Scenario:
    """What a scenario did to the runs, which the verdict must take into account."""

    kills: list[Kill] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)
    redispatches: list[tuple[float, str]] = field(default_factory=list)
    #: Run id -> the terminal status it must end in (runs not named: ``succeeded``).
    expected: dict[str, str] = field(default_factory=dict)
    #: (run id, step) of steps that end their own process (each execution a death).
    deadly: set[tuple[str, str]] = field(default_factory=set)


AUDIT_DDL = [
    """CREATE TABLE chaos_audit (
         id bigserial PRIMARY KEY, tbl text NOT NULL, run_id text NOT NULL, name text,
         old_status text, new_status text, old_finished timestamptz, new_finished timestamptz,
         at timestamptz NOT NULL DEFAULT clock_timestamp())""",
    """CREATE FUNCTION chaos_audit_runs() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
         INSERT INTO chaos_audit (tbl, run_id, old_status, new_status, old_finished,
                                  new_finished)
         VALUES ('runs', NEW.id, OLD.status, NEW.status, OLD.finished_at, NEW.finished_at);
         RETURN NULL; END $$""",
    """CREATE FUNCTION chaos_audit_steps() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
         INSERT INTO chaos_audit (tbl, run_id, name, old_status, new_status, old_finished,
                                  new_finished)
         VALUES ('steps', NEW.run_id, NEW.name, OLD.status, NEW.status, OLD.finished_at,
                 NEW.finished_at);
         RETURN NULL; END $$""",
    """CREATE TRIGGER chaos_audit_runs AFTER UPDATE ON runs FOR EACH ROW
         WHEN (OLD.status IS DISTINCT FROM NEW.status
               OR OLD.finished_at IS DISTINCT FROM NEW.finished_at)
         EXECUTE FUNCTION chaos_audit_runs()""",
    """CREATE TRIGGER chaos_audit_steps AFTER UPDATE ON steps FOR EACH ROW
         WHEN (OLD.status IS DISTINCT FROM NEW.status
               OR OLD.finished_at IS DISTINCT FROM NEW.finished_at)
         EXECUTE FUNCTION chaos_audit_steps()""",
]


def install_audit(engine: Engine) -> None:
    """Log every status/finished_at change of runs and steps (the transitions' oracle)."""
    with engine.begin() as conn:
        for statement in AUDIT_DDL:
            conn.execute(text(statement))


def terminal_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM runs WHERE status IN ('succeeded', 'failed', 'cancelled')"
        )).scalar() or 0)


def wait_for(engine: Engine, total: int, deadline: float, *, every: float = 1.0,
             tick: Callable[[int], None] | None = None) -> tuple[int, float | None]:
    """Poll until ``total`` runs are terminal or ``deadline`` (monotonic) passes.

    ``tick(done)`` runs between polls. Returns (terminal runs, wall time all were done).
    """
    done = terminal_count(engine)
    while done < total and time.monotonic() < deadline:
        if tick is not None:
            tick(done)
        time.sleep(every)
        done = terminal_count(engine)
    return done, (time.time() if done >= total else None)


@dataclass
class Verdict:
    """What the results DB, the audit log and the counters say after the chaos."""

    figures: dict[str, Any]
    violations: list[str]
    notes: list[str]

    def print(self, title: str) -> None:
        log(f"==== {title} ====")
        width = max(len(key) for key in self.figures)
        for key, value in self.figures.items():
            print(f"  {key:<{width}} : {value}", flush=True)
        for note in self.notes:
            print(f"  note: {note}", flush=True)
        for violation in self.violations:
            print(f"  VIOLATION: {violation}", flush=True)


def _rows(engine: Engine, query: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(query)))


def analyse(engine: Engine, counters: redis.Redis, run_ids: list[str], *,
            kills: list[Kill] | None = None,
            redispatches: list[tuple[float, str]] | None = None,
            scenario: Scenario | None = None) -> Verdict:
    """Check the guarantees; count what happened. Violations are the test's failures."""
    scenario = scenario or Scenario()
    scenario.kills.extend(kills or [])
    scenario.redispatches.extend(redispatches or [])
    kills = scenario.kills
    figures: dict[str, Any] = {}
    violations: list[str] = []
    notes: list[str] = []
    runs = {r.id: r for r in _rows(engine, "SELECT id, workflow, status, error_type, error, "
                                           "finished_at FROM runs")}
    steps = _rows(engine, "SELECT run_id, name, status, deliveries, crashes, attempts, output, "
                          "error_type, error, finished_at FROM steps")
    by_run: dict[str, dict[str, Any]] = defaultdict(dict)
    for step in steps:
        by_run[step.run_id][step.name] = step

    statuses = Counter(runs[r].status if r in runs else "missing" for r in run_ids)
    unfinished = [r for r in run_ids if r not in runs or runs[r].status not in TERMINAL]
    figures["runs"] = len(run_ids)
    for status in TERMINAL:
        figures[status] = statuses[status]
    figures["stuck (not terminal)"] = len(unfinished)
    if unfinished:
        violations.append(f"{len(unfinished)} run(s) not terminal, e.g. "
                          f"{_describe_runs(unfinished[:3], runs, by_run)}")
    by_workflow = Counter(f"{runs[r].workflow}:{runs[r].status}" for r in run_ids if r in runs)
    figures["runs by workflow and status"] = dict(sorted(by_workflow.items()))
    _check_outcomes(run_ids, runs, by_run, scenario, violations, notes)
    _check_transitions(engine, run_ids, runs, by_run, figures, violations)
    _check_attempt_rows(engine, run_ids, by_run, figures, violations)
    _check_lineage(run_ids, by_run, figures, violations)
    executions = _executions(counters)
    _check_executions(executions, steps, run_ids, scenario, figures, violations, notes, counters)
    _classify_deliveries(counters, run_ids, scenario.redispatches, kills, figures, notes)
    return Verdict(figures, violations, notes)


def dump_evidence(engine: Engine, verdict: Verdict, path: Path, limit: int = 5) -> None:
    """Write the rows of the first runs a violation names (steps, attempts, audit) to
    ``path``: the evidence outlives a results DB the test throws away."""
    named = list(dict.fromkeys(re.findall(r"[0-9a-f]{8}-[0-9a-f-]{27}",
                                          "\n".join(verdict.violations))))[:limit]
    if not named:
        return
    lines = []
    for query in ("SELECT * FROM runs WHERE id = :r",
                  "SELECT * FROM steps WHERE run_id = :r ORDER BY name",
                  "SELECT * FROM step_attempts WHERE run_id = :r ORDER BY id",
                  "SELECT * FROM chaos_audit WHERE run_id = :r ORDER BY id"):
        for run_id in named:
            with engine.connect() as conn:
                for row in conn.execute(text(query), {"r": run_id}):
                    lines.append(f"{query.split()[3]} {dict(row._mapping)}")
    path.write_text("\n".join(lines) + "\n")


def _describe_runs(ids: list[str], runs: dict[str, Any],
                   by_run: dict[str, dict[str, Any]]) -> str:
    parts = []
    for run_id in ids:
        run = runs.get(run_id)
        state = {name: f"{s.status}/d{s.deliveries}/c{s.crashes}"
                 for name, s in by_run.get(run_id, {}).items()}
        parts.append(f"{run_id} {run.status if run else 'missing'} {state}")
    return "; ".join(parts)


def _kills_by_run(kills: list[Kill]) -> Counter[str]:
    """SIGKILLs that hit a process running one of the run's steps, per run.

    Per run, not per step: the busy mark is set when a step's body starts, so a kill
    during the claim of the next step of a fused message is seen as hitting the previous
    one; but each kill interrupts at most one step of the run, so a run can never record
    more crashes than the kills that hit it.
    """
    killed: Counter[str] = Counter()
    for kill in kills:
        for run_id in {busy["run"] for busy in kill.busy}:
            killed[run_id] += 1
    return killed


def _check_outcomes(run_ids: list[str], runs: dict[str, Any],
                    by_run: dict[str, dict[str, Any]], scenario: Scenario,
                    violations: list[str], notes: list[str]) -> None:
    """Each run ended as expected; a poison failure only if SIGKILLs really hit it 3 times."""
    killed = _kills_by_run(scenario.kills)
    for run_id in run_ids:
        run = runs.get(run_id)
        if run is None or run.status not in TERMINAL:
            continue
        expected = scenario.expected.get(run_id, "succeeded")
        if run.status == expected:
            continue
        poison = [s for s in by_run[run_id].values() if s.error_type == "PoisonStep"]
        for step in poison:
            really = killed[run_id]
            line = (f"run {run_id} failed: step {step.name} poison with crashes={step.crashes}, "
                    f"deliveries={step.deliveries}, SIGKILLs while the run ran={really}")
            (notes if really >= MAX_CRASHES else violations).append(line)
        if not poison:
            violations.append(f"run {run_id} ended {run.status} (expected {expected}): "
                              f"{run.error_type}: {(run.error or '')[:300]} "
                              f"{_describe_runs([run_id], runs, by_run)}")
    for run_id in run_ids:
        for step in by_run.get(run_id, {}).values():
            if (runs.get(run_id) is not None and runs[run_id].status == "succeeded"
                    and step.status != "succeeded"):
                violations.append(f"run {run_id} succeeded but step {step.name} is "
                                  f"{step.status}")


def _check_attempt_rows(engine: Engine, run_ids: list[str],
                        by_run: dict[str, dict[str, Any]], figures: dict[str, Any],
                        violations: list[str]) -> None:
    """One ``step_attempts`` row per attempt number; one succeeded row per succeeded step."""
    rows = _rows(engine, "SELECT run_id, step_name, attempt, status FROM step_attempts")
    numbers = Counter((r.run_id, r.step_name, r.attempt) for r in rows)
    succeeded = Counter((r.run_id, r.step_name) for r in rows if r.status == "succeeded")
    same_number = [(key, n) for key, n in numbers.items() if n > 1]
    many_succeeded = [(key, n) for key, n in succeeded.items() if n > 1]
    figures["attempt rows with a duplicated attempt number"] = len(same_number)
    figures["steps with >1 succeeded attempt row"] = len(many_succeeded)
    for (run_id, name, attempt), n in same_number[:5]:
        violations.append(f"step {run_id}/{name}: {n} attempt rows numbered {attempt}")
    for (run_id, name), n in many_succeeded[:5]:
        violations.append(f"step {run_id}/{name}: {n} succeeded attempt rows")
    without_row = [(run_id, step.name) for run_id in run_ids
                   for step in by_run.get(run_id, {}).values()
                   if step.status == "succeeded" and not succeeded[(run_id, step.name)]]
    figures["succeeded steps without a succeeded attempt row"] = len(without_row)
    for run_id, name in without_row[:5]:
        violations.append(f"step {run_id}/{name} is succeeded with no succeeded attempt row")


def _audit_counts(engine: Engine) -> tuple[Counter[str], Counter[tuple[str, str]], list[Any]]:
    """(finish transitions per run, terminal transitions per step, changes after terminal)."""
    audit = _rows(engine, "SELECT tbl, run_id, name, old_status, new_status, old_finished, "
                          "new_finished FROM chaos_audit ORDER BY id")
    run_finishes: Counter[str] = Counter()
    step_finishes: Counter[tuple[str, str]] = Counter()
    after_terminal = []
    for row in audit:
        terminal = TERMINAL if row.tbl == "runs" else STEP_TERMINAL
        if row.old_status in terminal:
            after_terminal.append(row)
        elif row.new_status in terminal and row.tbl == "runs":
            run_finishes[row.run_id] += 1
        elif row.new_status in terminal:
            step_finishes[(row.run_id, row.name)] += 1
    return run_finishes, step_finishes, after_terminal


def _check_transitions(engine: Engine, run_ids: list[str], runs: dict[str, Any],
                       by_run: dict[str, dict[str, Any]], figures: dict[str, Any],
                       violations: list[str]) -> None:
    """From the audit trigger: each run finished once, each step reached terminal once."""
    run_finishes, step_finishes, after_terminal = _audit_counts(engine)
    figures["duplicates of finished runs"] = sum(n - 1 for n in run_finishes.values() if n > 1)
    figures["steps finished more than once"] = sum(1 for n in step_finishes.values() if n > 1)
    figures["changes after a terminal state"] = len(after_terminal)
    for row in after_terminal[:10]:
        violations.append(f"{row.tbl} {row.run_id} {row.name or ''} changed after it was "
                          f"terminal: {row.old_status} -> {row.new_status}")
    for run_id in run_ids:
        run = runs.get(run_id)
        if run is None or run.status not in TERMINAL:
            continue
        if run_finishes[run_id] != 1:
            violations.append(f"run {run_id} is {run.status} after {run_finishes[run_id]} "
                              "recorded finish transitions")
        if run.finished_at is None:
            violations.append(f"run {run_id} is {run.status} without finished_at")
            continue
        late = [s.name for s in by_run[run_id].values()
                if s.finished_at is not None and s.finished_at > run.finished_at]
        if late:
            violations.append(f"run {run_id}: step(s) {late} finished after the run did")
    for (run_id, name), n in step_finishes.items():
        if n != 1:
            violations.append(f"step {run_id}/{name} reached a terminal state {n} times")
    for run_id in run_ids:
        for step in by_run.get(run_id, {}).values():
            if step.status in STEP_TERMINAL and (run_id, step.name) not in step_finishes:
                violations.append(f"step {run_id}/{step.name} is {step.status} with no "
                                  "recorded terminal transition")


def _check_lineage(run_ids: list[str], by_run: dict[str, dict[str, Any]],
                   figures: dict[str, Any], violations: list[str]) -> None:
    """Each recorded output is built on its predecessor's recorded output."""
    broken = []
    for run_id in run_ids:
        steps = by_run.get(run_id, {})
        for before, after in itertools.pairwise(STEPS):
            upstream, downstream = steps.get(before), steps.get(after)
            if (upstream is None or downstream is None or upstream.status != "succeeded"
                    or downstream.status != "succeeded"):
                continue
            if not str(downstream.output).startswith(f"{upstream.output}|{after}:"):
                broken.append((run_id, before, after, upstream.output, downstream.output))
    figures["outputs not built on the recorded upstream output"] = len(broken)
    for run_id, before, after, up, down in broken[:5]:
        violations.append(f"run {run_id}: {after} recorded {down!r}, built on an output of "
                          f"{before} that was never recorded (recorded: {up!r})")


def _executions(counters: redis.Redis) -> dict[tuple[str, str], list[float]]:
    """Start times of every execution of every step body, per (run, step)."""
    starts: dict[tuple[str, str], list[float]] = defaultdict(list)
    for raw in counters.lrange(EXECUTIONS_KEY, 0, -1):
        entry = json.loads(raw)
        starts[(entry["run"], entry["step"])].append(float(entry["t"]))
    # The INCR counters are the reference count: the log is written in the same pipeline.
    for key in counters.scan_iter(match=f"{EXEC_PREFIX}*", count=1000):
        run_id, step = key.decode()[len(EXEC_PREFIX):].rsplit(":", 1)
        count = int(counters.get(key) or 0)
        starts[(run_id, step)].extend([float("nan")] * (count - len(starts[(run_id, step)])))
    return starts


def _check_executions(executions: dict[tuple[str, str], list[float]], steps: list[Any],
                      run_ids: list[str], scenario: Scenario, figures: dict[str, Any],
                      violations: list[str], notes: list[str], counters: redis.Redis) -> None:
    """Every re-execution and every recorded crash is explained by an interruption."""
    killed = _kills_by_run(scenario.kills)
    attempts = {(s.run_id, s.name): max(int(s.attempts or 0), 1) for s in steps}
    extra_by_run: Counter[str] = Counter()  # re-executions only a SIGKILL can explain
    deaths_by_run: Counter[str] = Counter()  # deaths and in-flight-at-outage executions
    unexplained = 0
    for (run_id, name), starts in executions.items():
        in_outage = sum(1 for t in starts if any(o.overlaps(t) for o in scenario.outages))
        deadly = (run_id, name) in scenario.deadly
        deaths_by_run[run_id] += in_outage + (len(starts) if deadly else 0)
        if len(starts) <= 1:
            continue
        # Each attempt its retry policy made is an execution of its own.
        explained = (MAX_CRASHES - 1 if deadly else in_outage) + attempts.get(
            (run_id, name), 1) - 1
        extra = len(starts) - 1 - explained
        if extra > 0:
            extra_by_run[run_id] += extra
        if deadly and len(starts) > MAX_CRASHES:
            violations.append(f"step {run_id}/{name} ends its process but ran {len(starts)} "
                              f"times (at most {MAX_CRASHES} deaths before it is poison)")
    for run_id, extra in extra_by_run.items():
        if extra > killed[run_id]:
            unexplained += 1
            violations.append(f"run {run_id}: {extra} re-execution(s) beyond what its "
                              f"{killed[run_id]} SIGKILL(s) and outages explain; history:\n"
                              + _history(counters, run_id, scenario.kills))
    twice = [key for key, starts in executions.items() if len(starts) > 1]
    allowed = len({run for run, _ in twice}) - unexplained
    step_succeeded = {(s.run_id, s.name) for s in steps if s.status == "succeeded"}
    never_ran = sorted(key for key in step_succeeded
                       if key[0] in set(run_ids) and not executions.get(key))
    figures["step executions, total"] = sum(len(v) for v in executions.values())
    figures["steps executed more than once"] = len(twice)
    figures["  runs with re-executions explained by a kill or outage"] = allowed
    figures["  runs with re-executions nothing explains"] = unexplained
    figures["succeeded steps whose body never ran"] = len(never_ran)
    for run_id, name in never_ran[:5]:
        violations.append(f"step {run_id}/{name} is succeeded but its body never ran")
    figures["re-deliveries (sum deliveries - steps)"] = sum(s.deliveries for s in steps) - len(
        steps)
    crashes: Counter[str] = Counter()
    for step in steps:
        crashes[step.run_id] += step.crashes
    figures["crashes recorded (sum steps.crashes)"] = sum(crashes.values())
    spurious = [(run_id, n) for run_id, n in crashes.items()
                if n > killed[run_id] + deaths_by_run[run_id]]
    figures["runs with crashes recorded that no death explains"] = len(spurious)
    for run_id, n in spurious[:5]:
        violations.append(f"run {run_id}: {n} crash(es) recorded, {killed[run_id]} SIGKILL(s) "
                          f"and {deaths_by_run[run_id]} death(s)/in-flight outage executions")
    if spurious:
        notes.append(f"history of run {spurious[0][0]}:\n"
                     + _history(counters, spurious[0][0], scenario.kills))


def _classify_deliveries(counters: redis.Redis, run_ids: list[str],
                         redispatches: list[tuple[float, str]], kills: list[Kill],
                         figures: dict[str, Any], notes: list[str]) -> None:
    """Which mechanism delivered what: requeue, visibility restore, reconciler."""
    entries = sorted((json.loads(raw) for raw in counters.lrange(DELIVERIES_KEY, 0, -1)),
                     key=lambda e: e["t"])
    published = [json.loads(raw) for raw in counters.lrange(PUBLISHED_KEY, 0, -1)]
    killed_children = {k.pid for k in kills if k.kind == "child"}
    seen: dict[str, int] = {}  # task id -> pid of its last delivery
    redelivered: Counter[str] = Counter()
    for entry in entries:
        if entry["redelivered"]:
            previous = seen.get(entry["task_id"])
            # A pool process's death re-queues its message at once (to the back of the
            # queue); a dead main process's messages wait for a restore sweep, including
            # those it had prefetched and never started.
            redelivered["requeue" if previous in killed_children else "restore"] += 1
        seen[entry["task_id"]] = entry["pid"]
    figures["task deliveries"] = len(entries)
    figures["re-queued after a pool-process kill (reject_on_worker_lost)"] = redelivered[
        "requeue"]
    figures["re-delivered by the visibility timeout (restore sweep)"] = redelivered["restore"]
    dispatches: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in published:
        if entry["role"] in ("submit", "reconcile") and entry["task_id"] == entry["root_id"]:
            dispatches[entry["run"]].append(entry)
    figures["reconciler re-dispatches"] = len(redispatches)
    figures["distinct runs re-dispatched"] = len({run for _, run in redispatches})
    verdicts, needed = _judge_redispatches(dispatches, entries)
    for verdict, n in sorted(verdicts.items()):
        figures[f"re-dispatches, {verdict}"] = n
    figures["runs only the reconciler recovered (lost-and-redispatched)"] = len(needed)
    if verdicts[FALSE_POSITIVE]:
        notes.append("the reconciler re-dispatched runs that were only waiting in the queue: "
                     "'idle' (no step claimed or finished) cannot tell a backlog from a lost "
                     "message; their duplicates are absorbed (at least once, recorded once)")
    missing = [r for r in run_ids if r not in dispatches]
    if missing:
        notes.append(f"{len(missing)} run(s) with no dispatch seen by the instrumentation")


NEEDED = "needed: the run's earlier messages were never delivered again"
RACED = "raced a visibility restore of the earlier message"
FALSE_POSITIVE = "false positive: the earlier message was queued or in progress"


def _judge_redispatches(dispatches: dict[str, list[dict[str, Any]]],
                        entries: list[dict[str, Any]]) -> tuple[Counter[str], set[str]]:
    """For each reconciler dispatch: were the run's earlier messages still delivered after?"""
    by_root: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        by_root[entry["root_id"]].append(entry)
    verdicts: Counter[str] = Counter()
    needed: set[str] = set()
    for run_id, sent in dispatches.items():
        sent.sort(key=lambda e: e["t"])
        for index, dispatch in enumerate(sent):
            if dispatch["role"] != "reconcile":
                continue
            later = [e for earlier in sent[:index] for e in by_root[earlier["root_id"]]
                     if e["t"] > dispatch["t"]]
            if not later:
                verdicts[NEEDED] += 1
                needed.add(run_id)
            elif all(e["redelivered"] for e in later):
                verdicts[RACED] += 1
            else:
                verdicts[FALSE_POSITIVE] += 1
    return verdicts, needed


def _history(counters: redis.Redis, run_id: str, kills: list[Kill]) -> str:
    """A run's publishes, deliveries and the kills that hit it, in time order."""
    events: list[tuple[float, str]] = []
    for raw in counters.lrange(PUBLISHED_KEY, 0, -1):
        e = json.loads(raw)
        if e["run"] == run_id:
            events.append((e["t"], f"published {e['step']} task={e['task_id'][:8]} "
                                   f"root={e['root_id'][:8]} by {e['role']} pid={e['pid']}"))
    for raw in counters.lrange(DELIVERIES_KEY, 0, -1):
        e = json.loads(raw)
        if e["run"] == run_id:
            events.append((e["t"], f"delivered {e['step']} task={e['task_id'][:8]} "
                                   f"root={e['root_id'][:8]} redelivered={e['redelivered']} "
                                   f"pid={e['pid']} {e['node']}"))
    for kill in kills:
        hit = [b["step"] for b in kill.busy if b["run"] == run_id]
        if hit:
            events.append((kill.t, f"SIGKILL {kill.kind} pid={kill.pid} ({kill.worker}) "
                                   f"while running {hit}"))
    events.sort()
    start = events[0][0] if events else 0.0
    return "\n".join(f"      +{t - start:7.3f}s {text}" for t, text in events)
