"""A worker's heartbeat, and the sweep that recovers steps held by workers that died.

Each worker process instance runs one :class:`Heartbeat` thread: every
``ORCH_HEARTBEAT_INTERVAL`` seconds it renews its row in the results DB, then sweeps
steps still ``running`` under a holder whose beat is older than
``ORCH_WORKER_DEAD_AFTER``. Those steps are released (their crash count goes up) and
their runs re-dispatched at once, so a dead worker's work resumes within about
``dead_after + interval`` seconds instead of waiting for the broker's visibility
timeout or the idle reconciler. A step a live worker holds is never touched.

The thread also says loudly when the results DB cannot be reached, and when it answers
again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta

import structlog

from orchestration.core.clock import utcnow
from orchestration.store.engine import is_unavailable
from orchestration.store.repository import Store
from orchestration.store.workers import Released, WorkerInfo

log = structlog.get_logger("orchestration.worker.heartbeat")
OUTAGE_LOG_EVERY = 30.0  # seconds between repeated "still unreachable" warnings


class Heartbeat:
    """Beats for one worker process instance and sweeps steps of dead ones."""

    def __init__(self, store: Callable[[], Store], worker: WorkerInfo, *, interval: float,
                 dead_after: float, workflows: Callable[[], Iterable[str]],
                 redispatch: Callable[[Released], None],
                 queues: Callable[[], Iterable[str]] | None = None,
                 wake: Callable[[], object] | None = None,
                 batches: Callable[[], object] | None = None,
                 versions: Callable[[], Mapping[str, Sequence[str]]] | None = None,
                 parked: Callable[[Collection[str]], object] | None = None) -> None:
        self._store = store
        self._versions = versions  # the workflow versions it carries, advertised
        self._parked = parked  # sends on or fails steps parked for a version (versions.py)
        self._batches = batches  # flushes overdue or orphaned batches (worker/batching.py)
        self._wake = wake  # wakes max_parallel waiters whose permits lapsed
        self.worker = worker
        self._queues = queues
        self.interval = interval
        self.dead_after = dead_after
        self._workflows = workflows
        self._redispatch = redispatch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down_since: float | None = None
        self._back_since: float | None = None  # when the DB answered again after an outage
        self._last_warning = 0.0

    def start(self) -> None:
        """Beat now (so the row exists before the first claim), then in a daemon thread."""
        self.tick()
        self._thread = threading.Thread(target=self._loop, name="orchestration-heartbeat",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and record a clean shutdown."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)
        try:
            self._store().workers.stopped(self.worker.instance, utcnow())
        except Exception as exc:  # shutting down anyway; the beat will just go stale
            log.warning("could not record the worker's shutdown", error=repr(exc))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def tick(self) -> list[Released]:
        """One beat and one sweep; never raises (a failing DB is logged, not fatal)."""
        try:
            store = self._store()
            now = utcnow()
            if self._queues is not None:  # a worker may start consuming more queues
                self.worker = replace(self.worker, queues=sorted(self._queues()))
            if self._versions is not None:
                self.worker = replace(self.worker, workflows=self._versions())
            store.workers.beat(self.worker, now)
            self._reachable()
            if self._wake is not None:
                self._wake()
            if self._batches is not None:
                self._batches()
            if self._parked is not None:
                self._parked(self.worker.queues)
            if not self._may_sweep():
                return []
            released = store.workers.release_dead(
                now - timedelta(seconds=self.dead_after), self._workflows(), now)
        except Exception as exc:
            self._unreachable(exc)
            return []
        for run in released:
            log.warning("re-dispatching a run whose worker died while holding its steps",
                        run_id=run.run_id, workflow=run.workflow, steps=run.steps)
            try:
                self._redispatch(run)
            except Exception:  # the idle reconciler still covers this run
                log.exception("could not re-dispatch a released run", run_id=run.run_id)
        return released

    def _may_sweep(self) -> bool:
        # Right after an outage every worker's beat is stale, the live ones too: wait one
        # dead-after window, in which each live worker beats again, before judging any.
        back = self._back_since
        return back is None or time.monotonic() - back >= self.dead_after

    def _unreachable(self, exc: Exception) -> None:
        now = time.monotonic()
        if not is_unavailable(exc):
            log.exception("heartbeat failed")
            return
        if self._down_since is None:
            self._down_since = now
        if now - self._last_warning >= OUTAGE_LOG_EVERY:
            self._last_warning = now
            log.error("results database unreachable: steps are handed back to the broker "
                      "until it answers", worker=self.worker.name,
                      down_s=round(now - self._down_since, 1),
                      error=f"{type(exc).__name__}: {exc}".splitlines()[0])

    def _reachable(self) -> None:
        if self._down_since is not None:
            log.warning("results database reachable again", worker=self.worker.name,
                        down_s=round(time.monotonic() - self._down_since, 1))
            self._down_since = None
            self._last_warning = 0.0
            self._back_since = time.monotonic()
