"""Workflows of the async-step tests (``tests/integration/test_async_steps.py``).

The test starts one prefork and one threads worker importing only this module
(``ORCH_IMPORTS``); the test process imports it to submit runs. What a coroutine saw
(started, cancelled) is written to Redis, keyed by run id, so the test reads it from
another process.
"""

from __future__ import annotations

import asyncio
import os

import redis

from orchestration import StepContext, Workflow
from tests.support.redis_clients import process_client

PREFORK_QUEUE = "it.async.prefork"
THREADS_QUEUE = "it.async.threads"
MAP_SIZE = 500


def _redis() -> redis.Redis:
    return process_client(os.environ.get("ORCH_REDIS_URL") or os.environ["ORCH_BROKER_URL"])


def seen_key(run_id: str) -> str:
    """The Redis list of what the run's coroutines saw."""
    return f"it:async:{run_id}"


def _saw(run_id: str, what: str) -> None:
    client = _redis()
    client.rpush(seen_key(run_id), what)
    client.expire(seen_key(run_id), 3600)


async def _square(x: int, ctx: StepContext) -> dict[str, int]:
    await asyncio.sleep(0.01)
    if ctx.attempt == 1 and x == 0:
        raise ConnectionError("the first attempt of element 0 fails")
    return {"x": x * x, "pid": os.getpid()}


async def _hangs(ctx: StepContext) -> str:
    _saw(ctx.run_id, "started")
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        _saw(ctx.run_id, "cancelled")
        raise
    return "finished"


def _flows(queue: str) -> tuple[Workflow, Workflow, Workflow]:
    suffix = queue.rsplit(".", 1)[-1]
    single = Workflow(f"it_async_step_{suffix}", inputs=["x"], queue=queue)
    single.task(name="square", retries=1, backoff=0.01)(_square)
    mapped = Workflow(f"it_async_map_{suffix}", inputs=["x"], queue=queue)
    mapped.task(name="square", map="x", chunk_size=250, concurrency=250, retries=1,
                backoff=0.01)(_square)
    hanging = Workflow(f"it_async_hang_{suffix}", queue=queue)
    hanging.task(name="hangs", timeout=30)(_hangs)
    return single, mapped, hanging


prefork_step, prefork_map, prefork_hang = _flows(PREFORK_QUEUE)
threads_step, threads_map, threads_hang = _flows(THREADS_QUEUE)
