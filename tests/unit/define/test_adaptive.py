"""Adaptive timeouts: the policy's arithmetic, the latency store, and a step that learns."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestration import RunStatus, StepStatus, Workflow
from orchestration.define.adaptive import AdaptiveTimeout, Latencies, adaptive
from orchestration.testing import embedded_orchestrator
from tests.support.services import delete_keys, unit_redis

# -- the policy --------------------------------------------------------------------------


def test_below_min_samples_the_ceiling_applies() -> None:
    policy = AdaptiveTimeout(factor=1.5, floor=0.5, ceiling=9.0, min_samples=5)
    assert policy.compute([]) == 9.0
    assert policy.compute([100.0] * 4) == 9.0
    assert policy.compute([100.0] * 5) == 0.5  # 5 samples: 1.5 x 0.1 s, raised to the floor


def test_factor_times_p99() -> None:
    policy = AdaptiveTimeout(factor=2.0, floor=0.1, ceiling=10.0, min_samples=20)
    latencies = [10.0 * n for n in range(1, 101)]  # 10 ms .. 1000 ms
    # p99 by nearest rank of 100 values is the 99th smallest: 990 ms.
    assert policy.compute(latencies) == pytest.approx(1.98)
    assert policy.compute(list(reversed(latencies))) == pytest.approx(1.98)


def test_other_percentile() -> None:
    policy = AdaptiveTimeout(factor=1.0, floor=0.01, ceiling=10.0, percentile=50.0,
                             min_samples=3)
    assert policy.compute([100.0, 200.0, 300.0, 4000.0]) == pytest.approx(0.2)


@pytest.mark.parametrize(("latency_ms", "expected"), [
    (10.0, 1.0),          # 15 ms: the floor
    (2000.0, 3.0),        # 3 s: inside the bounds
    (100_000.0, 60.0),    # 150 s: the ceiling
])
def test_clamped_to_floor_and_ceiling(latency_ms: float, expected: float) -> None:
    policy = AdaptiveTimeout(factor=1.5, floor=1.0, ceiling=60.0, min_samples=20)
    assert policy.compute([latency_ms] * 20) == pytest.approx(expected)


def test_adaptive_builds_the_policy() -> None:
    assert adaptive(2.0, 0.5, 10.0, min_samples=3, window=50) == AdaptiveTimeout(
        factor=2.0, floor=0.5, ceiling=10.0, percentile=99.0, window=50, min_samples=3)
    assert adaptive() == AdaptiveTimeout()


# -- the latency store, per process and in Redis -------------------------------------------


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def client(request: pytest.FixtureRequest) -> Iterator[redis.Redis | None]:
    if request.param == "memory":
        yield None
        return
    connection = unit_redis()
    yield connection
    connection.close()


@pytest.fixture
def key() -> Iterator[str]:
    name = f"test.step-{uuid.uuid4().hex[:10]}"
    yield name
    delete_keys(f"orchestration:latency:{name}")


def reader_of(client: redis.Redis | None, writer: Latencies) -> Latencies:
    """Who reads what ``writer`` observed: with Redis another process (a fresh instance)."""
    return Latencies(client) if client is not None else writer


def test_observe_then_recent(client: redis.Redis | None, key: str) -> None:
    latencies = Latencies(client)
    assert latencies.recent(f"{key}-unknown") == []
    for value in (1.5, 2.25, 3.0, 4.125, 5.0):
        latencies.observe(key, value, window=3)
    reader = reader_of(client, latencies)
    assert sorted(reader.recent(key)) == [3.0, 4.125, 5.0]  # the latest 3 only
    assert sorted(reader_of(client, latencies).recent(key, window=2)) == [4.125, 5.0]


def test_timeout_from_recent_latencies(client: redis.Redis | None, key: str) -> None:
    latencies = Latencies(client)
    policy = AdaptiveTimeout(factor=2.0, floor=0.1, ceiling=30.0, min_samples=3)
    latencies.observe(key, 400.0)
    latencies.observe(key, 500.0)
    assert reader_of(client, latencies).timeout(key, policy) == 30.0
    latencies.observe(key, 1000.0)
    assert reader_of(client, latencies).timeout(key, policy) == pytest.approx(2.0)


@pytest.mark.redis
def test_redis_latencies_are_shared_by_processes(key: str) -> None:
    connection = unit_redis()
    try:
        writer, reader = Latencies(connection), Latencies(connection)
        for value in range(1, 6):
            writer.observe(key, float(value))
        assert sorted(reader.recent(key)) == [1.0, 2.0, 3.0, 4.0, 5.0]
        assert Latencies(None).recent(key) == []  # without Redis: this process only
    finally:
        connection.close()


# -- a step with timeout=adaptive(...) --------------------------------------------------


def test_step_records_latencies_and_its_timeout_follows_them(tmp_path: Path) -> None:
    with embedded_orchestrator(tmp_path, redis_url=None) as orch:
        wf = Workflow("adaptive_step", app=orch)

        policy = adaptive(factor=1.0, floor=0.15, ceiling=5.0, min_samples=3)
        release = threading.Event()

        @wf.task(timeout=policy)
        def measured(delay: float) -> float:
            if delay < 0:  # endless: until the test lets it go, after its run
                release.wait(60)
            else:
                time.sleep(delay)
            return delay

        latencies = orch.resilience.latencies
        # Fewer than min_samples: the ceiling (5 s) applies, so 0.3 s passes.
        assert wf.run(delay=0.3, timeout=10).status is RunStatus.SUCCEEDED
        assert wf.run(delay=0.01, timeout=10).status is RunStatus.SUCCEEDED
        assert wf.run(delay=0.01, timeout=10).status is RunStatus.SUCCEEDED
        recent = latencies.recent("adaptive_step.measured")
        assert len(recent) == 3
        assert max(recent) >= 300 and sorted(recent)[0] >= 10
        # Now 1.0 x p99 (~0.3 s): an endless attempt times out by that, not the 5 s ceiling.
        learnt = policy.compute(recent)
        assert learnt == pytest.approx(max(recent) / 1000) and learnt < policy.ceiling
        try:
            slow = wf.run(delay=-1.0, timeout=30)
        finally:
            release.set()
        step = slow.steps["measured"]
        assert (slow.status, step.status) == (RunStatus.FAILED, StepStatus.FAILED)
        assert step.error_type == "orchestration.errors.StepTimeout"
        assert f"timeout of {learnt:g} s" in (step.error or ""), step.error
        assert len(latencies.recent("adaptive_step.measured")) == 3  # failures not learnt
