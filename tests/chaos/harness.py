"""The chaos tests' machinery: environments, processes, servers of their own, the killer.

Everything the engine does happens in subprocesses (workers, the submitter, the
``orchestrate`` CLI) started with an explicit ``ORCH_*`` environment, so the test process
never builds the default orchestrator and two scenarios with two brokers can share one
pytest session. The test process only reads: the results DB (plain SQL plus an audit
trigger it installs in its own database), the instrumentation Redis and the CLI output.
What must hold afterwards is in ``verdict.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.chaos.workflows import BUSY_PREFIX
from tests.support.processes import ROOT, child_env, orchestrate
from tests.support.workers import Worker, Workers

MAX_CRASHES = 3  # ORCH_MAX_CRASHES default, which the tests keep


def chaos_env(**orch: str) -> dict[str, str]:
    """This process's environment without any ORCH_* or provider key, plus ``orch``."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("ORCH_") and key not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    return child_env(env, imports=("tests.chaos.workflows",), ORCH_LOG_JSON="true",
                     COLUMNS="200", **orch)


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
    return orchestrate(*args, env=env, check=True, timeout=timeout).stdout


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


def replace_dead(workers: Workers, queues: tuple[str, ...] | None = None,
                 concurrency: int | None = None) -> list[str]:
    """Replace every worker whose main process exited (new node name, same queues and pool).

    What ``restart: unless-stopped`` (docker-compose.yml) or systemd does. ``queues`` and
    ``concurrency`` default to the dead worker's own. Returns how each one ended: its
    label, exit code and last error line.
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
        workers.start(f"{base}-r{next(_generation)}", queues or worker.queues,
                      pool=worker.pool, concurrency=concurrency or worker.concurrency,
                      wait=False)
    return ended
