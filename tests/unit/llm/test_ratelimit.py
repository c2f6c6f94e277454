"""Shared sliding-window rate limits: requests and tokens per window, in memory and in Redis."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest

from orchestration.errors import RateLimited
from orchestration.llm import ratelimit
from orchestration.llm.ratelimit import RateLimit, RateLimiter
from tests.support.services import delete_keys, unit_redis

SLACK = 0.05  # Redis windows run on the server's clock, instants here on this process's


@pytest.fixture
def scope() -> Iterator[str]:
    """A limit scope of this test only; its Redis windows are deleted afterwards."""
    name = f"test:{uuid.uuid4().hex[:10]}"
    yield name
    delete_keys(f"orchestration:rate:{name}*")


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def new_limiter(request: pytest.FixtureRequest) -> Iterator[Callable[[], RateLimiter]]:
    """Builds limiters on one storage; two built with Redis stand for two workers."""
    if request.param == "memory":
        yield lambda: RateLimiter(None)
        return
    client = unit_redis()
    yield lambda: RateLimiter(client)
    client.close()


@pytest.fixture
def limiter(new_limiter: Callable[[], RateLimiter]) -> RateLimiter:
    return new_limiter()


class Sleeps:
    """The sleeps the limiter asks for (each really slept): whether and how long it waited,
    seen without timing a call (a Redis round trip on a loaded machine takes any time)."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self._lock = threading.Lock()
        self._sleep = time.sleep

    def __call__(self, seconds: float) -> None:
        with self._lock:
            self.asked.append(seconds)
        self._sleep(seconds)

    def take(self) -> list[float]:
        """The sleeps asked for since the last take."""
        with self._lock:
            asked, self.asked = self.asked, []
        return asked


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Sleeps:
    spy = Sleeps()
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(monotonic=time.monotonic, sleep=spy))
    return spy


def max_in_window(instants: list[float], window: float) -> int:
    """The most admissions any half-open window of ``window`` seconds holds."""
    ordered = sorted(instants)
    return max(sum(1 for t in ordered[i:] if t - start < window)
               for i, start in enumerate(ordered))


def test_admits_requests_per_window_then_waits(limiter: RateLimiter, scope: str,
                                               sleeps: Sleeps) -> None:
    limit = RateLimit(requests=3, window=0.3)
    first = time.monotonic()
    for _ in range(3):
        limiter.acquire(scope, limit, deadline=None)
    assert sleeps.take() == []  # admitted at once
    limiter.acquire(scope, limit, deadline=None)
    admitted = time.monotonic()
    # The 4th waited for the window to move past the 1st, never longer than one window.
    asked = sleeps.take()
    assert asked and all(0 < wait <= limit.window for wait in asked), asked
    assert admitted - first >= 0.3 - SLACK


def test_scopes_are_independent(limiter: RateLimiter, scope: str, sleeps: Sleeps) -> None:
    limit = RateLimit(requests=1, window=5)
    limiter.acquire(scope, limit, deadline=None)
    limiter.acquire(f"{scope}:other", limit, deadline=None)
    assert sleeps.take() == []
    with pytest.raises(RateLimited):
        limiter.acquire(scope, limit, deadline=time.monotonic() + 0.1)


def test_concurrent_callers_never_exceed_the_window(limiter: RateLimiter, scope: str,
                                                    sleeps: Sleeps) -> None:
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
    # 6 admissions at 3 per 0.5 s: the 4th comes no sooner than 0.5 s, and the waiting
    # callers never sleep longer than the window before they look again.
    assert elapsed >= 0.5 - SLACK
    asked = sleeps.take()
    assert asked and all(0 < wait <= limit.window for wait in asked), asked


def test_deadline_raises_instead_of_waiting_past_it(limiter: RateLimiter, scope: str,
                                                    sleeps: Sleeps) -> None:
    limit = RateLimit(requests=1, window=5)
    limiter.acquire(scope, limit, deadline=None)
    with pytest.raises(RateLimited, match=rf"rate limit of {scope} \(1 requests per 5 s\)"):
        limiter.acquire(scope, limit, deadline=time.monotonic() + 0.3)
    assert sleeps.take() == []  # it did not sleep until the deadline first


def test_wait_within_the_deadline_is_admitted(limiter: RateLimiter, scope: str,
                                              sleeps: Sleeps) -> None:
    limit = RateLimit(requests=1, window=0.3)
    first = time.monotonic()
    limiter.acquire(scope, limit, deadline=None)
    limiter.acquire(scope, limit, deadline=time.monotonic() + 1.0)
    assert time.monotonic() - first >= 0.3 - SLACK
    asked = sleeps.take()
    assert asked and all(0 < wait <= limit.window for wait in asked), asked


def test_tokens_over_the_limit_make_the_next_call_wait(limiter: RateLimiter, scope: str,
                                                       sleeps: Sleeps) -> None:
    limit = RateLimit(tokens=100, window=0.3)
    limiter.acquire(scope, limit, deadline=None)
    recorded = time.monotonic()
    limiter.record_tokens(scope, limit, 60)
    limiter.acquire(scope, limit, deadline=None)  # 60 of 100: still under
    assert sleeps.take() == []
    limiter.record_tokens(scope, limit, 60)
    with pytest.raises(RateLimited, match=r"100 tokens per 0\.3 s"):
        limiter.acquire(scope, limit, deadline=time.monotonic() + 0.1)
    assert sleeps.take() == []
    limiter.acquire(scope, limit, deadline=None)
    # It waited until the first 60 tokens left the window, and no longer than the window.
    assert time.monotonic() - recorded >= 0.3 - SLACK
    asked = sleeps.take()
    assert asked and all(0 < wait <= limit.window for wait in asked), asked
    limiter.acquire(scope, limit, deadline=None)  # the window moved on
    assert sleeps.take() == []


def test_tokens_are_not_counted_without_a_token_limit(limiter: RateLimiter, scope: str,
                                                      sleeps: Sleeps) -> None:
    requests_only = RateLimit(requests=10, window=5)
    limiter.record_tokens(scope, requests_only, 10_000)
    limiter.acquire(scope, RateLimit(tokens=100, window=5), deadline=None)
    assert sleeps.take() == []


@pytest.mark.redis
def test_two_workers_share_one_window(scope: str) -> None:
    client = unit_redis()
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
