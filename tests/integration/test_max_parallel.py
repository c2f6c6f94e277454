"""max_parallel across worker processes on Redis: the limit holds fleet-wide, permits of a
SIGKILLed worker come back within their lease, and a concurrency key keeps tenants fair.

The steps count themselves in Redis (see support/workflows/limits.py). Every test runs
on queues that only its own workers serve, started with ``ORCH_PERMIT_LEASE=3`` and a
1 s heartbeat so that a dead holder's permits lapse, and are swept, quickly.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from orchestration import RunStatus, default_orchestrator
from orchestration.execute.permits import RedisPermits
from orchestration.store.models import RunRow
from tests.integration.support.helpers import wait_until
from tests.integration.support.workflows.common import _redis
from tests.integration.support.workflows.limits import (
    FAIR_LIMIT,
    FAIR_QUEUE,
    HELD_LIMIT,
    HELD_QUEUE,
    LIMIT_QUEUE,
    RUN_LIMIT,
    fair,
    held,
    limited,
    most_key,
    release_key,
    started_key,
    steps_limited,
)
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

MODULE = "tests.integration.support.workflows.limits"
LEASE_S = 3.0


@pytest.fixture
def limit_workers(extra_workers: Workers) -> Iterator[Workers]:
    """Workers that import the limits workflows, with short leases and heartbeats."""
    extra_workers.env = {**extra_workers.env,
                         "ORCH_IMPORTS": f"{os.environ['ORCH_IMPORTS']},{MODULE}",
                         "ORCH_PERMIT_LEASE": str(LEASE_S), "ORCH_HEARTBEAT_INTERVAL": "1",
                         "ORCH_WORKER_DEAD_AFTER": "4"}
    yield extra_workers


def _most(batch: str) -> int:
    return int(_redis().get(most_key(batch)) or 0)


def test_a_workflow_limit_holds_across_two_worker_processes(limit_workers: Workers) -> None:
    batch = uuid.uuid4().hex
    limit_workers.start("limits-a", [LIMIT_QUEUE], concurrency=3, wait=False)
    limit_workers.start("limits-b", [LIMIT_QUEUE], concurrency=3)
    for worker in limit_workers.started:
        limit_workers.wait_ready(worker)
    handles = limited.submit_many([{"batch": batch, "n": n} for n in range(24)])
    results = [handle.wait(timeout=120) for handle in handles]
    assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 24
    assert [r.outputs["end"] for r in results] == list(range(24))
    # Six worker slots, three permits: the limit was reached, never passed.
    assert _most(batch) == RUN_LIMIT
    # Both processes ran steps: the permits were shared, not counted per process.
    workers = {step.worker for r in results for step in r.steps.values()}
    assert len({w.split("@")[0] for w in workers if w}) == 2, workers


def test_a_step_limit_holds_per_key_across_processes(limit_workers: Workers) -> None:
    batch = uuid.uuid4().hex
    limit_workers.start("limits-c", [LIMIT_QUEUE], concurrency=3, wait=False)
    limit_workers.start("limits-d", [LIMIT_QUEUE], concurrency=3)
    for worker in limit_workers.started:
        limit_workers.wait_ready(worker)
    handles = steps_limited.submit_many([{"batch": batch, "n": n} for n in range(16)])
    assert all(h.wait(timeout=120).status is RunStatus.SUCCEEDED for h in handles)
    assert _most(batch) == 2


def test_permits_of_a_killed_worker_return_within_the_lease(limit_workers: Workers) -> None:
    batch = uuid.uuid4().hex
    client = _redis()
    victim = limit_workers.start("limits-victim", [HELD_QUEUE], concurrency=4)
    handles = held.submit_many([{"batch": batch, "n": n} for n in range(6)])
    # Two runs hold the two permits (steps blocked), four wait for a permit in the DB.
    wait_until(lambda: client.llen(started_key(batch)) == HELD_LIMIT, timeout=60,
               what="the victim holding both permits")
    holding = [run.decode() for run in client.lrange(started_key(batch), 0, -1)]
    store = default_orchestrator().store
    waiting = [h.run_id for h in handles if h.run_id not in holding]
    assert all(store.run_status(run) is RunStatus.PENDING for run in waiting)
    assert all(store.permit_waits.of_run(run) for run in waiting)
    survivor = limit_workers.start("limits-survivor", [HELD_QUEUE], concurrency=4)
    os.killpg(victim.process.pid, signal.SIGKILL)
    victim.process.wait(timeout=30)
    killed_at = time.monotonic()
    # The dead worker's permits lapse (no more renewals) and waiting runs get them.
    permits = RedisPermits(client, LEASE_S)
    wait_until(lambda: not set(holding) & set(permits.holders("wf:it_limited_held")),
               timeout=LEASE_S + 30, what="the killed worker's permits to lapse")
    lapsed_after = time.monotonic() - killed_at
    wait_until(lambda: client.llen(started_key(batch)) >= HELD_LIMIT + 1, timeout=30,
               what="a waiting run to start on the survivor")
    client.set(release_key(batch), 1, ex=3600)
    results = [h.wait(timeout=120) for h in handles]
    assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 6, [r.error for r in results]
    assert [r.outputs["hold"] for r in results] == list(range(6))
    assert survivor.alive
    print(f"\npermits of the killed worker lapsed {lapsed_after:.1f} s after the kill "
          f"(lease {LEASE_S:g} s)")


def _finished(tenant_runs: list[str]) -> int:
    store = default_orchestrator().store
    with store.reader.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(RunRow).where(
            RunRow.id.in_(tenant_runs), RunRow.status == RunStatus.SUCCEEDED.value))
            .scalar_one())


def test_a_small_tenant_is_not_starved_by_a_big_one(limit_workers: Workers) -> None:
    """10 runs of tenant b behind 2,000 of tenant a finish long before a's backlog."""
    limit_workers.start("limits-fair", [FAIR_QUEUE], concurrency=4)
    tag = uuid.uuid4().hex[:8]
    started = time.monotonic()
    alone = fair.submit_many([{"tenant": f"b-alone-{tag}", "n": n} for n in range(10)])
    assert all(h.wait(timeout=60).status is RunStatus.SUCCEEDED for h in alone)
    alone_s = time.monotonic() - started

    big = fair.submit_many([{"tenant": f"a-{tag}", "n": n} for n in range(2000)])
    started = time.monotonic()
    small = fair.submit_many([{"tenant": f"b-{tag}", "n": n} for n in range(10)])
    try:
        assert all(h.wait(timeout=120).status is RunStatus.SUCCEEDED for h in small)
        behind_s = time.monotonic() - started
        big_done = _finished([h.run_id for h in big])
        # Tenant b did not wait for tenant a's backlog: most of it is still waiting.
        assert big_done < 1000, big_done
        assert _most_in_flight_ok(big)
        print(f"\nfairness: 10 runs behind 2,000 of another tenant took {behind_s:.2f} s, "
              f"alone {alone_s:.2f} s (ratio {behind_s / alone_s:.2f}); the big tenant had "
              f"finished {big_done} of 2,000 (limit {FAIR_LIMIT} per tenant)")
    finally:
        store = default_orchestrator().store
        for handle in big:
            store.cancel_run(handle.run_id, "cancelled: the fairness test is over")


def _most_in_flight_ok(big: list) -> bool:  # type: ignore[type-arg]
    """The big tenant never ran more than its limit: its waiters are all still pending."""
    store = default_orchestrator().store
    with store.reader.connect() as conn:
        running = conn.execute(select(func.count()).select_from(RunRow).where(
            RunRow.id.in_([h.run_id for h in big]),
            RunRow.status == RunStatus.RUNNING.value)).scalar_one()
    return int(running) <= FAIR_LIMIT
