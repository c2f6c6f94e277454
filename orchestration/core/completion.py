"""Run completion notices: wake a caller waiting for a run when the run ends.

The results DB stays the truth: a notice only says "look now". Whoever moves a run to a
terminal status (the store, after its commit) calls :meth:`Completions.notify`; a waiter
opens a :class:`Watch` *before* its first status read, so a run that ends between that
read and the wait still wakes it.

:class:`LocalCompletions` wakes waiters of this process only: enough when every run ends
in this process (the embedded default's in-process worker). The Redis variant
(``store/completion_redis.py``) carries notices between processes. ``Watch.live`` says
whether a notice is expected at all: when it is False (no shared Redis and a separate
worker, or Redis unreachable) the waiter polls as before.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Protocol

__all__ = ["Completions", "LocalCompletions", "Watch"]


class Watch:
    """One waiter's registration for one run: :meth:`wait` returns once a notice came."""

    def __init__(self, run_id: str, owner: LocalCompletions, *, live: bool) -> None:
        self.run_id = run_id
        self.live = live  # a notice is expected when the run ends
        self._owner = owner
        self._event = threading.Event()

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a notice; True if one came (and re-arm)."""
        woken = self._event.wait(timeout)
        if woken:
            self._event.clear()
        return woken

    def wake(self) -> None:
        """A notice for this run arrived."""
        self._event.set()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._owner.release(self)


class Completions(Protocol):
    """Where run completion notices are sent and waited for."""

    def watch(self, run_id: str) -> Watch:
        """Register a waiter for ``run_id`` (a context manager: leave it when done)."""

    def notify(self, run_id: str, status: str) -> None:
        """Run ``run_id`` became terminal with ``status`` (called after the commit)."""

    def close(self) -> None:
        """Release what the notices hold (a connection, a thread)."""


class LocalCompletions:
    """Notices within this process: a registry of waiters by run id.

    ``complete``: every run this process waits for ends in this process (the embedded
    worker), so a watch is live; otherwise a notice may never come and waiters poll.
    """

    def __init__(self, *, complete: bool = False) -> None:
        self.complete = complete
        self._lock = threading.Lock()
        self._watches: dict[str, set[Watch]] = {}

    def watch(self, run_id: str) -> Watch:
        """Register a waiter for ``run_id``."""
        return self._add(Watch(run_id, self, live=self.complete))

    def _add(self, watch: Watch) -> Watch:
        with self._lock:
            self._watches.setdefault(watch.run_id, set()).add(watch)
        return watch

    def release(self, watch: Watch) -> bool:
        """Forget a waiter; True if it was the last one of its run."""
        with self._lock:
            watches = self._watches.get(watch.run_id)
            if watches is None:
                return False
            watches.discard(watch)
            if watches:
                return False
            del self._watches[watch.run_id]
            return True

    def notify(self, run_id: str, status: str) -> None:
        """Wake this process's waiters of ``run_id``."""
        self.wake(run_id)

    def wake(self, run_id: str) -> None:
        """Wake this process's waiters of ``run_id`` (a notice from here or elsewhere)."""
        with self._lock:
            watches = list(self._watches.get(run_id, ()))
        for watch in watches:
            watch.wake()

    def close(self) -> None:
        """Nothing to release in process."""

    def watching(self) -> list[str]:
        """The run ids with at least one waiter here."""
        with self._lock:
            return list(self._watches)
