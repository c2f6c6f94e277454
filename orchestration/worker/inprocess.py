"""Broker transport and result backend for the embedded default, private to one orchestrator.

kombu's ``memory://`` transport keeps its queues in class attributes, and Celery's
``cache+memory://`` backend keeps results in one process-wide LRU of 5,000 entries:
two orchestrators in a process would consume each other's messages, and a large batch
could evict chord state before the chord's callback runs. Here each orchestrator gets
its own queues and its own result store, expired by age rather than by count.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from celery.backends.base import KeyValueStoreBackend
from kombu.transport import memory, virtual

RESULTS_ATTRIBUTE = "_orchestration_inprocess_results"


def private_memory_transport() -> type[memory.Transport]:
    """A memory transport class whose queues and bindings no other app shares."""

    class Channel(memory.Channel):
        queues: dict[str, Any] = {}
        events: defaultdict[str, set[Any]] = defaultdict(set)

    class Transport(memory.Transport):
        global_state = virtual.BrokerState()  # type: ignore[no-untyped-call]

    Transport.Channel = Channel
    return Transport


class _Results:
    """The result store of one app: values with an expiry instant, purged as it grows."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.values: dict[Any, tuple[Any, float]] = {}
        self.lock = threading.Lock()
        self.writes = 0

    def purge(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, expires) in self.values.items() if expires <= now]:
            del self.values[key]


class InProcessBackend(KeyValueStoreBackend):  # type: ignore[misc]
    """Chord bookkeeping in this process's memory (chords count parts with ``incr``)."""

    supports_native_join = True
    implements_incr = True

    def __init__(self, app: Any, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(app=app, **kwargs)
        store = getattr(app, RESULTS_ATTRIBUTE, None)
        if store is None:
            expires = app.conf.result_expires
            ttl = expires.total_seconds() if hasattr(expires, "total_seconds") else expires
            store = _Results(float(ttl or 3600))
            setattr(app, RESULTS_ATTRIBUTE, store)
        self._results: _Results = store

    def get(self, key: Any) -> Any:
        """The value stored under ``key``, or None."""
        entry = self._results.values.get(key)
        return None if entry is None else entry[0]

    def mget(self, keys: list[Any]) -> list[Any]:
        """Values for several keys (None where missing)."""
        return [self.get(key) for key in keys]

    def set(self, key: Any, value: Any) -> None:
        """Store a value; every 1,000 writes, drop expired ones."""
        results = self._results
        with results.lock:
            results.values[key] = (value, time.monotonic() + results.ttl)
            results.writes += 1
            if results.writes % 1000 == 0:
                results.purge()

    def delete(self, key: Any) -> None:
        """Forget a key."""
        with self._results.lock:
            self._results.values.pop(key, None)

    def incr(self, key: Any) -> int:
        """Atomically add one to a counter (how chords count finished parts)."""
        results = self._results
        with results.lock:
            value = int(self.get(key) or 0) + 1
            results.values[key] = (value, time.monotonic() + results.ttl)
            return value

    def expire(self, key: Any, value: Any) -> None:
        """Expiry is by age for every key; nothing to do per key."""
