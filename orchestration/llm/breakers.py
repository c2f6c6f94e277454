"""Circuit breakers per model, on pybreaker, shared by every worker through Redis.

pybreaker's own ``call`` holds the breaker's lock for the whole guarded call, which
would serialise every thread of a worker behind one slow provider; ``ModelBreaker``
takes it only around failures and transitions: a call through a closed breaker takes no
lock at all.

Nor does a healthy breaker cost a Redis round trip per call. pybreaker reads the shared
state before every call and resets the shared failure counter after every success (two
round trips, 0.5 ms of a worker's CPU per call with 200 threads). Here a process reads
state and failure count together (one ``MGET``) and reuses that reading for ``refresh``
seconds (``BreakerPolicy.refresh``, 0.1 s by default) while it says *closed, no
failures*; any other reading (failures counted, open, half-open) is never reused, and a
success resets the counter only when failures were seen. The cost: a process whose last
look found the breaker healthy sees another worker open it up to ``refresh`` seconds
late, and a success does not erase failures counted elsewhere since its last look (the
breaker opens no later than pybreaker's would).

Only provider failures count: a :class:`ProviderError` marked retryable (timeouts, 429,
5xx, connection errors). A client
error (other 4xx) shows the provider is up; anything else (Celery's retry and time-limit
signals, a step timeout unwinding the call, a bug) leaves the breaker untouched. When the
reset timeout has passed, exactly one caller (a Redis ``SET NX`` token across workers)
probes the half-open breaker; the others keep using fallbacks until it decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pybreaker
import redis

from orchestration.core import keys
from orchestration.errors import BreakerOpen, ProviderError

T = TypeVar("T")
_log = logging.getLogger(__name__)
CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN


@dataclass(frozen=True)
class BreakerPolicy:
    """When a model's breaker opens, and how long it stays open."""

    fail_max: int = 5
    reset_timeout: float = 30.0
    refresh: float = 0.1


def counts_as_failure(exc: BaseException) -> bool:
    """True for failures that say the provider is unhealthy."""
    return isinstance(exc, ProviderError) and exc.retryable and not isinstance(exc, BreakerOpen)


class _Probe:
    """Who may probe a half-open breaker: one caller at a time, across processes if shared.

    ``acquire`` returns the token taken (``SHARED`` in Redis, ``LOCAL`` in this process,
    when Redis is down or not used), which the prober hands back to ``release``: the two
    may run on different threads (an awaited call enters and leaves on executor threads).
    """

    SHARED, LOCAL = "shared", "local"

    def __init__(self, model: str, client: redis.Redis | None, ttl: float) -> None:
        self._key = keys.breaker_probe(model)
        self._client = client
        self._ttl_ms = max(1, int(ttl * 1000))
        self._local = threading.Lock()

    def acquire(self) -> str | None:
        if self._client is not None:
            try:
                taken = self._client.set(self._key, b"1", nx=True, px=self._ttl_ms)
            except redis.RedisError:  # down or hung: probe under this process's token
                _log.warning("RedisError: breaker probe token taken in this process")
            else:
                return self.SHARED if taken else None
        return self.LOCAL if self._local.acquire(blocking=False) else None

    def release(self, token: str) -> None:
        if token == self.LOCAL:
            self._local.release()
            return
        assert self._client is not None
        try:
            self._client.delete(self._key)
        except redis.RedisError:  # the token expires with its TTL
            _log.warning("RedisError: breaker probe token left to expire")


class _RedisStorage(pybreaker.CircuitRedisStorage):
    """pybreaker's Redis storage, with ``opened_at`` kept to the millisecond.

    pybreaker floors it to whole seconds, so a shared breaker could stay open up to a
    second less than its reset timeout (or not at all with a sub-second one).
    """

    def _initialize_redis_state(self, state: str) -> None:
        """Create the keys if missing; with Redis failing, the state getter does it later
        (a breaker built while Redis is down or hung must not fail its step)."""
        try:
            super()._initialize_redis_state(state)
        except redis.RedisError:
            _log.exception("RedisError: breaker keys not initialised")

    @property
    def opened_at(self) -> datetime | None:
        try:
            value = self._redis.get(self._namespace("opened_at"))
        except redis.RedisError:  # as pybreaker's: unknown, so the reset timeout elapsed
            _log.exception("RedisError")
            return None
        return datetime.fromtimestamp(float(value), UTC) if value else None

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        try:
            self._redis.set(self._namespace("opened_at"), f"{now.timestamp():.3f}")
        except redis.RedisError:
            _log.exception("RedisError")

    def reading(self) -> tuple[str, int]:
        """(state, failure count) in one round trip; closed and 0 if Redis fails, as
        pybreaker falls back."""
        try:
            state, failures = self._redis.mget(self._namespace("state"),
                                               self._namespace("fail_counter"))
        except redis.RedisError:
            _log.exception("RedisError: falling back to a closed breaker")
            return CLOSED, 0
        if state is None:
            return str(self.state), 0  # pybreaker's getter re-creates missing keys
        return (state.decode() if isinstance(state, bytes) else str(state)), int(failures or 0)


class ModelBreaker(pybreaker.CircuitBreaker):
    """One model's breaker; see the module docstring for what counts and who probes."""

    def __init__(self, model: str, policy: BreakerPolicy, client: redis.Redis | None) -> None:
        storage: pybreaker.CircuitBreakerStorage = (
            _RedisStorage(CLOSED, client, namespace=keys.breaker_namespace(model))
            if client is not None else pybreaker.CircuitMemoryStorage(CLOSED)
        )
        super().__init__(fail_max=policy.fail_max, reset_timeout=policy.reset_timeout,
                         state_storage=storage, name=model)
        self.model = model
        self._shared = client is not None
        self._refresh = policy.refresh
        # The last reading of shared state: (state, failures, time.monotonic() of the read).
        self._seen: tuple[str, int, float] | None = None
        self._renewing = threading.Lock()
        # A probe holds its token at most this long, so a crashed prober cannot wedge it.
        self._probe = _Probe(model, client, ttl=max(policy.reset_timeout, 60.0))

    @property
    def state(self) -> Any:
        """The current state, following shared storage.

        pybreaker re-creates the state with ``notify=True`` when another process changed
        it, and a fresh closed state then resets the *shared* failure counter, erasing
        failures other workers recorded meanwhile. Following a change made elsewhere is
        not a transition here: no reset, no listener calls.
        """
        current = self._state_storage.state
        if current != self._state.name:
            with self._lock:
                self._state = self._create_new_state(current, prev_state=self._state,
                                                     notify=False)
        return self._state

    @state.setter
    def state(self, state_str: str) -> None:
        with self._lock:
            self._state = self._create_new_state(state_str, prev_state=self._state, notify=True)

    @property
    def state_name(self) -> str:
        """``closed``, ``open`` or ``half-open``: shared state now, or a recent healthy reading
        of it (see the module doc)."""
        return self._look()

    def snapshot(self) -> tuple[str, int, datetime | None]:
        """``(state, failures counted, opened at)`` as stored now (for the dashboard)."""
        storage = self._state_storage
        return str(storage.state), int(storage.counter), storage.opened_at

    def _look(self) -> str:
        """The state a call goes by: a recent healthy reading, else a fresh one."""
        if not self._shared:
            return str(self._state_storage.state)
        seen = self._seen
        now = time.monotonic()
        if seen is not None and seen[0] == CLOSED and seen[1] == 0:
            # Healthy: reuse it while fresh. Once expired, one thread renews it and the
            # others keep using it meanwhile (otherwise every thread of a busy worker
            # read at once).
            if now - seen[2] < self._refresh or not self._renewing.acquire(blocking=False):
                return CLOSED
            try:
                return self._read(now)
            finally:
                self._renewing.release()
        return self._read(now)

    def _read(self, now: float) -> str:
        assert isinstance(self._state_storage, _RedisStorage)
        state, failures = self._state_storage.reading()
        self._seen = (state, failures, now)
        return state

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``func`` unless the breaker is open; count its outcome."""
        seen, probe = self._enter()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            if counts_as_failure(exc):
                self._record(exc)
            elif isinstance(exc, ProviderError):
                self._record_success(seen)
            raise
        else:
            self._record_success(seen)
            return result
        finally:
            if probe is not None:
                self._probe.release(probe)

    async def acall(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """:meth:`call` for a coroutine function, awaited on the running loop.

        What needs Redis (a stale reading, counting a failure, a transition, the probe
        token) runs on an executor thread, so a slow or hung Redis holds up this call
        only, never the loop: a healthy breaker with a fresh reading needs none of it.
        """
        seen, probe = self._enter() if self._quiet() else await asyncio.to_thread(self._enter)
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            if counts_as_failure(exc):
                await self._off_loop(self._record, exc)
            elif isinstance(exc, ProviderError):
                await self._asuccess(seen)
            raise
        else:
            await self._asuccess(seen)
            return result
        finally:
            if probe is not None:
                await self._off_loop(self._probe.release, probe)

    async def astate_name(self) -> str:
        """:attr:`state_name`, reading Redis (if it must) on an executor thread."""
        if self._quiet():
            return self._look()
        return await asyncio.to_thread(self._look)

    def _quiet(self) -> bool:
        """True when entering needs no Redis: not shared, or a healthy reading that is
        fresh or being renewed by another caller (see :meth:`_look`)."""
        seen = self._seen
        return not self._shared or (
            seen is not None and seen[0] == CLOSED and seen[1] == 0
            and (time.monotonic() - seen[2] < self._refresh or self._renewing.locked()))

    async def _asuccess(self, seen: str) -> None:
        last = self._seen
        if not self._shared or (seen == CLOSED and last is not None and last[1] == 0):
            self._record_success(seen)  # nothing to write
        else:
            await asyncio.to_thread(self._record_success, seen)

    async def _off_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if self._shared:
            await asyncio.to_thread(fn, *args)
        else:
            fn(*args)

    def _enter(self) -> tuple[str, str | None]:
        """(the state seen, the probe token if this caller probes); raises BreakerOpen."""
        seen = self._look()
        if seen == CLOSED:
            # The common case takes no lock (and, when healthy, usually no round trip).
            return seen, None
        with self._lock:
            state = self.state
            if state.name == OPEN:
                opened_at = self._state_storage.opened_at
                if opened_at and datetime.now(UTC) < opened_at + timedelta(
                        seconds=self.reset_timeout):
                    raise BreakerOpen(self.model, "reset timeout not elapsed")
                self.half_open()
                state = self.state
            if state.name == HALF_OPEN:
                probe = self._probe.acquire()
                if probe is None:
                    raise BreakerOpen(self.model, "half-open, another caller is probing")
                return state.name, probe
            return state.name, None

    def _record_success(self, seen: str) -> None:
        if seen == CLOSED and self._shared:
            # Closed and shared: the success only resets the failure counter (an atomic
            # write, without the lock), and only if the last reading saw failures.
            last = self._seen
            if last is None or last[1] > 0:
                self._state_storage.reset_counter()
                self._seen = (CLOSED, 0, time.monotonic())
            return
        self._record(None)

    def _record(self, failure: BaseException | None) -> None:
        """Count a success (None) or a failure; pybreaker re-raises after a transition."""
        with self._lock, contextlib.suppress(BaseException):
            if failure is None:
                self.state._handle_success()
            else:
                self.state._handle_error(failure, reraise=False)
        self._seen = None  # counted or changed: the next call reads shared state again


class Breakers:
    """The breakers of this process, one per model; shared state in Redis when given."""

    def __init__(self, client: redis.Redis | None,
                 policies: dict[str, BreakerPolicy] | None = None) -> None:
        self._client = client
        self._policies = policies or {}
        self._breakers: dict[str, ModelBreaker] = {}
        self._lock = threading.Lock()

    @property
    def shared(self) -> bool:
        """True when breaker state is shared through Redis."""
        return self._client is not None

    def get(self, model: str) -> ModelBreaker:
        """The breaker of ``model``."""
        breaker = self._breakers.get(model)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(model)
                if breaker is None:
                    policy = self._policies.get(model, BreakerPolicy())
                    breaker = ModelBreaker(model, policy, self._client)
                    self._breakers[model] = breaker
        return breaker
