"""Adaptive timeouts: a step's or model's timeout from its recent p99 latency.

``task(timeout=adaptive(factor=1.5, floor=2, ceiling=60))`` sets each attempt's timeout
to ``factor`` times the p99 of the last ``window`` successful latencies of that step
(kept in Redis, so every worker learns from every other), clamped to
``[floor, ceiling]``; until ``min_samples`` latencies are known, ``ceiling`` applies.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import redis
import structlog

from orchestration.core import keys
from orchestration.core.stats import percentile

_CACHE_SECONDS = 1.0  # re-read shared latencies at most once a second per key


@dataclass(frozen=True)
class AdaptiveTimeout:
    """Timeout = clamp(factor * p-th percentile of recent latencies, floor, ceiling)."""

    factor: float = 1.5
    floor: float = 1.0
    ceiling: float = 120.0
    percentile: float = 99.0
    window: int = 200
    min_samples: int = 20

    def compute(self, latencies_ms: list[float]) -> float:
        """The timeout in seconds for these recent latencies."""
        if len(latencies_ms) < self.min_samples:
            return self.ceiling
        p = percentile(latencies_ms, self.percentile) or 0.0
        return min(self.ceiling, max(self.floor, self.factor * p / 1000))


def adaptive(factor: float = 1.5, floor: float = 1.0, ceiling: float = 120.0, *,
             percentile: float = 99.0, window: int = 200,
             min_samples: int = 20) -> AdaptiveTimeout:
    """An adaptive timeout policy for ``task(timeout=...)`` or a catalogue model."""
    return AdaptiveTimeout(factor, floor, ceiling, percentile, window, min_samples)


class Latencies:
    """Recent latencies per key (step task name or model), shared through Redis if given."""

    def __init__(self, client: redis.Redis | None) -> None:
        self._client = client
        self._local: dict[str, deque[float]] = {}
        self._cache: dict[str, tuple[float, list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, key: str, latency_ms: float, window: int = 200) -> None:
        """Remember one successful latency."""
        if self._client is not None:
            name = keys.latencies(key)
            pipe = self._client.pipeline(transaction=False)
            pipe.lpush(name, f"{latency_ms:.3f}")
            pipe.ltrim(name, 0, window - 1)
            try:
                pipe.execute()
                return
            except redis.RedisError as exc:  # a step that succeeded never fails for this
                _unshared(key, exc)
        with self._lock:
            self._local.setdefault(key, deque(maxlen=window)).append(latency_ms)

    def recent(self, key: str, window: int = 200) -> list[float]:
        """The latest latencies (ms) of ``key``, at most ``window`` of them."""
        if self._client is None:
            with self._lock:
                return list(self._local.get(key, ()))[-window:]
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < _CACHE_SECONDS:
            return cached[1]
        try:
            raw = self._client.lrange(keys.latencies(key), 0, window - 1)
        except redis.RedisError as exc:  # the last shared reading, else this process's
            _unshared(key, exc)
            if cached is not None:
                return cached[1]
            with self._lock:
                return list(self._local.get(key, ()))[-window:]
        values = [float(v) for v in raw]
        self._cache[key] = (now, values)
        return values

    def timeout(self, key: str, policy: AdaptiveTimeout) -> float:
        """The adaptive timeout of ``key`` now, in seconds."""
        return policy.compute(self.recent(key, policy.window))


def _unshared(key: str, exc: redis.RedisError) -> None:
    """Redis failed (down, or no answer within ORCH_REDIS_TIMEOUT): latencies of this
    process stand in for the shared ones."""
    structlog.get_logger("orchestration.define.adaptive").warning(
        "latencies not shared: Redis failed", key=key, error=type(exc).__name__)
