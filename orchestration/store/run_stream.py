"""A run's durable event stream: Redis Streams, or a results-DB table with no server.

Both keep events in append order per run and hand out offsets that a reader passes back
as ``after`` to get exactly the events after it (nothing lost, nothing repeated):

- :class:`RedisRunStream` (a shared Redis exists): key ``orch:stream:<run_id>``,
  ``XADD ... MAXLEN ~ maxlen``, the key's TTL refreshed on every append; offsets are
  Redis stream ids (``"1733300000000-0"``). A blocking read is ``XREAD BLOCK``.
- :class:`SQLRunStream` (the embedded default): table ``run_events``; offsets are row ids.
  A blocking read polls (every few ms at first, then up to every 50 ms). Rows go with
  their run (foreign key, ``ON DELETE CASCADE``); a run past ``maxlen`` events drops
  its oldest, checked about every :data:`TRIM_EVERY` appends, when events older than
  the TTL are deleted too (also :meth:`SQLRunStream.prune`).

``append_once`` writes an event at most once per run and type (``run_finished``), so a
stream is closed exactly once whoever closes it (the last step, or a reader that found
the run finished without it).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import redis
from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from orchestration.core.clock import utcnow
from orchestration.store.models import RunEventRow

DEFAULT_MAXLEN = 10_000
DEFAULT_TTL = 7 * 24 * 3600.0
READ_COUNT = 1000  # events per read at most
TRIM_EVERY = 256  # SQL: a run's length is checked when an event id is a multiple of this
KEY_PREFIX = "orch:stream:"
_POLL_FIRST, _POLL_MAX = 0.002, 0.05

__all__ = ["DEFAULT_MAXLEN", "DEFAULT_TTL", "RedisRunStream", "RunStream", "SQLRunStream",
           "stream_key"]


class RunStream(Protocol):
    """Where a run's events are appended and read (see the module doc)."""

    def append(self, run_id: str, event: dict[str, Any]) -> str:
        """Append one event; its offset."""

    def append_many(self, run_id: str, events: Sequence[dict[str, Any]]) -> list[str]:
        """Append events in order, in one round trip; their offsets."""

    def append_all(self, items: Sequence[tuple[str, dict[str, Any]]],
                   once: Sequence[tuple[str, dict[str, Any]]] = ()) -> None:
        """Append ``(run_id, event)`` pairs of any runs, in order, then ``once`` ones (as
        :meth:`append_once`), in one round trip."""

    def append_once(self, run_id: str, event: dict[str, Any]) -> str | None:
        """Append an event unless one of its type was appended once already (None then)."""

    def read(self, run_id: str, after: str | None = None, *,
             block: float = 0) -> list[tuple[str, dict[str, Any]]]:
        """Events after offset ``after`` (from the start when None), oldest first; when
        there are none yet, wait up to ``block`` seconds for some."""

    def delete(self, run_id: str) -> None:
        """Remove a run's stream (retention)."""

    def delete_many(self, run_ids: Sequence[str]) -> None:
        """Remove runs' streams (retention)."""


def _dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), default=str)


def stream_key(run_id: str) -> str:
    """The Redis key of a run's stream."""
    return f"{KEY_PREFIX}{run_id}"


# XADD the event unless the run's marker says an event of its type was written already.
_APPEND_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return id
end
return false
"""


class RedisRunStream:
    """Runs' streams in Redis (``client``: a redis-py client, bytes or str responses)."""

    def __init__(self, client: redis.Redis, *, maxlen: int = DEFAULT_MAXLEN,
                 ttl: float = DEFAULT_TTL, max_block: float | None = None) -> None:
        self._redis = client
        self.maxlen = maxlen
        self.ttl = max(1, int(ttl))
        # The longest XREAD BLOCK: below the client's socket timeout, so a quiet stream
        # returns no events (its readers loop) instead of failing the read.
        self.max_block = max_block
        self._once = client.register_script(_APPEND_ONCE)

    def append(self, run_id: str, event: dict[str, Any]) -> str:
        return self.append_many(run_id, [event])[0]

    def append_many(self, run_id: str, events: Sequence[dict[str, Any]]) -> list[str]:
        if not events:
            return []
        key = stream_key(run_id)
        pipe = self._redis.pipeline(transaction=False)
        for item in events:
            pipe.xadd(key, {"e": _dumps(item)}, maxlen=self.maxlen, approximate=True)
        pipe.expire(key, self.ttl)
        replies = pipe.execute()
        return [_text(offset) for offset in replies[:-1]]

    def append_all(self, items: Sequence[tuple[str, dict[str, Any]]],
                   once: Sequence[tuple[str, dict[str, Any]]] = ()) -> None:
        if not items and not once:
            return
        pipe = self._redis.pipeline(transaction=False)
        for run_id, item in items:
            pipe.xadd(stream_key(run_id), {"e": _dumps(item)}, maxlen=self.maxlen,
                      approximate=True)
        for run_id in {run_id for run_id, _ in items}:
            pipe.expire(stream_key(run_id), self.ttl)
        for run_id, item in once:
            key = stream_key(run_id)
            self._once(keys=[key, f"{key}:{item['type']}"],
                       args=[_dumps(item), self.maxlen, self.ttl], client=pipe)
        pipe.execute()

    def append_once(self, run_id: str, event: dict[str, Any]) -> str | None:
        key = stream_key(run_id)
        offset = self._once(keys=[key, f"{key}:{event['type']}"],
                            args=[_dumps(event), self.maxlen, self.ttl])
        return _text(offset) if offset else None

    def read(self, run_id: str, after: str | None = None, *,
             block: float = 0) -> list[tuple[str, dict[str, Any]]]:
        key = stream_key(run_id)
        start = after or "0-0"
        if self.max_block is not None:
            block = min(block, self.max_block)
        wait = int(block * 1000) if block > 0 else None
        replies: Any = self._redis.xread({key: start}, count=READ_COUNT,
                                         block=wait if wait else None)
        out: list[tuple[str, dict[str, Any]]] = []
        for _, entries in replies or []:
            for offset, fields in entries:
                raw = fields.get(b"e", fields.get("e")) if isinstance(fields, dict) else None
                if raw is not None:
                    out.append((_text(offset), json.loads(raw)))
        return out

    def delete(self, run_id: str) -> None:
        self.delete_many([run_id])

    def delete_many(self, run_ids: Sequence[str]) -> None:
        """Remove runs' streams (retention), 500 keys per round trip."""
        keys = [name for run_id in run_ids
                for name in (stream_key(run_id), f"{stream_key(run_id)}:run_finished")]
        for start in range(0, len(keys), 1000):
            self._redis.delete(*keys[start:start + 1000])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SQLRunStream:
    """Runs' streams in the results DB's ``run_events`` table."""

    def __init__(self, writer: Engine, reader: Engine, *, maxlen: int = DEFAULT_MAXLEN,
                 ttl: float = DEFAULT_TTL) -> None:
        self._writer = writer
        self._reader = reader
        self.maxlen = maxlen
        self.ttl = ttl
        self._once_statement: Any = None

    def append(self, run_id: str, event: dict[str, Any]) -> str:
        return self.append_many(run_id, [event])[0]

    def append_many(self, run_id: str, events: Sequence[dict[str, Any]]) -> list[str]:
        return [str(offset) for offset in self._insert([(run_id, item) for item in events])]

    def append_all(self, items: Sequence[tuple[str, dict[str, Any]]],
                   once: Sequence[tuple[str, dict[str, Any]]] = ()) -> None:
        if not items and not once:
            return
        now = utcnow()
        with self._writer.begin() as conn:
            if items:  # one statement for them all (executemany): no ids needed here
                conn.execute(_INSERT_EVENTS, [
                    {"run_id": run_id, "type": str(item.get("type", "")),
                     "body": _dumps(item), "once": None, "created_at": now}
                    for run_id, item in items])
                # As often as by row ids: each run with a chance of its share of the
                # batch (trimming every run of a batch made 1,000 runs ending together
                # cost 1,000 trims), the TTL with the batch's.
                counts = Counter(run_id for run_id, _ in items)
                for run_id, count in counts.items():
                    if random.random() < count / TRIM_EVERY:
                        self._trim(conn, run_id)
                if random.random() < len(items) / TRIM_EVERY:
                    self._expire(conn, now)
            self._write_once(conn, once, now)

    def _insert(self, items: Sequence[tuple[str, dict[str, Any]]],
                once: Sequence[tuple[str, dict[str, Any]]] = ()) -> list[int]:
        """Insert events in order in one transaction (``once`` ones unless present);
        the row ids of ``items``."""
        if not items and not once:
            return []
        now = utcnow()
        with self._writer.begin() as conn:
            ids = [_inserted(conn.execute(insert(RunEventRow).values(
                run_id=run_id, type=str(item.get("type", "")), body=_dumps(item),
                created_at=now))) for run_id, item in items]
            for (run_id, _), offset in zip(items, ids, strict=True):
                if offset % TRIM_EVERY == 0:
                    self._trim(conn, run_id)
                    self._expire(conn, now)
            self._write_once(conn, once, now)
        return ids

    def _write_once(self, conn: Any, once: Sequence[tuple[str, dict[str, Any]]],
                    now: datetime) -> None:
        """Once-events, each unless its run has one of its type: one statement for all
        (built once per stream, not per event)."""
        if not once:
            return
        if self._once_statement is None:
            self._once_statement = self._insert_once().on_conflict_do_nothing()
        conn.execute(self._once_statement, [
            {"run_id": run_id, "type": str(item["type"]), "once": str(item["type"]),
             "body": _dumps(item), "created_at": now} for run_id, item in once])

    def _expire(self, conn: Any, now: datetime) -> None:
        """Delete every run's events past the TTL."""
        conn.execute(delete(RunEventRow).where(
            RunEventRow.created_at < now - timedelta(seconds=self.ttl)))

    def _insert_once(self) -> Any:
        """An INSERT that can skip a conflicting row, in this database's dialect."""
        if self._writer.dialect.name == "postgresql":
            return postgresql.insert(RunEventRow)
        return sqlite.insert(RunEventRow)

    def append_once(self, run_id: str, event: dict[str, Any]) -> str | None:
        kind = str(event["type"])
        try:
            with self._writer.begin() as conn:
                offset = _inserted(conn.execute(insert(RunEventRow).values(
                    run_id=run_id, type=kind, once=kind, body=_dumps(event),
                    created_at=utcnow())))
        except IntegrityError:
            return None  # already written (uq_run_events_once)
        return str(offset)

    def read(self, run_id: str, after: str | None = None, *,
             block: float = 0) -> list[tuple[str, dict[str, Any]]]:
        start = _row_offset(after)
        query = (select(RunEventRow.id, RunEventRow.body)
                 .where(RunEventRow.run_id == run_id, RunEventRow.id > start)
                 .order_by(RunEventRow.id).limit(READ_COUNT))
        deadline = time.monotonic() + block
        interval = _POLL_FIRST
        while True:
            with self._reader.connect() as conn:
                rows = conn.execute(query).all()
            left = deadline - time.monotonic()
            if rows or left <= 0:
                return [(str(row.id), json.loads(row.body)) for row in rows]
            time.sleep(min(interval, left))
            interval = min(interval * 1.5, _POLL_MAX)

    def delete(self, run_id: str) -> None:
        self.delete_many([run_id])

    def delete_many(self, run_ids: Sequence[str]) -> None:
        """Remove runs' streams (their rows also go with the runs' rows: cascade)."""
        ids = list(run_ids)
        with self._writer.begin() as conn:
            for start in range(0, len(ids), 500):
                conn.execute(delete(RunEventRow).where(
                    RunEventRow.run_id.in_(ids[start:start + 500])))

    def prune(self, before: datetime) -> int:
        """Delete events written before ``before`` (the stream TTL); how many."""
        with self._writer.begin() as conn:
            return int(conn.execute(delete(RunEventRow).where(
                RunEventRow.created_at < before)).rowcount or 0)

    def _trim(self, conn: Any, run_id: str) -> None:
        """Drop a run's oldest events beyond ``maxlen``."""
        cutoff = conn.execute(select(RunEventRow.id).where(RunEventRow.run_id == run_id)
                              .order_by(RunEventRow.id.desc()).offset(self.maxlen)
                              .limit(1)).scalar()
        if cutoff is not None:
            conn.execute(delete(RunEventRow).where(RunEventRow.run_id == run_id,
                                                   RunEventRow.id <= cutoff,
                                                   RunEventRow.once.is_(None)))


_INSERT_EVENTS = insert(RunEventRow)  # many rows, executemany: built once


def _inserted(result: Any) -> int:
    return int(result.inserted_primary_key[0])


def _row_offset(after: str | None) -> int:
    if after is None or after == "":
        return 0
    try:
        return int(after)
    except ValueError:
        raise ValueError(f"stream offset {after!r} is not an offset of this stream (the "
                         "embedded stream's offsets are row ids, e.g. '42')") from None
