"""Shared sliding-window rate limits: requests and tokens per window, in memory and in Redis."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from orchestration.ratelimit import RateLimit, RateLimited, RateLimiter

REDIS_URL = "redis://127.0.0.1:6379/13"
SLACK = 0.05  # admission instants are taken after acquire() returns, a little late


def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {REDIS_URL} is required in CI: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is not reachable: {exc}")
    return client


@pytest.fixture
def scope() -> Iterator[str]:
    """A limit scope of this test only; its Redis windows are deleted afterwards."""
    name = f"test:{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        for key in client.scan_iter(f"orchestration:rate:{name}*"):
            client.delete(key)
    except redis.RedisError:
        pass
    finally:
        client.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def new_limiter(request: pytest.FixtureRequest) -> Iterator[Callable[[], RateLimiter]]:
    """Builds limiters on one storage; two built with Redis stand for two workers."""
    if request.param == "memory":
        yield lambda: RateLimiter(None)
        return
    client = redis_client()
    yield lambda: RateLimiter(client)
    client.close()


@pytest.fixture
def limiter(new_limiter: Callable[[], RateLimiter]) -> RateLimiter:
    return new_limiter()


def max_in_window(instants: list[float], window: float) -> int:
    """The most admissions any half-open window of ``window`` seconds holds."""
    ordered = sorted(instants)
    return max(sum(1 for t in ordered[i:] if t - start < window)
               for i, start in enumerate(ordered))


def test_admits_requests_per_window_then_waits(limiter: RateLimiter, scope: str) -> None:
    limit = RateLimit(requests=3, window=0.3)
    first = time.monotonic()
    waits = [limiter.acquire(scope, limit, deadline=None) for _ in range(3)]
    assert all(wait < 0.05 for wait in waits)
    waited = limiter.acquire(scope, limit, deadline=None)
    admitted = time.monotonic()
    assert admitted - first >= 0.3 - SLACK
    assert 0.2 <= waited < 0.6


def test_scopes_are_independent(limiter: RateLimiter, scope: str) -> None:
    limit = RateLimit(requests=1, window=5)
    limiter.acquire(scope, limit, deadline=None)
    assert limiter.acquire(f"{scope}:other", limit, deadline=None) < 0.05
    with pytest.raises(RateLimited):
        limiter.acquire(scope, limit, deadline=time.monotonic() + 0.1)


def test_concurrent_callers_never_exceed_the_window(limiter: RateLimiter, scope: str) -> None:
    limit = RateLimit(requests=3, window=0.5)
    admitted: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def caller() -> None:
        barrier.wait()
        limiter.acquire(scope, limit, deadline=time.monotonic() + 5)
        with lock:
            admitted.append(time.monotonic())

    started = time.monotonic()
    threads = [threading.Thread(target=caller) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    elapsed = time.monotonic() - started
    assert len(admitted) == 6
    assert max_in_window(admitted, 0.5 - SLACK) <= 3, sorted(t - started for t in admitted)
    # 6 admissions at 3 per 0.5 s: the 4th comes no sooner than 0.5 s, and not much later.
    assert 0.5 - SLACK <= elapsed < 1.0


def test_deadline_raises_instead_of_waiting_past_it(limiter: RateLimiter, scope: str) -> None:
    limit = RateLimit(requests=1, window=5)
    limiter.acquire(scope, limit, deadline=None)
    started = time.monotonic()
    with pytest.raises(RateLimited, match=rf"rate limit of {scope} \(1 requests per 5 s\)"):
        limiter.acquire(scope, limit, deadline=started + 0.3)
    assert time.monotonic() - started < 0.1  # it did not sleep until the deadline first


def test_wait_within_the_deadline_is_admitted(limiter: RateLimiter, scope: str) -> None:
    limit = RateLimit(requests=1, window=0.3)
    limiter.acquire(scope, limit, deadline=None)
    waited = limiter.acquire(scope, limit, deadline=time.monotonic() + 1.0)
    assert 0.2 <= waited < 0.6


def test_tokens_over_the_limit_make_the_next_call_wait(limiter: RateLimiter, scope: str) -> None:
    limit = RateLimit(tokens=100, window=0.3)
    assert limiter.acquire(scope, limit, deadline=None) < 0.05
    limiter.record_tokens(scope, limit, 60)
    assert limiter.acquire(scope, limit, deadline=None) < 0.05  # 60 of 100: still under
    limiter.record_tokens(scope, limit, 60)
    with pytest.raises(RateLimited, match=r"100 tokens per 0\.3 s"):
        limiter.acquire(scope, limit, deadline=time.monotonic() + 0.1)
    waited = limiter.acquire(scope, limit, deadline=None)
    assert 0.1 <= waited < 0.5
    assert limiter.acquire(scope, limit, deadline=None) < 0.05  # the window moved on


def test_tokens_are_not_counted_without_a_token_limit(limiter: RateLimiter, scope: str) -> None:
    requests_only = RateLimit(requests=10, window=5)
    limiter.record_tokens(scope, requests_only, 10_000)
    assert limiter.acquire(scope, RateLimit(tokens=100, window=5), deadline=None) < 0.05


@pytest.mark.redis
def test_two_workers_share_one_window(scope: str) -> None:
    client = redis_client()
    try:
        first, second = RateLimiter(client), RateLimiter(client)
        limit = RateLimit(requests=2, window=5)
        first.acquire(scope, limit, deadline=None)
        second.acquire(scope, limit, deadline=None)
        with pytest.raises(RateLimited):
            first.acquire(scope, limit, deadline=time.monotonic() + 0.2)
        tokens = RateLimit(tokens=10, window=5)
        first.record_tokens(scope, tokens, 11)
        with pytest.raises(RateLimited):
            second.acquire(scope, tokens, deadline=time.monotonic() + 0.2)
    finally:
        client.close()
