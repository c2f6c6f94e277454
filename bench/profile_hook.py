"""Worker side of ``bench/profile_pack.py``: cProfile of the step tasks, and SQL timings.

Imported by the profiled worker through ``ORCH_IMPORTS`` (after the workflow module)
with ``BENCH_PROFILE_OUT=<path>`` set; without it, importing does nothing.

- **cProfile.** A thread polls the Redis key ``KEY`` (the worker's broker, a bench DB).
  When the driver sets it to ``N``, the next ``N`` step tasks run under one
  ``cProfile.Profile`` and their stats are written to ``<path>.prof``. On a ``-P solo``
  worker with ``ORCH_PACK_CONCURRENCY=1`` every run of a pack executes in the task's
  own thread, so the profile holds the whole step path: claim, call, record.
- **SQL timings.** Every statement any engine of the process sends is timed from
  SQLAlchemy's ``before_cursor_execute`` to ``after_cursor_execute`` (the driver's
  execute, in C, and what waits for it). Counts and seconds per statement (its first
  200 characters) are written to ``<path>.sql.json`` with the profile; counting starts
  with the profile, so warm-up statements are left out.
"""

from __future__ import annotations

import collections
import cProfile
import json
import os
import threading
import time
from typing import Any

OUT_ENV = "BENCH_PROFILE_OUT"
KEY = "bench:profile_tasks"
POLL_S = 0.02

_state: dict[str, Any] = {"profile": None, "left": 0, "armed": 0, "timing": False}
_sql: collections.defaultdict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])


def _watch(broker: str) -> None:
    import redis

    client = redis.Redis.from_url(broker)
    while True:
        raw = client.getdel(KEY)
        if raw is not None:
            _state["armed"] = int(raw)
        time.sleep(POLL_S)


def _install() -> None:
    from celery import signals
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    out = os.environ[OUT_ENV]

    @event.listens_for(Engine, "before_cursor_execute")
    def _before(conn: Any, _cursor: Any, _statement: str, _params: Any, _context: Any,
                _many: bool) -> None:
        conn.info["bench_began"] = time.perf_counter()

    @event.listens_for(Engine, "after_cursor_execute")
    def _after(conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any,
               _many: bool) -> None:
        began = conn.info.pop("bench_began", None)
        if began is not None and _state["timing"]:
            entry = _sql[" ".join(statement.split())[:200]]
            entry[0] += 1
            entry[1] += time.perf_counter() - began

    @signals.worker_ready.connect(weak=False)
    def _ready(**_: Any) -> None:
        threading.Thread(target=_watch, args=(os.environ["ORCH_BROKER_URL"],),
                         name="bench-profile-watch", daemon=True).start()

    @signals.task_prerun.connect(weak=False)
    def _prerun(**_: Any) -> None:
        if _state["profile"] is None and _state["armed"]:
            _state["left"], _state["armed"] = _state["armed"], 0
            _sql.clear()
            _state["timing"] = True
            _state["profile"] = cProfile.Profile()
            _state["profile"].enable()

    @signals.task_postrun.connect(weak=False)
    def _postrun(**_: Any) -> None:
        profile = _state["profile"]
        if profile is None:
            return
        _state["left"] -= 1
        if _state["left"] > 0:
            return
        profile.disable()
        _state["timing"] = False
        _state["profile"] = None
        profile.dump_stats(f"{out}.prof")
        with open(f"{out}.sql.json", "w") as fh:
            json.dump({text: {"count": count, "seconds": seconds}
                       for text, (count, seconds) in _sql.items()}, fh)


if os.environ.get(OUT_ENV):
    _install()
