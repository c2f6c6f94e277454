"""Workflows of the async row of ``bench/perf.py``: 10,000 ``async def`` steps waiting
1 s at once on one worker process, and raw Celery's way to wait the same.

Workers import this module through ``ORCH_IMPORTS=bench.async_workflows`` (the engine)
or ``-A bench.async_workflows:raw_sleep`` (raw Celery); ``ORCH_*`` must be set first.

- ``perf_async_wait``: one run, ``map="xs"`` over ``async def wait(x): await
  asyncio.sleep(1); return x``, chunks of ``ASYNC_CHUNK`` elements with as much
  ``concurrency``: on a ``-P threads -c ASYNC_POOL`` worker every element of every chunk
  waits at once, as tasks on the process's one event loop.
  ``BENCH_ASYNC_CHUNK`` changes the chunk size (and the pool: one thread per chunk) for
  experiments: 8 chunks of 1,250 measured as 4 of 2,500 within the noise.
- ``raw_sleep``: the task ``time.sleep(1)``, one message per element; raw Celery holds a
  pool thread per waiting task.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from orchestration import Workflow

ASYNC_QUEUE = "bench.perf.async"
RAW_SLEEP_QUEUE = "bench.perf.raw_sleep"
RAW_SLEEP_TASK = "bench.perf.raw_sleep.wait"
ASYNC_ELEMENTS = 10_000
ASYNC_CHUNK = int(os.environ.get("BENCH_ASYNC_CHUNK", 2_500))  # 4 chunks: one per pool thread
ASYNC_POOL = -(-ASYNC_ELEMENTS // ASYNC_CHUNK)  # -P threads -c 4: every chunk at once
WAIT_S = 1.0

async_wait = Workflow("perf_async_wait", inputs=["xs"], queue=ASYNC_QUEUE)


@async_wait.task(map="xs", chunk_size=ASYNC_CHUNK, concurrency=ASYNC_CHUNK)
async def wait(xs: int) -> int:
    """Wait one second without a thread; answer the element."""
    await asyncio.sleep(WAIT_S)
    return xs


def _raw_app() -> Any:
    from celery import Celery

    from config.celery import celery_config
    from orchestration.core.settings import Settings

    broker = os.environ["ORCH_BROKER_URL"]
    settings = Settings(broker_url=broker, imports=[],
                        result_backend=os.environ.get("ORCH_RESULT_BACKEND") or None)
    config = celery_config(settings)  # the engine's settings: json, acks_late, prefetch 1, ...
    config["imports"] = []
    config["task_default_queue"] = RAW_SLEEP_QUEUE
    app = Celery("raw_perf_sleep", set_as_current=False)
    app.conf.update(config)
    return app


raw_sleep = _raw_app()


@raw_sleep.task(name=RAW_SLEEP_TASK, queue=RAW_SLEEP_QUEUE, acks_late=True)
def raw_wait(x: int) -> int:
    """One second's wait, as a plain Celery task does it: a pool thread held throughout."""
    time.sleep(WAIT_S)
    return x
