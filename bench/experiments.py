"""Opt-in what-if patches, to measure a proposed engine change without editing the engine.

Nothing here runs unless asked: ``bench/overhead.py --experiment pooled-sqlite`` (or
``BENCH_EXPERIMENT=pooled-sqlite`` in a process that imports this module before the
orchestrator opens its store); several are joined with ``+``. Results measured with a
patch are labelled as such; they are evidence for a suggestion, not the engine's
performance.

``pooled-sqlite``: the store's SQLite engines keep their connections in a small pool
(PRAGMAs run once per connection) instead of ``NullPool``, which opens a connection, runs
four PRAGMAs and closes it for every transaction; closing the last connection to a WAL
database also checkpoints the WAL into the main file (with an fsync) and deletes it.
Same listeners otherwise (WAL, synchronous=NORMAL, busy timeout, BEGIN IMMEDIATE for the
writer). Pooled connections must not cross a fork: the engine already disposes its
store in ``worker_process_init``, and this patch also disposes right after migrating.

``notify-wait``: ``Store.finish_run`` (the one place a run becomes terminal) publishes
the run id on the Redis channel ``orch.run.<id>`` after its commit, and
``RunHandle.wait`` subscribes to that channel before its first status read and blocks on
it (re-reading the status at least every 0.25 s, so a missed message costs at most that),
instead of polling with a growing interval. Uses the Redis broker (ORCH_BROKER_URL), or
the bench's Redis DB 14 with the embedded default.

``lean-results``: the compiled canvas marks every step that is not a member of a group
(chord header) ``ignore_result=True``, so workers do not store in the result backend the
envelopes nobody reads (a chain passes each return value on in the next message; run
state lives in the results DB; only chord headers need stored results). Client side
only: the option travels in each message.
"""

from __future__ import annotations

import os
from typing import Any

EXPERIMENTS = ("pooled-sqlite", "notify-wait", "lean-results", "pooled-sqlite+notify-wait",
               "pooled-sqlite+notify-wait+lean-results")
CHANNEL = "orch.run.{}"
BENCH_REDIS = "redis://127.0.0.1:6379/14"  # the embedded default has no Redis of its own
_redis: dict[int, Any] = {}  # pid -> client (a client must not cross a fork)
_applied: set[str] = set()


def _pooled_sqlite_engine(url: str, *, immediate: bool) -> Any:
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import QueuePool

    engine = create_engine(url, poolclass=QueuePool, pool_size=8, max_overflow=8,
                           connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def apply_pooled_sqlite() -> None:
    from orchestration.store import engine as engine_module
    from orchestration.store import repository

    original_create = engine_module.create_engines
    original_ensure = repository.Store.ensure_schema

    def create_engines(url: str) -> tuple[Any, Any]:
        if not engine_module.is_sqlite(url):
            return original_create(url)
        original_create(url)[0].dispose()  # keeps its side effects (creates the directory)
        return (_pooled_sqlite_engine(url, immediate=True),
                _pooled_sqlite_engine(url, immediate=False))

    def ensure_schema(self: Any) -> None:
        checked = self._schema_checked
        original_ensure(self)
        if not checked:  # a worker's parent migrates before forking: fork with no open conns
            self.dispose()

    repository.create_engines = create_engines  # type: ignore[assignment]
    repository.Store.ensure_schema = ensure_schema  # type: ignore[method-assign]


def _redis_client() -> Any:
    import redis

    client = _redis.get(os.getpid())
    if client is None:
        url = os.environ.get("ORCH_BROKER_URL", "")
        client = redis.Redis.from_url(url if url.startswith("redis") else BENCH_REDIS)
        _redis[os.getpid()] = client
    return client


def apply_notify_wait() -> None:
    import time

    from orchestration.core.results import RunHandle
    from orchestration.errors import WaitTimeout
    from orchestration.store import repository

    original_finish = repository.Store.finish_run

    def finish_run(self: Any, run_id: str, *args: Any, **kwargs: Any) -> bool:
        changed = bool(original_finish(self, run_id, *args, **kwargs))
        if changed:
            _redis_client().publish(CHANNEL.format(run_id), "1")
        return changed

    def wait(self: Any, timeout: float | None = 60.0, *, poll: float = 0.01) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = _redis_client().pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(CHANNEL.format(self.run_id))
        try:
            while True:
                if self._store.run_status(self.run_id).is_terminal:
                    return self._store.get_run(self.run_id)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeout(f"run {self.run_id} not finished after {timeout} s")
                pubsub.get_message(timeout=min(0.25, left if left is not None else 0.25))
        finally:
            pubsub.close()

    repository.Store.finish_run = finish_run  # type: ignore[method-assign]
    RunHandle.wait = wait  # type: ignore[method-assign]


def _lean(signature: Any) -> Any:
    from celery.canvas import _chain, chord, group

    if isinstance(signature, group):
        return signature  # chord header members: their results are the chord's input
    if isinstance(signature, chord):
        signature.body = _lean(signature.body)
        return signature
    if isinstance(signature, _chain):
        signature.tasks = tuple(_lean(task) for task in signature.tasks)
        return signature
    return signature.set(ignore_result=True)


def apply_lean_results() -> None:
    from orchestration.define import workflow
    original_build = workflow.build_canvas

    def build_canvas(*args: Any, **kwargs: Any) -> Any:
        return _lean(original_build(*args, **kwargs))

    workflow.build_canvas = build_canvas  # type: ignore[assignment]


APPLY = {"pooled-sqlite": apply_pooled_sqlite, "notify-wait": apply_notify_wait,
         "lean-results": apply_lean_results}


def apply(name: str | None = None) -> str | None:
    """Apply the experiment(s) named by ``name`` or ``BENCH_EXPERIMENT``; returns the name."""
    name = name or os.environ.get("BENCH_EXPERIMENT") or None
    if name is None:
        return None
    parts = name.split("+")
    unknown = [part for part in parts if part not in APPLY]
    if unknown:
        raise ValueError(f"unknown experiment {unknown[0]!r}; known: {', '.join(APPLY)}")
    for part in parts:
        if part not in _applied:
            APPLY[part]()
            _applied.add(part)
    return name


if __name__ in os.environ.get("ORCH_IMPORTS", ""):
    apply()  # a worker importing this module through ORCH_IMPORTS: apply BENCH_EXPERIMENT
