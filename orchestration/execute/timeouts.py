"""Per-attempt timeouts that hold under every worker pool.

Celery's ``time_limit`` only works under prefork (it kills the child process), and
does nothing under the threads pool. Here the attempt runs on another thread and the
caller waits on an event with the timeout; on expiry the attempt fails with
:class:`StepTimeout` and the abandoned thread is sent an asynchronous exception so it
stops at its next Python bytecode (a thread blocked inside C code stops when that call
returns; pass ``ctx.remaining()`` to blocking calls so they return in time).

The attempt threads are kept by the process (:mod:`orchestration.core.threads`), as the
worker's own threads are: a thread started per attempt would open a new connection to
the model provider for every attempt (providers keep one per thread) and leave it open.
An abandoned thread goes back to the pool once it has unwound.
"""

from __future__ import annotations

import contextvars
import ctypes
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from orchestration.core.threads import kept_pool
from orchestration.errors import StepTimeout

#: Attempt threads the process may keep; an abandoned attempt blocked in C code holds one.
ATTEMPT_THREADS = 4096

_abandoned: set[Future[None]] = set()
_abandoned_lock = threading.Lock()


class _Abandoned(BaseException):
    """Raised inside a timed-out attempt's thread to unwind it."""


def call_with_timeout(fn: Callable[..., Any], kwargs: dict[str, Any],
                      timeout: float | None) -> Any:
    """Call ``fn(**kwargs)``; raise StepTimeout if it takes longer than ``timeout`` seconds."""
    if timeout is None:
        return fn(**kwargs)
    done = threading.Event()
    box: dict[str, Any] = {}
    context = contextvars.copy_context()
    lock = threading.Lock()
    started = threading.Event()
    thread: threading.Thread | None = None

    def target() -> None:
        # The outer handler catches an interrupt delivered while this thread is already
        # past the function (it lands at the next bytecode, wherever that is): no interrupt
        # is sent once ``finished`` is set, so none reaches the pool's own loop.
        nonlocal thread
        thread = threading.current_thread()
        started.set()
        try:
            try:
                box["value"] = context.run(fn, **kwargs)
            except _Abandoned:
                return
            except BaseException as exc:  # handed back to the caller's thread
                box["error"] = exc
            finally:
                with lock:
                    box["finished"] = True
                done.set()
        except _Abandoned:
            pass

    future = kept_pool("attempt", ATTEMPT_THREADS).submit(target)
    if not done.wait(timeout):
        if future.cancel():  # every attempt thread busy: it never started
            raise StepTimeout(f"attempt exceeded its timeout of {timeout:g} s (it never "
                              f"started: all {ATTEMPT_THREADS} attempt threads were busy)")
        started.wait()  # running: the thread to interrupt is known at once
        with lock:
            if not box.get("finished") and thread is not None:
                _interrupt(thread)
        if not box.get("finished"):
            with _abandoned_lock:
                _abandoned.add(future)
            future.add_done_callback(_unwound)
            raise StepTimeout(f"attempt exceeded its timeout of {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def abandoned() -> list[Future[None]]:
    """Attempts that timed out and whose threads have not unwound yet (e.g. to wait for)."""
    with _abandoned_lock:
        return [future for future in _abandoned if not future.done()]


def _unwound(future: Future[None]) -> None:
    with _abandoned_lock:
        _abandoned.discard(future)


def _interrupt(thread: threading.Thread) -> None:
    if thread.ident is None:
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(_Abandoned)
    )
