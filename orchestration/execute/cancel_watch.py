"""Cancel the in-flight async attempts of runs that were cancelled.

``handle.cancel()`` / ``orchestrate cancel`` only write the results DB: a sync step
already running finishes its attempt. An ``async def`` attempt can do better: while any
are in flight on the worker's loop, a watcher task asks the results DB every
``INTERVAL`` seconds, in one query for all of them, which of their runs are cancelled,
and cancels those attempts' tasks (the coroutine sees ``CancelledError``; the step is
recorded ``cancelled``, as a cancelled run's unstarted steps are). The query runs in a
thread of its own, so a busy loop executor never delays it, and the watcher stops when
nothing is in flight. Tracking an attempt is two dict operations on the loop's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from typing import Protocol

import structlog

log = structlog.get_logger("orchestration.execute.cancel_watch")
INTERVAL = 0.5  # seconds between two checks while async attempts are in flight
_Runs = dict[str, dict["asyncio.Task[object]", None]]  # run id: its attempts' tasks


class Cancellations(Protocol):
    """What the watcher asks the results DB (the Store answers it)."""

    def cancelled_among(self, run_ids: Sequence[str]) -> set[str]:
        """The ids among ``run_ids`` of runs that are cancelled."""


class CancelWatcher:
    """Tracks the loop's in-flight attempts by run, and cancels those of cancelled runs."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # by store: {run id: {task: None}} (a dict keeps the tasks in order, cheaply)
        self._runs: dict[int, tuple[Cancellations, _Runs]] = {}
        self._watching: asyncio.Task[None] | None = None
        self._query = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="orch-cancel-watch")

    def track(self, store: Cancellations, run_id: str, task: asyncio.Task[object]) -> None:
        """Watch ``task`` (an attempt of ``run_id``) until :meth:`untrack`; loop thread only."""
        entry = self._runs.get(id(store))
        if entry is None:
            entry = self._runs[id(store)] = (store, {})
        tasks = entry[1].get(run_id)
        if tasks is None:
            tasks = entry[1][run_id] = {}
        tasks[task] = None
        if self._watching is None:
            self._watching = self._loop.create_task(self._watch())

    def untrack(self, store: Cancellations, run_id: str, task: asyncio.Task[object]) -> None:
        """Stop watching ``task``; loop thread only."""
        entry = self._runs.get(id(store))
        if entry is None:
            return
        tasks = entry[1].get(run_id)
        if tasks is None:
            return
        tasks.pop(task, None)
        if not tasks:
            del entry[1][run_id]
            if not entry[1]:
                del self._runs[id(store)]

    async def _watch(self) -> None:
        try:
            while self._runs:
                await asyncio.sleep(INTERVAL)
                for store, runs in list(self._runs.values()):
                    await self._check(store, runs)
        finally:
            self._watching = None

    async def _check(self, store: Cancellations, runs: _Runs) -> None:
        ids = list(runs)
        if not ids:
            return
        try:
            cancelled = await self._loop.run_in_executor(self._query, store.cancelled_among,
                                                         ids)
        except Exception as exc:  # the results DB down: the next check tries again
            log.warning("could not check for cancelled runs", error=repr(exc))
            return
        for run_id in cancelled:
            tasks = list(runs.get(run_id, ()))
            if tasks:
                log.info("run cancelled: cancelling its in-flight async attempts",
                         run_id=run_id, attempts=len(tasks))
            for task in tasks:
                task.cancel("its run was cancelled")
