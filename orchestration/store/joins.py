"""Where parallel branches meet: the join state of a fork (compile/canvas.py).

A fork's branches each end by *arriving* at their join with the envelope they pass on.
The arrival that completes the set receives every branch's envelope (in branch order)
and continues the run. The state holds the envelopes themselves, as a chord's parts
set does: an output that redaction changed travels inline in its envelope, and the
results DB holds only the redacted copy.

Arrivals are idempotent per branch: the first envelope a branch brings is kept (a
duplicate delivery brings the recorded, possibly redacted, copy). Every arrival that
finds the set complete is told so, not only the first: a worker that died after
completing the join but before continuing has its message delivered again, and that
delivery must continue the run. The steps it continues are claimed in the results DB,
so a second continuation runs nothing twice.

- :class:`RedisJoins`: a hash per join in the shared Redis, written and counted by one
  Lua script (HSETNX then HLEN). It lives ``ttl`` seconds from its last arrival (as long
  as a chord's parts, so a branch waiting for a person is covered), and ``settle``
  seconds once complete: long enough for a redelivery after a crash (Redis re-delivers
  after its visibility timeout), not holding every finished run's outputs for a day.
- :class:`LocalJoins`: in this process (the embedded default, where every branch runs
  in this process). A completed join is forgotten at once: nothing is delivered twice
  after a crash, the process's broker dies with it.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Protocol

import redis

from orchestration.core.keys import join as join_key
from orchestration.core.settings import Settings

__all__ = ["JOIN_TTL", "Joins", "JoinsUnavailable", "LocalJoins", "RedisJoins", "joins_for"]

#: How long an incomplete join lives after its last arrival: as long as a chord's parts
#: (Celery's ``result_expires``, worker/celery_config.py).
JOIN_TTL = 24 * 3600


class JoinsUnavailable(Exception):
    """The join state could not be reached: the arrival must be made again later."""


class Joins(Protocol):
    """The join state shared by every worker that runs a deployment's branches."""

    def arrive(self, join_id: str, index: int, size: int, part: Any) -> list[Any] | None:
        """Record branch ``index`` of ``size``; every part, in order, once all arrived."""


class LocalJoins:
    """Joins of this process's branches (the embedded default).

    A join some branch never reaches (its run failed in the engine, or was re-sent by
    the reconciler with a join of its own) is dropped ``ttl`` seconds after it opened,
    as Redis expires one.
    """

    def __init__(self, ttl: float = JOIN_TTL) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, dict[int, Any]] = {}
        self._opened: dict[str, float] = {}  # join id -> when its first branch arrived
        self._ttl = ttl

    def arrive(self, join_id: str, index: int, size: int, part: Any) -> list[Any] | None:
        _check(index, size)
        now = time.monotonic()
        with self._lock:
            parts = self._open.get(join_id)
            if parts is None:
                self._expire(now)
                parts = self._open[join_id] = {}
                self._opened[join_id] = now
            parts.setdefault(index, part)
            if len(parts) < size:
                return None
            del self._open[join_id], self._opened[join_id]
        return [parts[i] for i in range(size)]

    def _expire(self, now: float) -> None:
        """Drop joins open longer than the TTL (oldest first; insertion-ordered)."""
        for join_id, opened in list(self._opened.items()):
            if now - opened < self._ttl:
                return
            del self._open[join_id], self._opened[join_id]

    def __len__(self) -> int:
        """Joins waiting for a branch (for tests)."""
        return len(self._open)


# KEYS[1] the join; ARGV: index, envelope JSON, size, ttl, settle. The parts once complete.
_ARRIVE = """
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
if redis.call('HLEN', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return false
end
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 or ttl > tonumber(ARGV[5]) then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
return redis.call('HGETALL', KEYS[1])
"""


class RedisJoins:
    """Joins in the shared Redis (see the module)."""

    def __init__(self, client: redis.Redis, *, ttl: int, settle: int) -> None:
        self._arrive = client.register_script(_ARRIVE)
        self.ttl, self.settle = ttl, min(settle, ttl)

    def arrive(self, join_id: str, index: int, size: int, part: Any) -> list[Any] | None:
        _check(index, size)
        try:
            reply = self._arrive(keys=[join_key(join_id)],
                                 args=[index, json.dumps(part, separators=(",", ":")), size,
                                       self.ttl, self.settle])
        except (redis.RedisError, OSError) as exc:
            raise JoinsUnavailable(f"join {join_id}: Redis unreachable: "
                                   f"{type(exc).__name__}: {exc}") from exc
        if not reply:
            return None
        parts = {int(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}
        return [json.loads(parts[i]) for i in range(size)]


def joins_for(settings: Settings, client: redis.Redis | None) -> Joins | None:
    """A deployment's join state: in its shared Redis (``client``), in this process on
    the embedded default, else none (parallel groups are chords)."""
    if client is not None:
        # A complete join stays past a redelivery after a crash (Redis re-delivers after
        # its visibility timeout), then goes.
        return RedisJoins(client, ttl=JOIN_TTL, settle=settings.visibility_timeout + 600)
    return LocalJoins() if settings.embedded else None


def _check(index: int, size: int) -> None:
    if not 0 <= index < size:
        raise ValueError(f"branch {index} of a join of {size}")
