"""Engine workflow measured by ``bench/maps.py``: one map step of no-op elements.

Workers import this module through ``ORCH_IMPORTS=bench.map_workflows``; it binds to the
default orchestrator, so ``ORCH_*`` must be set before it is imported.

With ``BENCH_PUBLISH_LOG=<redis key>`` in the environment, every task message published by
the process (the bench client or a worker's pool process) is logged to that Redis list
(``before_task_publish``: task name, routing key, run id, JSON size of the body, of its
``embed`` part (callbacks, chain, chord body) and of the headers), so the bench can count
what a map publishes. Off unless the variable is set; the bench sets it only for the
10,000-element reference run.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery.signals import before_task_publish

from orchestration import Workflow

QUEUE = "bench.map"
PUBLISH_LOG_ENV = "BENCH_PUBLISH_LOG"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"

bench_map = Workflow("bench_map", queue=QUEUE, inputs=["items"])


@bench_map.task(map="items")
def noop(items: int) -> int:
    """One element: ``items`` is the element here (the map passes them one at a time)."""
    return items


def final_output() -> str:
    """The output name holding the map's list of results."""
    return "noop"


# -- publish log (instrumented runs only) -----------------------------------------------------

_redis: dict[int, Any] = {}  # pid -> client: a client must not cross a fork


def _client() -> Any:
    import redis

    pid = os.getpid()
    client = _redis.get(pid)
    if client is None:
        url = os.environ.get("ORCH_BROKER_URL") or DEFAULT_REDIS
        client = _redis[pid] = redis.Redis.from_url(url)
    return client


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())


@before_task_publish.connect(weak=False)
def _log_publish(sender: str | None = None, body: Any = None, routing_key: str | None = None,
                 headers: dict[str, Any] | None = None, **_: Any) -> None:
    key = os.environ.get(PUBLISH_LOG_ENV)
    if not key:
        return
    protocol2 = isinstance(body, (list, tuple)) and len(body) == 3  # (args, kwargs, embed)
    kwargs = body[1] if protocol2 else {}
    entry = {"task": sender or (headers or {}).get("task"), "queue": routing_key,
             "run": kwargs.get("run_id") if isinstance(kwargs, dict) else None,
             "body": _json_size(body), "embed": _json_size(body[2]) if protocol2 else 0,
             "headers": _json_size(headers or {}), "pid": os.getpid()}
    _client().rpush(key, json.dumps(entry))
