"""Counts every SQL statement and transaction a process sends through SQLAlchemy (bench only).

Imported by the bench's workers through ``ORCH_IMPORTS`` (``bench/scaling.py`` puts it
first) and by the bench process itself. With ``BENCH_SQL_COUNT_DIR=<dir>`` in the
environment it installs, on every ``Engine``:

- ``before_cursor_execute``: one statement (``BEGIN`` sent as SQL included), by verb
  (``select``, ``insert``, ``update``, ``delete``, ``begin``, ``other``);
- ``commit`` / ``rollback`` (``ConnectionEvents``): transactions that ended either way
  through a ``Connection`` (not the pool's reset-on-return, which is a rollback PostgreSQL
  counts as ``xact_rollback`` but SQLAlchemy does not emit as a connection event);
- ``autocommits``: statements run on an ``AUTOCOMMIT`` connection (each its own
  transaction, which PostgreSQL counts in ``xact_commit`` with no ``commit`` event);
- ``pings``: the pool's pre-ping of a connection at checkout (the store's PostgreSQL
  engine has ``pool_pre_ping``): ``SELECT 1`` in autocommit, sent by the dialect's
  ``do_ping`` outside ``before_cursor_execute``, so counted by wrapping ``do_ping``: a
  round trip, and a transaction PostgreSQL counts in ``xact_commit``.

A daemon thread writes the counts to ``<dir>/<pid>.json`` every ``WRITE_EVERY`` seconds
(the hot path only adds to integers), and once more when the process or a prefork child
shuts down, so a stopped worker's last statements are not lost. A prefork child counts
its own statements from zero (``os.register_at_fork``).
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from typing import Any

DIR_ENV = "BENCH_SQL_COUNT_DIR"
WRITE_EVERY = 0.2
VERBS = ("select", "insert", "update", "delete", "begin")

_counts: dict[str, int] = {}
_state: dict[str, Any] = {"pid": 0, "installed": False}


def reset() -> None:
    _counts.clear()
    _counts.update({"statements": 0, "commits": 0, "rollbacks": 0, "pings": 0, "autocommits": 0,
                    **{f"verb_{verb}": 0 for verb in (*VERBS, "other")}})


def counts() -> dict[str, int]:
    """This process's counts so far (a copy)."""
    return dict(_counts)


def verb(statement: str) -> str:
    """The statement's leading keyword, one of ``VERBS`` or ``other`` (``WITH`` is ``other``)."""
    head = statement.lstrip().split(None, 1)
    word = head[0].lower() if head else ""
    return word if word in VERBS else "other"


def _on_statement(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
    _counts["statements"] += 1
    if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        _counts["autocommits"] += 1  # its own transaction: no commit event, one xact_commit
    _counts[f"verb_{verb(statement)}"] += 1


def _on_commit(_conn: Any) -> None:
    _counts["commits"] += 1


def _on_rollback(_conn: Any) -> None:
    _counts["rollbacks"] += 1


def _count_pings(cls: Any) -> None:
    original = cls.__dict__["do_ping"]

    def do_ping(self: Any, dbapi_connection: Any) -> bool:
        _counts["pings"] += 1
        return bool(original(self, dbapi_connection))

    cls.do_ping = do_ping


def write(directory: str | None = None) -> None:
    """Write this process's counts to ``<dir>/<pid>.json`` (atomically)."""
    directory = directory or os.environ.get(DIR_ENV)
    if not directory:
        return
    pid = os.getpid()
    path = os.path.join(directory, f"{pid}.json")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:
        json.dump({**_counts, "pid": pid, "at": time.time()}, out)
    os.replace(tmp, path)


def _write_loop(directory: str) -> None:
    while True:
        write(directory)
        time.sleep(WRITE_EVERY)


def _start_writer() -> None:
    directory = os.environ.get(DIR_ENV)
    pid = os.getpid()
    if not directory or _state["pid"] == pid:
        return
    _state["pid"] = pid
    threading.Thread(target=_write_loop, args=(directory,), daemon=True,
                     name="bench-sql-writer").start()


def _after_fork() -> None:
    reset()
    _state["pid"] = 0
    _start_writer()


def install() -> None:
    """Listen on every Engine (once per process tree) and start the writer if configured."""
    if _state["installed"]:
        return
    from sqlalchemy import event
    from sqlalchemy.dialects.postgresql._psycopg_common import _PGDialect_common_psycopg
    from sqlalchemy.engine import Engine
    from sqlalchemy.engine.default import DefaultDialect

    _state["installed"] = True
    reset()
    event.listen(Engine, "before_cursor_execute", _on_statement)
    event.listen(Engine, "commit", _on_commit)
    event.listen(Engine, "rollback", _on_rollback)
    _count_pings(DefaultDialect)
    _count_pings(_PGDialect_common_psycopg)
    os.register_at_fork(after_in_child=_after_fork)
    atexit.register(write)
    try:
        from celery import signals

        signals.worker_process_shutdown.connect(lambda **_: write(), weak=False)
        signals.worker_shutdown.connect(lambda **_: write(), weak=False)
    except ImportError:  # pragma: no cover - celery is a dependency
        pass
    _start_writer()


reset()
if os.environ.get(DIR_ENV):
    install()
