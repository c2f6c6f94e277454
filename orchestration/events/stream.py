"""Events from a Redis Stream, read by a consumer group: nothing lost, nothing twice.

Other systems ``XADD`` entries with the fields ``name`` (the event name), ``payload`` (a
JSON document, default ``null``) and optionally ``id`` (the event id; default: the
stream entry's id, which is the same on every re-delivery). Each consumer of the group
reads new entries (``XREADGROUP``), ingests each one and acknowledges it (``XACK``)
only afterwards. An entry whose consumer died before acknowledging stays pending; any
consumer claims entries pending longer than ``claim_idle`` seconds (``XAUTOCLAIM``) and
ingests them again, and the trigger's idempotency key turns a second ingest of an event
that did start its run into ``duplicate``: every event starts its run exactly once.

A malformed entry (no name, a payload that is not JSON, a bad id) is recorded
``rejected`` and acknowledged: never stuck, never silent. When Redis or the results
database is unreachable the consumer logs it and retries with exponential backoff; it
never exits on its own (stop it with :meth:`StreamConsumer.stop`, SIGTERM or Ctrl-C).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from sqlalchemy.exc import DBAPIError

from orchestration.define.workflow import Host
from orchestration.errors import InvalidInput, ResultsDatabaseUnavailable, SubmitFailed
from orchestration.events.ingest import ingest, reject
from orchestration.events.outcomes import EventOutcome

log = structlog.get_logger("orchestration.events.stream")
DEFAULT_STREAM = "orchestrate:events"
DEFAULT_GROUP = "orchestrate"
SOURCE = "stream"
# Failures after which the entry is left pending and read again (the event is fine, the
# infrastructure is not); anything else the entry caused is recorded rejected.
TRANSIENT = (redis.RedisError, DBAPIError, SubmitFailed, ResultsDatabaseUnavailable, OSError)
Observer = Callable[[str, list[EventOutcome]], None]


def default_consumer_name() -> str:
    """``<host>-<pid>``: distinct per process, so a restarted consumer is a new one."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class StreamOptions:
    """Where to read and how: stream, group, this consumer's name, batch and timings.

    ``claim_idle``: seconds an entry stays pending on another consumer before this one
    claims it (longer than the slowest ingest, so a live consumer keeps its entries).
    ``block``: seconds one read waits for new entries (how quickly ``stop`` is seen).
    """

    stream: str = DEFAULT_STREAM
    group: str = DEFAULT_GROUP
    consumer: str = ""
    batch: int = 50
    block: float = 1.0
    claim_idle: float = 60.0
    max_backoff: float = 30.0

    @property
    def name(self) -> str:
        """This consumer's name in the group."""
        return self.consumer or default_consumer_name()


class StreamConsumer:
    """Reads a stream with a consumer group and ingests its entries; :meth:`run` loops.

    ``observer`` (optional) is called with each entry id and its outcomes after the
    entry was ingested and before it is acknowledged.
    """

    def __init__(self, host: Host, client: redis.Redis, options: StreamOptions, *,
                 observer: Observer | None = None) -> None:
        self.host = host
        self.client = client
        self.options = options
        self.consumer = options.name
        self.observer = observer
        self._stopping = threading.Event()
        self._group_ready = False
        self._claim_cursor = "0-0"
        self._own_pending = True  # on start (and after a failure), re-read our own pending

    def stop(self) -> None:
        """Ask :meth:`run` to return after the entry being handled (thread- and signal-safe)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping.is_set()

    def run(self) -> None:
        """Consume until stopped: unreachable services are retried with backoff, logged."""
        delay = 0.0
        log.info("stream consumer started", stream=self.options.stream,
                 group=self.options.group, consumer=self.consumer)
        while not self.stopping:
            try:
                self.poll()
                delay = 0.0
            except TRANSIENT as exc:
                delay = min(self.options.max_backoff, max(0.5, delay * 2))
                self._group_ready = False
                self._own_pending = True
                log.warning("stream consumer cannot proceed; retrying", error=repr(exc),
                            retry_in_s=delay, stream=self.options.stream,
                            consumer=self.consumer)
                self._stopping.wait(delay)
        log.info("stream consumer stopped", consumer=self.consumer)

    def poll(self) -> int:
        """One round: claim stale entries, re-read own pending ones, read new ones.

        Returns how many entries were handled. Transient failures propagate.
        """
        self._ensure_group()
        handled = self._handle_all(self._claim())
        if self._own_pending:
            own = self._read("0")
            self._own_pending = bool(own)
            handled += self._handle_all(own)
        if not handled:
            handled = self._handle_all(self._read(">"))
        return handled

    def handle(self, entry_id: str, fields: dict[str, str] | None) -> list[EventOutcome]:
        """Ingest one entry (or record it rejected), then acknowledge it."""
        outcomes = self._ingest(entry_id, fields)
        if self.observer is not None:
            self.observer(entry_id, outcomes)
        self.client.xack(self.options.stream, self.options.group, entry_id)
        return outcomes

    # -- internals ---------------------------------------------------------------------

    def _ingest(self, entry_id: str, fields: dict[str, str] | None) -> list[EventOutcome]:
        if fields is None:  # trimmed from the stream while pending: nothing left to read
            log.warning("stream entry deleted while pending", entry_id=entry_id)
            return []
        name, raw, event_id = fields.get("name"), fields.get("payload"), fields.get("id")
        if not name:
            return [self._reject(entry_id, fields, "the entry has no field 'name'")]
        try:
            payload = None if raw is None else json.loads(raw)
        except ValueError as exc:
            return [self._reject(entry_id, fields, f"field 'payload' is not JSON: {exc}")]
        try:
            return ingest(self.host, name, payload, event_id=event_id or entry_id,
                          source=SOURCE)
        except InvalidInput as exc:
            return [self._reject(entry_id, fields, str(exc))]
        except TRANSIENT:
            raise
        except Exception as exc:  # the entry caused it: record, never retry forever
            log.exception("stream entry could not be ingested", entry_id=entry_id)
            return [self._reject(entry_id, fields, f"{type(exc).__name__}: {exc}")]

    def _reject(self, entry_id: str, fields: dict[str, str], reason: str) -> EventOutcome:
        log.warning("stream entry rejected", entry_id=entry_id, reason=reason)
        return reject(self.host, fields.get("name"), dict(fields), reason=reason,
                      event_id=fields.get("id") or entry_id, source=SOURCE)

    def _handle_all(self, entries: list[tuple[str, dict[str, str] | None]]) -> int:
        for entry_id, fields in entries:
            if self.stopping:
                break
            self.handle(entry_id, fields)
        return len(entries)

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From the stream's start: entries added before the group existed are read.
            self.client.xgroup_create(self.options.stream, self.options.group, id="0",
                                      mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _claim(self) -> list[tuple[str, dict[str, str] | None]]:
        """Entries pending on any consumer for longer than ``claim_idle``, now ours."""
        reply: Any = self.client.xautoclaim(
            self.options.stream, self.options.group, self.consumer,
            min_idle_time=int(self.options.claim_idle * 1000),
            start_id=self._claim_cursor, count=self.options.batch)
        self._claim_cursor = reply[0] if reply[0] else "0-0"
        claimed = [(entry_id, fields) for entry_id, fields in reply[1]]
        for entry_id in reply[2] if len(reply) > 2 else ():  # deleted while pending
            self.client.xack(self.options.stream, self.options.group, entry_id)
        if claimed:
            log.info("claimed stream entries from a stalled consumer", count=len(claimed),
                     consumer=self.consumer)
        return claimed

    def _read(self, start: str) -> list[tuple[str, dict[str, str] | None]]:
        block = None if start != ">" else max(1, int(self.options.block * 1000))
        reply: Any = self.client.xreadgroup(
            self.options.group, self.consumer, {self.options.stream: start},
            count=self.options.batch, block=block)
        if not reply:
            return []
        _, entries = reply[0]
        return [(entry_id, fields or None) for entry_id, fields in entries]


def connect(url: str, block: float = 1.0) -> redis.Redis:
    """A Redis client for a stream consumer (strings, not bytes; bounded timeouts)."""
    # One quick retry of its own: the consumer's loop does the backing off (and logs it).
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5,
                                socket_timeout=block + 30, health_check_interval=30,
                                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1))
