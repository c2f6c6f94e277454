"""Breakers, rate limits and latencies go on without Redis when a call to it fails.

A Redis that is down, or hung past ``ORCH_REDIS_TIMEOUT``, makes each call raise a
``RedisError`` (a socket timeout is one): the step that made it must go on, counted by
its own process. The client here points at a port nothing listens on, so every call
fails at once, as a timed-out one does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from orchestration.define.adaptive import Latencies
from orchestration.errors import RateLimited
from orchestration.llm.breakers import CLOSED, _Probe, _RedisStorage
from orchestration.llm.ratelimit import RateLimit, RateLimiter


@pytest.fixture
def failing() -> Iterator[redis.Redis]:
    # Built on a pool as the orchestrator's client is (no client-side retries).
    client = redis.Redis(connection_pool=redis.ConnectionPool(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, socket_timeout=0.5))
    with pytest.raises(redis.RedisError):
        client.ping()
    yield client
    client.close()


def test_rate_limits_count_in_this_process(failing: redis.Redis) -> None:
    limiter = RateLimiter(failing)
    limit = RateLimit(requests=2, tokens=100, window=60)
    assert limiter.acquire("s", limit, deadline=None) >= 0
    limiter.record_tokens("s", limit, 10)
    assert limiter.acquire("s", limit, deadline=None) >= 0
    with pytest.raises(RateLimited):  # the third request within the window, counted here
        limiter.acquire("s", limit, deadline=time.monotonic())


def test_latencies_are_kept_in_this_process(failing: redis.Redis) -> None:
    latencies = Latencies(failing)
    latencies.observe("k", 12.5)
    latencies.observe("k", 7.0)
    assert latencies.recent("k") == [12.5, 7.0]


def test_a_breaker_probe_falls_back_to_this_process(failing: redis.Redis) -> None:
    probe = _Probe("m", failing, ttl=60)
    token = probe.acquire()
    assert token == _Probe.LOCAL
    assert probe.acquire() is None  # one prober at a time, here
    probe.release(token)
    again = probe.acquire()
    assert again == _Probe.LOCAL
    probe.release(again)


def test_a_local_probe_token_is_released_from_another_thread(failing: redis.Redis) -> None:
    # An awaited call enters on one executor thread and leaves on another.
    probe = _Probe("m", failing, ttl=60)
    token = probe.acquire()
    assert token is not None
    worker = threading.Thread(target=probe.release, args=(token,))
    worker.start()
    worker.join()
    assert probe.acquire() == _Probe.LOCAL


def test_breaker_storage_built_and_read_without_redis(failing: redis.Redis) -> None:
    storage = _RedisStorage(CLOSED, failing, namespace="m")
    assert storage.opened_at is None
    assert storage.reading() == (CLOSED, 0)
