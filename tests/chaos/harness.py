"""The chaos tests' machinery: environments, processes, the killer, the verdict.

Everything the engine does happens in subprocesses (workers, the submitter, the
``orchestrate`` CLI) started with an explicit ``ORCH_*`` environment, so the test process
never builds the default orchestrator and two scenarios with two brokers can share one
pytest session. The test process only reads: the results DB (plain SQL plus an audit
trigger it installs in its own database), the instrumentation Redis and the CLI output.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine, text

from tests.chaos.workflows import (
    BUSY_PREFIX,
    DELIVERIES_KEY,
    EXEC_PREFIX,
    PUBLISHED_KEY,
    STEPS,
)
from tests.integration.workers import Worker, Workers

ROOT = Path(__file__).resolve().parents[2]
ORCHESTRATE = str(Path(sys.executable).with_name("orchestrate"))
TERMINAL = ("succeeded", "failed", "cancelled")
STEP_TERMINAL = ("succeeded", "fallback", "failed", "skipped", "cancelled")
MAX_CRASHES = 3  # ORCH_MAX_CRASHES default, which the tests keep


def chaos_env(**orch: str) -> dict[str, str]:
    """This process's environment without any ORCH_* or provider key, plus ``orch``."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("ORCH_") and key not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env.update({
        "ORCH_IMPORTS": "tests.chaos.workflows",
        "ORCH_LOG_JSON": "true",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",
    })
    env.update(orch)
    return env


def log(message: str) -> None:
    """A timestamped progress line (pytest -s shows it)."""
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- processes ----------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, pgrp) of a process from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[2])


def _all_pids() -> Iterable[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (a prefork worker's pool processes)."""
    return sorted(p for p in _all_pids() if (_proc_stat(p) or (0, 0))[0] == pid)


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid``."""
    return sorted(p for p in _all_pids() if (_proc_stat(p) or (0, 0))[1] == pgid)


def run_cli(env: dict[str, str], *args: str, timeout: float = 90) -> str:
    """``orchestrate <args>``; its stdout (fails loudly on a non-zero exit)."""
    done = subprocess.run([ORCHESTRATE, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise AssertionError(f"orchestrate {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout}\n{done.stderr[-3000:]}")
    return done.stdout


def reconcile(env: dict[str, str], idle: float) -> list[str]:
    """One ``orchestrate reconcile --idle <idle>`` pass; the run ids it re-dispatched."""
    out = run_cli({**env, "ORCH_CHAOS_ROLE": "reconcile"}, "reconcile", "--idle", f"{idle:g}")
    return re.findall(r"re-dispatched ([0-9a-f-]{36})", out)


def submit(env: dict[str, str], count: int, *workflows: str) -> list[str]:
    """Submit ``count`` runs, alternating ``workflows``, from a subprocess; ids in order."""
    done = subprocess.run([sys.executable, "-m", "tests.chaos.submit", str(count), *workflows],
                          cwd=ROOT, env={**env, "ORCH_CHAOS_ROLE": "submit"},
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise AssertionError(f"submitting runs failed ({done.returncode}):\n"
                             f"{done.stderr[-3000:]}")
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` of the test's own: no persistence, so a restart is empty."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.starts += 1
        logfile = self.workdir / f"redis-{self.starts}.log"
        with open(logfile, "ab") as out:
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"redis-server on {self.port} did not start:\n"
                                             f"{logfile.read_text()[-2000:]}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: everything in it (queues, unacked messages, chord counters) is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- the killer -----------------------------------------------------------------------------


@dataclass
class Kill:
    """One SIGKILL: when, what, and the deliveries it interrupted (from chaos:busy)."""

    t: float
    kind: str  # "child" or "main"
    worker: str
    pid: int
    busy: list[dict[str, Any]]
    orphans: int = 0  # main kills: pool processes still alive 1 s later (then killed)
    children: list[int] = field(default_factory=list)  # main kills: its pool processes


@dataclass
class Chaos:
    """Kill pool processes (and every ``main_every``-th time a worker's main process).

    A supervisor replaces a worker whose main process died with a new one on the same
    queues, as systemd or Kubernetes would.
    """

    workers: Workers
    queues: tuple[str, ...]
    counters: redis.Redis
    interval: tuple[float, float] = (1.5, 2.5)
    main_every: int = 3
    concurrency: int = 2
    seed: int = 1
    kills: list[Kill] = field(default_factory=list)
    restarts: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._random = random.Random(self.seed)
        self._thread = threading.Thread(target=self._loop, name="chaos-killer", daemon=True)
        self._generation = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    @property
    def last_kill(self) -> float | None:
        return self.kills[-1].t if self.kills else None

    def count(self, kind: str) -> int:
        return sum(1 for kill in self.kills if kill.kind == kind)

    def _loop(self) -> None:
        while not self._stop.wait(self._random.uniform(*self.interval)):
            try:
                self._tick()
            except Exception as exc:  # reported by the test, never silently lost
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def _tick(self) -> None:
        self._supervise()
        ready = [w for w in self.workers.started
                 if w.alive and w.is_ready() and children_of(w.process.pid)]
        if not ready:
            self.skipped += 1
            return
        worker = self._random.choice(ready)
        if (len(self.kills) + 1) % self.main_every == 0:
            self._kill_main(worker)
        else:
            self._kill_child(worker)

    def _busy(self, pids: Iterable[int]) -> list[dict[str, Any]]:
        values = self.counters.mget([f"{BUSY_PREFIX}{pid}" for pid in pids])
        return [json.loads(value) for value in values if value]

    def _kill_child(self, worker: Worker) -> None:
        pid = self._random.choice(children_of(worker.process.pid))
        busy = self._busy([pid])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            self.kills.append(Kill(time.time(), "child", worker.label, pid, busy))

    def _kill_main(self, worker: Worker) -> None:
        main = worker.process.pid
        children = children_of(main)
        busy = self._busy(children)
        with contextlib.suppress(ProcessLookupError):
            os.kill(main, signal.SIGKILL)
        kill = Kill(time.time(), "main", worker.label, main, busy, children=children)
        self.kills.append(kill)
        worker.process.wait(10)
        # The pool processes notice their parent died and exit; whatever lingers is
        # killed too (a host or container loss takes the whole group).
        time.sleep(1.0)
        survivors = group_members(main)
        kill.orphans = len(survivors)
        if survivors:
            # An orphan may have moved on to the next step of a fused message meanwhile.
            late = [b for b in self._busy(survivors) if b not in kill.busy]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(main, signal.SIGKILL)
            kill.busy.extend(late)
        self._supervise()

    def _supervise(self) -> None:
        self.restarts += len(replace_dead(self.workers, self.queues, self.concurrency))


_generation = iter(range(1, 1_000_000))


def replace_dead(workers: Workers, queues: tuple[str, ...], concurrency: int) -> list[str]:
    """Replace every worker whose main process exited (new node name, same queues).

    What ``restart: unless-stopped`` (docker-compose.yml) or systemd does. Returns how
    each one ended: its label, exit code and last error line.
    """
    ended = []
    for worker in list(workers.started):
        if worker.alive:
            continue
        workers.started.remove(worker)
        reason = next((line for line in reversed(worker.log_tail(400).splitlines())
                       if "CRITICAL" in line or "Unrecoverable" in line), "")
        ended.append(f"{worker.label} exit {worker.process.returncode} {reason[:200]}".strip())
        base = worker.label.split("-r")[0]
        workers.start(f"{base}-r{next(_generation)}", queues, concurrency=concurrency,
                      wait=False)
    return ended


# -- the verdict ------------------------------------------------------------------------------

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
            kills: list[Kill], redispatches: list[tuple[float, str]]) -> Verdict:
    """Check the guarantees; count what happened. Violations are the test's failures."""
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
    figures["runs"] = len(run_ids)
    figures["runs by status"] = dict(statuses)
    by_workflow = Counter(f"{runs[r].workflow}:{runs[r].status}" for r in run_ids if r in runs)
    figures["runs by workflow and status"] = dict(sorted(by_workflow.items()))
    unfinished = [r for r in run_ids if r not in runs or runs[r].status not in TERMINAL]
    if unfinished:
        violations.append(f"{len(unfinished)} run(s) not terminal, e.g. "
                          f"{_describe_runs(unfinished[:3], runs, by_run)}")
    _check_outcomes(run_ids, runs, by_run, kills, violations, notes)
    _check_transitions(engine, run_ids, runs, by_run, figures, violations)
    _check_lineage(run_ids, by_run, figures, violations)
    spurious = _count_executions(counters, steps, figures, kills)
    for run_id, _, _ in spurious[:3]:
        notes.append(f"crashes without a kill in run {run_id}; its history:\n"
                     + _history(counters, run_id, kills))
    _classify_deliveries(counters, run_ids, redispatches, kills, figures, notes)
    succeeded_attempts = _rows(engine, "SELECT run_id, step_name, count(*) AS n FROM "
                                       "step_attempts WHERE status = 'succeeded' "
                                       "GROUP BY run_id, step_name")
    figures["steps with >1 succeeded attempt row"] = sum(1 for r in succeeded_attempts
                                                         if r.n > 1)
    return Verdict(figures, violations, notes)


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
                    by_run: dict[str, dict[str, Any]], kills: list[Kill],
                    violations: list[str], notes: list[str]) -> None:
    """Every run succeeded, or failed only because a step really was killed 3 times."""
    killed = _kills_by_run(kills)
    for run_id in run_ids:
        run = runs.get(run_id)
        if run is None or run.status not in TERMINAL or run.status == "succeeded":
            continue
        poison = [s for s in by_run[run_id].values() if s.error_type == "PoisonStep"]
        for step in poison:
            really = killed[run_id]
            line = (f"run {run_id} failed: step {step.name} poison with crashes={step.crashes}, "
                    f"deliveries={step.deliveries}, SIGKILLs while the run ran={really}")
            (notes if really >= MAX_CRASHES else violations).append(line)
        if not poison:
            violations.append(f"run {run_id} ended {run.status}: {run.error_type}: "
                              f"{(run.error or '')[:300]} "
                              f"{_describe_runs([run_id], runs, by_run)}")
    for run_id in run_ids:
        for step in by_run.get(run_id, {}).values():
            if (runs.get(run_id) is not None and runs[run_id].status == "succeeded"
                    and step.status != "succeeded"):
                violations.append(f"run {run_id} succeeded but step {step.name} is "
                                  f"{step.status}")


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


def _count_executions(counters: redis.Redis, steps: list[Any], figures: dict[str, Any],
                      kills: list[Kill]) -> list[tuple[str, int, int]]:
    executions: dict[tuple[str, str], int] = {}
    for key in counters.scan_iter(match=f"{EXEC_PREFIX}*", count=1000):
        run_id, step = key.decode()[len(EXEC_PREFIX):].rsplit(":", 1)
        executions[(run_id, step)] = int(counters.get(key) or 0)
    killed = _kills_by_run(kills)
    figures["step executions (Redis INCR), total"] = sum(executions.values())
    figures["executions per step: max"] = max(executions.values(), default=0)
    figures["steps executed more than once"] = sum(1 for n in executions.values() if n > 1)
    figures["re-deliveries (sum deliveries - steps)"] = sum(s.deliveries for s in steps) - len(
        steps)
    figures["crashes recorded (sum steps.crashes)"] = sum(s.crashes for s in steps)
    crashes: Counter[str] = Counter()
    for step in steps:
        crashes[step.run_id] += step.crashes
    spurious = [(run_id, n, killed[run_id]) for run_id, n in crashes.items()
                if n > killed[run_id]]
    figures["runs with more crashes recorded than SIGKILLs that hit them"] = len(spurious)
    figures["  examples"] = [f"{run_id}: crashes={n} kills={k}" for run_id, n, k in spurious[:5]]
    figures["steps executed >1 in runs no SIGKILL hit"] = sum(
        1 for (run_id, _), n in executions.items() if n > 1 and not killed[run_id])
    return spurious


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
