"""Rate limits shared by every worker: requests and tokens per window, per model or provider.

Celery's ``rate_limit`` is per worker, so a fleet can exceed a provider's quota. Here a
sliding-window log lives in Redis (a sorted set per limit, timed by the Redis server's
clock so workers' clocks never disagree): a request is admitted only while fewer than
``requests`` were admitted in the last ``window`` seconds, exactly. Tokens are known
only after a call, so the token limit admits a call while the tokens *recorded* in the
window are under the limit (it can overshoot by the calls in flight). Without Redis the
same logic runs per process.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass

import redis
import structlog

from orchestration.core import keys
from orchestration.errors import RateLimited

log = structlog.get_logger("orchestration.llm.ratelimit")

_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""

_TOKENS_WAIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  used = used + tonumber(string.match(member, ':(%d+)$'))
end
if used < tonumber(ARGV[2]) then return 0 end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""

_TOKENS_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 0
"""


@dataclass(frozen=True)
class RateLimit:
    """At most ``requests`` calls and ``tokens`` tokens per ``window`` seconds (None: no limit)."""

    requests: int | None = None
    tokens: int | None = None
    window: float = 60.0


class RateLimiter:
    """Admits calls under shared limits; waits (bounded by a deadline) when over."""

    def __init__(self, client: redis.Redis | None) -> None:
        self._client = client
        self._local: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()
        if client is not None:
            self._admit = client.register_script(_ADMIT)
            self._tokens_wait = client.register_script(_TOKENS_WAIT)
            self._tokens_record = client.register_script(_TOKENS_RECORD)

    def acquire(self, scope: str, limit: RateLimit, *, deadline: float | None) -> float:
        """Wait until a call under ``scope`` is admitted; returns seconds waited.

        Raises :class:`RateLimited` when admission would come after ``deadline``
        (a ``time.monotonic()`` instant).
        """
        started = time.monotonic()
        while True:
            wait = self._wait_needed(scope, limit)
            if wait <= 0:
                return time.monotonic() - started
            now = time.monotonic()
            if deadline is not None and now + wait > deadline:
                raise RateLimited(f"rate limit of {scope} ({_describe(limit)}) would delay this "
                                  f"call {wait:.2f} s, past the step's deadline")
            time.sleep(min(wait, 0.25))

    def record_tokens(self, scope: str, limit: RateLimit, tokens: int) -> None:
        """Count the tokens a finished call used against the token limit."""
        if limit.tokens is None or tokens <= 0:
            return
        window_ms = int(limit.window * 1000)
        if self._client is not None:
            try:
                self._tokens_record(keys=[keys.rate_window(scope, "tokens")],
                                    args=[window_ms, f"{uuid.uuid4().hex}:{tokens}"])
                return
            except redis.RedisError as exc:
                _unshared(scope, exc)
        with self._lock:
            self._local.setdefault(f"{scope}:tokens", deque()).append((time.monotonic(), tokens))

    def _wait_needed(self, scope: str, limit: RateLimit) -> float:
        if limit.tokens is not None:
            wait = self._tokens_wait_needed(scope, limit)
            if wait > 0:
                return wait
        if limit.requests is None:
            return 0.0
        if self._client is not None:
            try:
                waited_ms = self._admit(
                    keys=[keys.rate_window(scope, "requests")],
                    args=[int(limit.window * 1000), limit.requests, uuid.uuid4().hex])
                return float(waited_ms) / 1000
            except redis.RedisError as exc:
                _unshared(scope, exc)
        return self._local_admit(f"{scope}:requests", limit.window, limit.requests, weight=1)

    def _tokens_wait_needed(self, scope: str, limit: RateLimit) -> float:
        assert limit.tokens is not None
        if self._client is not None:
            try:
                waited_ms = self._tokens_wait(keys=[keys.rate_window(scope, "tokens")],
                                              args=[int(limit.window * 1000), limit.tokens])
                return float(waited_ms) / 1000
            except redis.RedisError as exc:
                _unshared(scope, exc)
        with self._lock:
            log = self._trim(f"{scope}:tokens", limit.window)
            if sum(weight for _, weight in log) < limit.tokens:
                return 0.0
            return max(0.001, log[0][0] + limit.window - time.monotonic())

    def _local_admit(self, key: str, window: float, allowed: int, *, weight: int) -> float:
        with self._lock:
            log = self._trim(key, window)
            if len(log) < allowed:
                log.append((time.monotonic(), weight))
                return 0.0
            return max(0.001, log[0][0] + window - time.monotonic())

    def _trim(self, key: str, window: float) -> deque[tuple[float, int]]:
        log = self._local.setdefault(key, deque())
        horizon = time.monotonic() - window
        while log and log[0][0] <= horizon:
            log.popleft()
        return log


def _unshared(scope: str, exc: redis.RedisError) -> None:
    """Redis failed (down, or no answer within ORCH_REDIS_TIMEOUT): this call is counted by
    this process alone rather than failed."""
    log.warning("rate limit not shared: Redis failed; counted in this process", scope=scope,
                error=type(exc).__name__)


def _describe(limit: RateLimit) -> str:
    parts = []
    if limit.requests is not None:
        parts.append(f"{limit.requests} requests")
    if limit.tokens is not None:
        parts.append(f"{limit.tokens} tokens")
    return f"{' and '.join(parts)} per {limit.window:g} s"
