"""Broker transport and result backend for the embedded default, private to one orchestrator.

kombu's ``memory://`` transport keeps its queues in class attributes, and Celery's
``cache+memory://`` backend keeps results in one process-wide LRU of 5,000 entries:
two orchestrators in a process would consume each other's messages, and a large batch
could evict chord state before the chord's callback runs. Here each orchestrator gets
its own queues and its own result store, expired by age rather than by count.

kombu's virtual transports poll: a consumer that finds its queues empty sleeps
``polling_interval`` and looks again, so every hop of a run (the message of the next
step, a join's callback) waited for the next poll. Here a put, an ack or a reject (a
prefetch slot freed) wakes the waiting consumers at once; the polling interval is only a
backstop.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from queue import Empty
from typing import Any

from celery.backends.base import KeyValueStoreBackend
from kombu.transport import memory, virtual

RESULTS_ATTRIBUTE = "_orchestration_inprocess_results"


class Wakeup:
    """Wakes the consumers of one in-process broker when a message may be deliverable."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.generation = 0  # bumped by every notify
        self.notified_waits = 0  # waits ended by a notify (not by their timeout)
        self.interrupts = 0  # bumped by interrupt(): drains return to their loop

    def notify(self) -> None:
        """A message was put, or a prefetch slot freed: every waiting consumer looks."""
        with self._condition:
            self.generation += 1
            self._condition.notify_all()

    def interrupt(self) -> None:
        """Make every waiting drain return to its consumer's loop now (a worker stopping:
        the loop sees it at once instead of after its drain's timeout)."""
        with self._condition:
            self.interrupts += 1
            self.generation += 1
            self._condition.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Block until a notify after generation ``seen``, or ``timeout`` seconds."""
        with self._condition:
            if self.generation == seen and self._condition.wait_for(
                    lambda: self.generation != seen, timeout):
                self.notified_waits += 1


def private_memory_transport() -> type[memory.Transport]:
    """A memory transport class whose queues, bindings and wake-ups no other app shares."""
    shared = Wakeup()

    class Channel(memory.Channel):
        queues: dict[str, Any] = {}
        events: defaultdict[str, set[Any]] = defaultdict(set)

        def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
            super()._put(queue, message, **kwargs)  # type: ignore[no-untyped-call]
            shared.notify()

        def _put_fanout(self, exchange: str, message: Any, routing_key: str | None = None,
                        **kwargs: Any) -> None:
            super()._put_fanout(exchange, message, routing_key,  # type: ignore[no-untyped-call]
                                **kwargs)
            shared.notify()

        def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
            super().basic_ack(delivery_tag, multiple)  # type: ignore[no-untyped-call]
            shared.notify()

        def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
            super().basic_reject(delivery_tag, requeue)  # type: ignore[no-untyped-call]
            shared.notify()

    class Transport(memory.Transport):
        global_state = virtual.BrokerState()  # type: ignore[no-untyped-call]
        wakeup: Wakeup = shared

        def drain_events(self, connection: Any,  # type: ignore[override]
                         timeout: float | None = None) -> Any:
            """kombu's loop, waiting for a wake-up (or the polling interval) between polls."""
            began = time.monotonic()
            backstop = self.polling_interval or 1.0
            interrupts = shared.interrupts
            while True:
                seen = shared.generation
                try:
                    self.cycle.get(self._deliver, timeout=timeout)  # type: ignore[union-attr]
                    return
                except Empty:
                    left = None if timeout is None else timeout - (time.monotonic() - began)
                    if (left is not None and left <= 0) or shared.interrupts != interrupts:
                        raise TimeoutError() from None
                    shared.wait(seen, backstop if left is None else min(backstop, left))

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
