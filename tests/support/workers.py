"""Real ``celery -A orchestration worker`` processes for the integration tests.

Each worker is a subprocess started from the repository root with the test process's
``ORCH_*`` environment, logging to its own file. ``Workers.start`` returns once the
worker has logged ``<name> ready.`` (the consumer is attached to its queues), or fails
the test with the tail of the worker's log if it exits or does not get ready in time.
Every worker alive is also in :data:`LIVE`, so a failing test can show their logs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import ROOT, child_env

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POOLS = frozenset({"prefork", "threads", "solo"})

#: Workers started and not yet stopped, in start order (read by the failure-report hook).
LIVE: list[Worker] = []


@dataclass
class Worker:
    """One worker subprocess: its node name, queues, pool and log file."""

    label: str
    nodename: str
    queues: tuple[str, ...]
    pool: str
    concurrency: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the worker's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log at {self.log_path}: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    @property
    def alive(self) -> bool:
        """True while the worker process runs."""
        return self.process.poll() is None

    def is_ready(self) -> bool:
        """True once the worker has logged that its consumer is ready."""
        try:
            return f"{self.nodename} ready." in self.log_path.read_text(errors="replace")
        except OSError:
            return False


class Workers:
    """Starts worker subprocesses and stops every one it started."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = child_env(env)
        self.started: list[Worker] = []

    def start(self, label: str, queues: Iterable[str], *, pool: str = "prefork",
              concurrency: int = 2, wait: bool = True, prefix: Sequence[str] = ()) -> Worker:
        """Start ``celery -A orchestration worker -Q <queues> -P <pool> -c <n> -n <label>@host``.

        ``prefix`` goes before the command, e.g. ``ip netns exec <ns>`` (which execs it:
        the process is still the worker's main process).
        """
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}")
        queues = tuple(queues)
        nodename = f"{label}@{socket.gethostname()}"
        log_path = self.log_dir / f"{label}.log"
        command = [
            *prefix, sys.executable, "-m", "celery", "-A", "orchestration", "worker",
            "-Q", ",".join(queues), "-P", pool, "-c", str(concurrency), "-n", nodename,
            "-l", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]
        with open(log_path, "ab") as log:
            # A session of its own, so a stuck worker and its pool children die together.
            process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        worker = Worker(label, nodename, queues, pool, concurrency, process, log_path)
        self.started.append(worker)
        LIVE.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: Worker, timeout: float = READY_TIMEOUT_S) -> None:
        """Block until the worker is ready; fail the test with its log tail otherwise."""
        deadline = time.monotonic() + timeout
        while not worker.is_ready():
            if not worker.alive:
                pytest.fail(f"worker {worker.nodename} exited with code "
                            f"{worker.process.returncode} before it was ready; log tail:\n"
                            f"{worker.log_tail()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"worker {worker.nodename} was not ready after {timeout:g} s; "
                            f"log tail:\n{worker.log_tail()}", pytrace=False)
            time.sleep(0.05)

    def serving(self, queue: str) -> list[str]:
        """Node names of the live workers consuming ``queue``."""
        return [w.nodename for w in self.started if queue in w.queues and w.alive]

    def stop(self, worker: Worker, timeout: float = STOP_TIMEOUT_S) -> None:
        """Warm shutdown (SIGTERM); SIGKILL the worker's process group if it lingers."""
        self.stop_many([worker], timeout)

    def stop_many(self, workers: Iterable[Worker], timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop several workers at once (each takes a second or two to shut down warm)."""
        workers = list(workers)
        for worker in workers:
            if worker.alive:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in workers:
            process = worker.process
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"worker {worker.nodename} ignored SIGTERM for {timeout:g} s; killing it."
                      f"\nlog tail:\n{worker.log_tail()}")
                # Its own process group: the pool children (prefork) go with it.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            if worker in LIVE:
                LIVE.remove(worker)
            if worker in self.started:
                self.started.remove(worker)

    def stop_all(self) -> None:
        """Stop every worker this object started."""
        self.stop_many(list(self.started))
