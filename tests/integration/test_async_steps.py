"""``async def`` steps on real Celery workers (prefork and threads): each worker process
runs them on its own event loop (a prefork child starts its own after the fork), an async
map's elements wait together on it, a failed attempt is retried, and cancelling a run
cancels its coroutine in flight."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestration import RunStatus, StepStatus, Workflow, get_run
from tests.integration.support.helpers import wait_until
from tests.integration.support.workflows import async_steps as flows
from tests.support.workers import Worker, Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

POOLS = {"prefork": (flows.prefork_step, flows.prefork_map, flows.prefork_hang),
         "threads": (flows.threads_step, flows.threads_map, flows.threads_hang)}


@pytest.fixture(scope="module")
def async_workers(workers: Workers, worker_logs: Path) -> Iterator[list[Worker]]:
    env = dict(os.environ, ORCH_IMPORTS="tests.integration.support.workflows.async_steps")
    pool = Workers(worker_logs, env=env)
    try:
        started = [pool.start("it-async-prefork", [flows.PREFORK_QUEUE], pool="prefork",
                              concurrency=2, wait=False),
                   pool.start("it-async-threads", [flows.THREADS_QUEUE], pool="threads",
                              concurrency=2, wait=False)]
        for worker in started:
            pool.wait_ready(worker)
        yield started
    finally:
        pool.stop_all()


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_an_async_step_runs_and_retries_on_a_worker(async_workers: list[Worker],
                                                    pool: str) -> None:
    step: Workflow = POOLS[pool][0]
    result = step.run(x=0, timeout=60)
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs["square"]["x"] == 0
    assert result.outputs["square"]["pid"] != os.getpid()
    assert [a["status"] for a in result.steps["square"].attempt_log] == ["failed", "succeeded"]


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_an_async_map_runs_on_a_worker(async_workers: list[Worker], pool: str) -> None:
    mapped: Workflow = POOLS[pool][1]
    result = mapped.run(x=list(range(flows.MAP_SIZE)), timeout=120)
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert [item["x"] for item in result.outputs["square"]] == [
        x * x for x in range(flows.MAP_SIZE)]
    step = result.steps["square"]
    assert step.attempts == flows.MAP_SIZE + 1  # element 0 failed once


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_cancelling_a_run_cancels_its_coroutine_on_a_worker(
        async_workers: list[Worker], redis_service: redis.Redis, pool: str) -> None:
    hanging: Workflow = POOLS[pool][2]
    handle = hanging.submit()
    key = flows.seen_key(handle.run_id)

    def seen() -> list[str]:
        return [item.decode() for item in redis_service.lrange(key, 0, -1)]

    wait_until(lambda: seen() == ["started"], timeout=30, what="the coroutine started")
    handle.cancel()
    wait_until(lambda: seen() == ["started", "cancelled"], timeout=30,
               what="the coroutine saw CancelledError")
    wait_until(lambda: get_run(handle.run_id).steps["hangs"].status is StepStatus.CANCELLED,
               timeout=30, what="the step recorded cancelled")
    run = get_run(handle.run_id)
    assert run.status is RunStatus.CANCELLED
    assert run.steps["hangs"].attempt_log[0]["status"] == "cancelled"
