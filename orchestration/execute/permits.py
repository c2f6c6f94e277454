"""Fleet-wide permits for ``max_parallel``: leases that expire when their holder dies.

A limit's permits live in one Redis sorted set per scope (``orch:permits:<scope>``):
members are holders (a run id, or a run's step), scores the lease's expiry on the Redis
server's clock, so workers' clocks never disagree. Taking a permit drops expired leases
first, then admits the holder while fewer than ``limit`` hold one; taking it again
renews it (a run's steps re-take its permit as they start). While a step runs, this
process renews the leases it holds every third of the lease, so only a dead holder's
permits lapse: a SIGKILLed worker frees them within ``ORCH_PERMIT_LEASE`` seconds.

Without a shared Redis (the embedded default: one process) the same logic runs in
memory. A scope is ``wf:<workflow>`` or ``step:<workflow>.<step>``, followed by
``:<key value>`` when a ``concurrency_key`` partitions the limit.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, Protocol

import redis
import structlog

from orchestration.core.envelope import dumps

log = structlog.get_logger("orchestration.execute.permits")
PREFIX: Final = "orch:permits:"
MAX_KEY_VALUE: Final = 64  # characters of a key value kept readable in a scope; longer: hashed

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or
   redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], lease)
  return 1
end
return 0
"""

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + lease, ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], lease)
  return 1
end
return 0
"""

_FREE = """
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return tonumber(ARGV[1]) - redis.call('ZCARD', KEYS[1])
"""
WAITING_HINT_S: Final = 60  # seconds a scope is known to have waiters after the last sign


def scope(kind: str, name: str, key_value: Any = None, *, keyed: bool = False) -> str:
    """The scope of a limit: ``wf:<workflow>`` / ``step:<wf>.<step>`` [``:<key value>``]."""
    base = f"{kind}:{name}"
    if not keyed:
        return base
    value = key_value if isinstance(key_value, str) else dumps(key_value)
    if len(value) > MAX_KEY_VALUE:
        value = "sha1-" + hashlib.sha1(value.encode(), usedforsecurity=False).hexdigest()
    return f"{base}:{value}"


class Permits(Protocol):
    """Where permits are kept; every method is atomic per scope."""

    lease: float

    def take(self, scope: str, holder: str, limit: int) -> bool:
        """Take (or renew) ``holder``'s permit; False when ``limit`` others hold one."""

    def renew(self, scope: str, holder: str) -> bool:
        """Extend a held permit's lease; False when it had lapsed (or was released)."""

    def release(self, scope: str, holder: str) -> None:
        """Give the permit back (nothing when not held)."""

    def free(self, scope: str, limit: int, *, if_waiting: bool = False) -> int:
        """How many permits of ``scope`` are free now (expired leases dropped).

        With ``if_waiting``: 0 unless :meth:`waiting` marked the scope in the last
        ``WAITING_HINT_S`` seconds (a release then costs no results-DB read).
        """

    def waiting(self, scope: str) -> None:
        """Mark ``scope`` as having waiters (parked, or seen by a waker)."""

    def holders(self, scope: str) -> list[str]:
        """Who holds a live permit of ``scope`` now."""


class RedisPermits:
    """Permits shared by every worker on every host (see the module docstring)."""

    def __init__(self, client: redis.Redis, lease: float) -> None:
        self.client, self.lease = client, lease
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(_RENEW)
        self._free = client.register_script(_FREE)

    def _ms(self) -> int:
        return max(1, int(self.lease * 1000))

    def take(self, scope: str, holder: str, limit: int) -> bool:
        return bool(self._take(keys=[PREFIX + scope], args=[holder, limit, self._ms()]))

    def renew(self, scope: str, holder: str) -> bool:
        return bool(self._renew(keys=[PREFIX + scope], args=[holder, self._ms()]))

    def release(self, scope: str, holder: str) -> None:
        self.client.zrem(PREFIX + scope, holder)

    def free(self, scope: str, limit: int, *, if_waiting: bool = False) -> int:
        return int(self._free(keys=[PREFIX + scope, PREFIX + scope + ":waiting"],
                              args=[limit, "1" if if_waiting else "0"]))

    def waiting(self, scope: str) -> None:
        self.client.set(PREFIX + scope + ":waiting", 1, ex=WAITING_HINT_S)

    def holders(self, scope: str) -> list[str]:
        now_s, now_us = self.client.time()
        now = now_s * 1000 + now_us // 1000
        members = self.client.zrangebyscore(PREFIX + scope, now, "+inf")
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


class LocalPermits:
    """The same permits in this process's memory (the embedded default)."""

    def __init__(self, lease: float) -> None:
        self.lease = lease
        self._lock = threading.Lock()
        self._held: dict[str, dict[str, float]] = {}
        self._waiting: dict[str, float] = {}

    def _live(self, scope: str) -> dict[str, float]:
        now = time.monotonic()
        held = self._held.setdefault(scope, {})
        for holder in [h for h, until in held.items() if until <= now]:
            del held[holder]
        return held

    def take(self, scope: str, holder: str, limit: int) -> bool:
        with self._lock:
            held = self._live(scope)
            if holder in held or len(held) < limit:
                held[holder] = time.monotonic() + self.lease
                return True
            return False

    def renew(self, scope: str, holder: str) -> bool:
        with self._lock:
            held = self._live(scope)
            if holder not in held:
                return False
            held[holder] = time.monotonic() + self.lease
            return True

    def release(self, scope: str, holder: str) -> None:
        with self._lock:
            self._held.get(scope, {}).pop(holder, None)

    def free(self, scope: str, limit: int, *, if_waiting: bool = False) -> int:
        with self._lock:
            if if_waiting and self._waiting.get(scope, 0.0) < time.monotonic():
                return 0
            return limit - len(self._live(scope))

    def waiting(self, scope: str) -> None:
        with self._lock:
            self._waiting[scope] = time.monotonic() + WAITING_HINT_S

    def holders(self, scope: str) -> list[str]:
        with self._lock:
            return sorted(self._live(scope))


class Renewer:
    """Renews the leases this process's running steps hold, every third of the lease."""

    def __init__(self, permits: Permits) -> None:
        self.permits = permits
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], int] = {}
        self._thread: threading.Thread | None = None
        self._pid = 0

    @contextmanager
    def holding(self, *permits: tuple[str, str]) -> Iterator[None]:
        """Keep ``(scope, holder)`` permits renewed for the duration of the block."""
        with self._lock:
            for permit in permits:
                self._held[permit] = self._held.get(permit, 0) + 1
            self._start()
        try:
            yield
        finally:
            with self._lock:
                for permit in permits:
                    count = self._held.get(permit, 0) - 1
                    if count > 0:
                        self._held[permit] = count
                    else:
                        self._held.pop(permit, None)

    def _start(self) -> None:
        # A forked pool child inherits the object but not the thread: start one per process.
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="orchestration-permit-renewer")
        self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.permits.lease / 3)
            with self._lock:
                held = list(self._held)
            for scope_, holder in held:
                try:
                    if not self.permits.renew(scope_, holder):
                        log.warning("a permit's lease lapsed while its holder ran", scope=scope_,
                                    holder=holder)
                except Exception as exc:  # Redis away: the next round tries again
                    log.warning("could not renew a permit", scope=scope_, error=repr(exc))
