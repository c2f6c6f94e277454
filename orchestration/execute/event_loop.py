"""The worker process's event loop, where ``async def`` steps run.

One asyncio loop per worker process, in a daemon thread, started on first use and
started again in a forked child (a prefork pool's children inherit the parent's memory
but not its threads: the loop is known by the pid that started it). An async step's
attempt runs as a task on it while the pool thread that delivered the message waits for
the result: a threads pool of ``-c 4`` can hold any number of async steps waiting at once
(a map chunk's elements are tasks too, see execute/maps.py).

The loop's default executor has ``ORCH_ASYNC_THREADS`` threads (64 unless set): what an
async step hands to a thread runs there, at most that many at once per worker process.
``ctx.llm.acomplete`` makes its HTTP call on the loop itself and sends only what waits on
Redis or the results DB to a thread (see llm/async_calls.py).
A blocking call made directly in a coroutine (``ctx.llm.complete``, ``time.sleep``)
blocks the loop and every async step of the process with it.

The loop is uvloop's (libuv, in C) unless ``ORCH_EVENT_LOOP=asyncio`` or uvloop cannot be
imported (it has no Windows build): on asyncio's pure-Python loop, the loop's own work per
task (scheduling, the timer heap, callbacks) was about a quarter of an async map
element's CPU.

The loop also runs the :class:`~orchestration.execute.cancel_watch.CancelWatcher`, which
cancels the attempts of runs cancelled while they were in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import structlog

from orchestration.errors import ConfigurationError
from orchestration.execute.cancel_watch import CancelWatcher

log = structlog.get_logger("orchestration.execute.event_loop")

T = TypeVar("T")
HOLD_HEAP_FROM = 1_000  # map elements in flight on the loop: keep the heap out of GC passes
FREEZE_EVERY = 256  # ... freezing the new objects every this many elements started
EVENT_LOOPS = ("uvloop", "asyncio")  # ORCH_EVENT_LOOP

__all__ = ["EVENT_LOOPS", "WorkerLoop", "new_loop", "run_on_loop", "stop_worker_loop",
           "worker_loop"]


def new_loop(kind: str = "uvloop") -> asyncio.AbstractEventLoop:
    """A new event loop of ``kind`` (:data:`EVENT_LOOPS`); asyncio's where uvloop is absent."""
    if kind not in EVENT_LOOPS:
        raise ConfigurationError(f"unknown event loop {kind!r}: choose one of {EVENT_LOOPS}")
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.info("uvloop not installed; async steps run on asyncio's own loop")
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


class WorkerLoop:
    """An event loop running in a daemon thread of this process, and its cancel watcher."""

    def __init__(self, threads: int, kind: str = "uvloop") -> None:
        self.pid = os.getpid()
        self.threads = threads
        self.loop = new_loop(kind)
        self.loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="orch-async"))
        self.watcher = CancelWatcher(self.loop)
        self._elements = self._started = 0  # map elements in flight; started, ever
        self._holding = False  # the heap is frozen out of GC passes
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,),
                                       name="orch-event-loop", daemon=True)
        self.thread.start()
        started.wait()

    def elements_waiting(self, count: int) -> None:
        """``count`` map elements start on the loop (loop thread only).

        Thousands of elements waiting at once are thousands of young objects surviving
        each collection: CPython then runs full collections over the whole heap again
        and again (measured: 10,000 waiting elements spent ~3 s in them). From
        ``HOLD_HEAP_FROM`` elements in flight (all chunks together) until none is, the
        heap is frozen out of the cyclic GC's passes (``gc.freeze``), and so is what
        was allocated since, every ``FREEZE_EVERY`` elements started (O(1) each).
        Objects that die meanwhile are still freed by reference counting; cyclic
        garbage among the frozen waits for the release.
        """
        self._elements += count
        if not self._holding and self._elements >= HOLD_HEAP_FROM:
            self._holding = True
            gc.freeze()

    def element_started(self) -> None:
        """One element began (loop thread only): freeze the new objects now and then."""
        self._started += 1
        if self._holding and self._started % FREEZE_EVERY == 0:
            gc.freeze()

    def elements_done(self, count: int) -> None:
        """``count`` map elements ended (loop thread only); none left: the GC has the heap
        back."""
        self._elements -= count
        if self._holding and self._elements <= 0:
            self._holding = False
            gc.unfreeze()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop after what it is running now, and wait for its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        try:
            self.loop.run_forever()
        finally:  # stopped (stop()): what is left is cancelled, then the loop closed
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    def submit(self, make: Callable[[], Coroutine[Any, Any, T]],
               context: contextvars.Context | None = None) -> concurrent.futures.Future[T]:
        """Start ``make()`` as a task on the loop (in ``context``: by default a copy of
        the caller's, so structlog's bound fields follow); its result as a future."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        ctx = context if context is not None else contextvars.copy_context()

        def start() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                task = self.loop.create_task(make(), context=ctx)
            except BaseException as exc:  # e.g. make() itself failed
                future.set_exception(exc)
                return
            task.add_done_callback(lambda done: _settle(future, done))

        self.loop.call_soon_threadsafe(start)
        return future


def _settle(future: concurrent.futures.Future[T], task: asyncio.Task[T]) -> None:
    if task.cancelled():
        future.set_exception(concurrent.futures.CancelledError())
        return
    error = task.exception()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(task.result())


_lock = threading.Lock()
_lock_pid = os.getpid()
_current: WorkerLoop | None = None


def worker_loop(threads: int = 64, kind: str = "uvloop") -> WorkerLoop:
    """This process's loop, started now if it is not running (or was a parent's); its
    ``threads`` and ``kind`` are those of the call that started it."""
    global _current, _lock, _lock_pid
    current = _current
    pid = os.getpid()
    if current is not None and current.pid == pid:
        return current
    if _lock_pid != pid:  # forked: the parent's lock may have been held at the fork
        _lock, _lock_pid = threading.Lock(), pid
    with _lock:
        if _current is None or _current.pid != pid:
            _current = WorkerLoop(threads, kind)
        return _current


def stop_worker_loop() -> None:
    """Stop this process's loop if it runs (the next async step starts a new one)."""
    global _current
    with _lock:
        current, _current = _current, None
    if current is not None and current.pid == os.getpid():
        current.stop()


def run_on_loop(make: Callable[[], Coroutine[Any, Any, T]], threads: int = 64,
                kind: str = "uvloop") -> T:
    """Run ``make()`` on this process's loop; the calling thread waits for its result.

    Never call it from the loop's own thread (it would wait for itself).
    """
    loop = worker_loop(threads, kind)
    if threading.current_thread() is loop.thread:
        raise ConfigurationError("run_on_loop called on the event loop's own thread: await "
                                 "the coroutine instead")
    return loop.submit(make).result()
