"""Engine workflows measured by ``bench/limits.py``: 3-step linear chains of no-op steps,
with and without ``max_parallel`` permits.

Workers import this module through ``ORCH_IMPORTS=bench.limits_workflows``; it binds to
the default orchestrator, so ``ORCH_*`` must be set before it is imported.

| workflow | limits | messages per run |
|---|---|---|
| ``bench_lim_base`` | none | 1 (the compiler fuses a -> b -> c) |
| ``bench_lim_split`` | none; ``b`` on a second queue | 3 (like-for-like for ``step``) |
| ``bench_lim_wf`` | workflow ``max_parallel=10_000`` | 1 (a workflow limit keeps fusion) |
| ``bench_lim_step`` | workflow and ``b`` ``max_parallel=10_000`` | 3 (``b`` is not fused) |
| ``bench_lim_bind`` | workflow ``max_parallel=2`` (binds: runs park and are woken) | 1 |

With ``BENCH_LIMITS_STMT_DIR=<dir>`` in the environment (the bench sets it for workers
only), every SQL statement a process sends through SQLAlchemy is counted
(``before_cursor_execute`` on every Engine; ``BEGIN`` included, commits are not
statements), in total and those naming ``permit_waits``. A daemon thread per process
writes the counts to ``<dir>/<pid>.json`` every ``STMT_WRITE_EVERY`` seconds, so the hot
path only adds to two integers.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from orchestration import Workflow

QUEUE = "bench.limits"
SIDE_QUEUE = "bench.limits.side"  # bench_lim_split's middle step: breaks fusion, no limit
LARGE = 10_000  # a max_parallel that never binds here
BINDING = 2  # a max_parallel that binds (the worker runs -c 2)
STMT_DIR_ENV = "BENCH_LIMITS_STMT_DIR"
STMT_WRITE_EVERY = 0.2


def _chain(name: str, *, b_queue: str | None = None, b_limit: int | None = None,
           **options: Any) -> Workflow:
    wf = Workflow(name, queue=QUEUE, **options)

    @wf.task
    def a(x: int) -> int:
        return x

    b_options: dict[str, Any] = {}
    if b_queue is not None:
        b_options["queue"] = b_queue
    if b_limit is not None:
        b_options["max_parallel"] = b_limit

    def b(a: int) -> int:
        return a

    if b_options:
        wf.task(**b_options)(b)
    else:
        wf.task(b)

    @wf.task
    def c(b: int) -> int:
        return b

    return wf


WORKFLOWS = {
    "base": _chain("bench_lim_base"),
    "split": _chain("bench_lim_split", b_queue=SIDE_QUEUE),
    "wf": _chain("bench_lim_wf", max_parallel=LARGE),
    "step": _chain("bench_lim_step", max_parallel=LARGE, b_limit=LARGE),
    "bind": _chain("bench_lim_bind", max_parallel=BINDING),
}


def final_output() -> str:
    """The output name holding a run's final value (its input ``x``)."""
    return "c"


# -- statement counts (workers of the bench only) ---------------------------------------------

_counts = {"total": 0, "permit_waits": 0}
_writer: dict[str, Any] = {"pid": 0}


def _write_loop(directory: str, pid: int) -> None:
    path = os.path.join(directory, f"{pid}.json")
    while True:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as out:
            json.dump({**_counts, "pid": pid, "at": time.time()}, out)
        os.replace(tmp, path)
        time.sleep(STMT_WRITE_EVERY)


def _start_writer() -> None:
    directory = os.environ.get(STMT_DIR_ENV)
    pid = os.getpid()
    if not directory or _writer["pid"] == pid:
        return
    _writer["pid"] = pid
    threading.Thread(target=_write_loop, args=(directory, pid), daemon=True,
                     name="bench-stmt-writer").start()


def _after_fork() -> None:  # a pool child counts its own statements, from zero
    _counts["total"] = _counts["permit_waits"] = 0
    _writer["pid"] = 0
    _start_writer()


def _count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
    _counts["total"] += 1
    if "permit_waits" in statement:
        _counts["permit_waits"] += 1


if os.environ.get(STMT_DIR_ENV):
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "before_cursor_execute", _count)
    os.register_at_fork(after_in_child=_after_fork)
    _start_writer()
