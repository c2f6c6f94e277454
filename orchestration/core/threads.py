"""Kept threads for I/O-bound fan-out inside one delivery (map elements, ``complete_many``).

A map chunk used to start a pool of ``concurrency`` threads for its elements and stop it
at the end: every chunk paid for starting its threads, and every element's first model call
opened a new HTTP connection (the providers keep one keep-alive connection per thread).
:func:`run_bounded` runs the elements on threads the process keeps (one pool per name and
per process: a forked child starts its own), at most ``width`` at a time for one caller.

The threads are daemon threads, as the ones they replace were: an abandoned attempt still
blocked in a call never holds up the process's exit (a ``ThreadPoolExecutor``'s threads
are joined at exit).

Each element runs in a context of its own: an empty :mod:`contextvars` context, as on a new
thread, or a copy of the caller's (``inherit=True``), so a context variable one element sets
(a log binding, say) is never seen by the next one the thread runs. Thread-locals are kept
on purpose: they are what holds a thread's connection.
"""

from __future__ import annotations

import contextvars
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Threads each named pool may grow to; threads start only when needed and then stay.
POOL_THREADS = 1024


class KeptThreads:
    """Daemon threads that take work from one queue; one starts when none is idle, up to
    ``size``, and stays (the idle count works as ``ThreadPoolExecutor``'s)."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = \
            queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._started = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], R]) -> Future[R]:
        """Run ``fn()`` on one of the threads; its future."""
        future: Future[R] = Future()
        self._work.put((future, fn))
        if not self._idle.acquire(blocking=False):  # no idle thread will take it
            with self._lock:
                if self._started < self.size:
                    self._started += 1
                    threading.Thread(target=self._serve, daemon=True,
                                     name=f"{self.name}_{self._started - 1}").start()
        return future

    @property
    def threads(self) -> int:
        """Threads started so far."""
        return self._started

    def _serve(self) -> None:
        while True:
            future, fn = self._work.get()
            if future.set_running_or_notify_cancel():
                try:
                    result = fn()
                except BaseException as exc:  # the caller's to raise
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, fn
            self._idle.release()


_pools: dict[str, tuple[int, KeptThreads]] = {}
_lock = threading.Lock()


def kept_pool(name: str, size: int = POOL_THREADS) -> KeptThreads:
    """This process's pool called ``name`` (started again in a forked child)."""
    with _lock:
        held = _pools.get(name)
        if held is None or held[0] != os.getpid():
            held = (os.getpid(), KeptThreads(name, size))
            _pools[name] = held
        return held[1]


def run_bounded(fn: Callable[[T], R], items: Sequence[T], width: int, *,
                pool: str = "fan-out", inherit: bool = False,
                here: bool = False) -> list[R]:
    """``[fn(item) for item in items]``, at most ``width`` at a time on kept threads.

    Every item runs even when one raises; then the first exception in the items' order
    is raised, as ``ThreadPoolExecutor.map`` inside a ``with`` block would. ``inherit``:
    each item runs in a copy of the caller's context (else in an empty one).

    A pool's threads must not wait for the same pool when it may be saturated: give
    nested fan-outs their own name, or pass ``here=True``, which makes the calling
    thread one of the ``width`` runners, so the items are taken whatever the pool does.
    """
    if width < 1:
        raise ValueError(f"run_bounded: width must be at least 1, got {width}")
    count = len(items)
    results: list[R | None] = [None] * count
    errors: list[BaseException | None] = [None] * count
    contexts = [contextvars.copy_context() if inherit else contextvars.Context()
                for _ in range(count)]
    taken = iter(range(count))
    taking = threading.Lock()

    def runner() -> None:
        while True:
            with taking:
                index = next(taken, None)
            if index is None:
                return
            try:
                results[index] = contexts[index].run(fn, items[index])
            except BaseException as exc:
                errors[index] = exc

    threads = kept_pool(pool)
    helpers = [threads.submit(runner) for _ in range(min(width, count) - (1 if here else 0))]
    if here:
        runner()
        # Every item is taken: a helper still queued (the pool busy) has nothing to do.
        helpers = [helper for helper in helpers if not helper.cancel()]
    wait(helpers)
    for error in errors:
        if error is not None:
            raise error
    return results  # type: ignore[return-value]  # every slot filled when nothing raised
