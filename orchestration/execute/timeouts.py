"""Per-attempt timeouts that hold under every worker pool.

Celery's ``time_limit`` only works under prefork (it kills the child process), and
does nothing under the threads pool. Here the attempt runs in a fresh daemon thread
and the caller waits on an event with the timeout; on expiry the attempt fails with
:class:`StepTimeout` and the abandoned thread is sent an asynchronous exception so it
stops at its next Python bytecode (a thread blocked inside C code stops when that call
returns; pass ``ctx.remaining()`` to blocking calls so they return in time).
"""

from __future__ import annotations

import contextvars
import ctypes
import threading
from collections.abc import Callable
from typing import Any

from orchestration.errors import StepTimeout


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

    def target() -> None:
        # The outer handler catches an interrupt delivered while this thread is already
        # past the function (it lands at the next bytecode, wherever that is).
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

    thread = threading.Thread(target=target, name=f"attempt-{getattr(fn, '__name__', 'step')}",
                              daemon=True)
    thread.start()
    if not done.wait(timeout):
        with lock:
            if not box.get("finished"):
                _interrupt(thread)
        if not box.get("finished"):
            raise StepTimeout(f"attempt exceeded its timeout of {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _interrupt(thread: threading.Thread) -> None:
    if thread.ident is None:
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(_Abandoned)
    )
