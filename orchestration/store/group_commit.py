"""Group commit: the step hot path's transactions from one process's threads share commits.

A worker running many steps at once (a pack's runs, a map's elements, a threads pool of
200) makes each claim and each record a transaction of its own: on PostgreSQL each waits
for its commit to reach the disk, on SQLite each takes the database's one write lock in
turn. :class:`GroupCommit` lets them share: the first caller with nothing in flight
becomes the *leader* and runs its work in a transaction; callers arriving meanwhile
queue; when the leader's commit is done it hands the lead to the first queued caller,
which runs everything queued so far (at most ``limit``) in one transaction and one
commit. Nobody waits for a batch to fill: a lone caller runs at once, exactly as
without the group, and the batches grow only as fast as callers pile up behind a commit
(the "group commit" of database write-ahead logs, here in the client).

A shared transaction runs the callers' work one after the other, with no savepoints
(one costs 55 us a caller in SQLAlchemy on SQLite, and two round trips on PostgreSQL). If
it fails, what each caller learns is what it would have learnt alone:

- the database cannot be reached, or the connection was lost (down, or gone
  mid-commit): every caller gets that error, whose commit is unknown, as a lone
  transaction's would be;
- anything else (one caller's run does not exist, a constraint, a deferred check at
  COMMIT): nothing of the transaction is written, and each caller's work is run again
  in a transaction of its own, so the error is raised to its caller alone and the
  others commit. Such errors are rare on the hot path; a caller's work must therefore
  be safe to run twice when its first run was rolled back (only the database changes).

A shared transaction runs its callers' work in the order of their ``key`` (the store
passes the run id), so two processes' transactions take the rows of any two runs in the
same order and cannot deadlock on each other; alone, each touched one run's rows. Work
that also locks rows not keyed by its run (a step's conversation-memory turns: another
process's run may be writing the same conversation) is run with ``shared=False``: in a
transaction of its own, as before the group, so those locks never join a batch's.

Work passed in must only use the connection it is given (no commit, no thread state):
another thread may run it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from orchestration.store.engine import is_unavailable

__all__ = ["GroupCommit"]

T = TypeVar("T")


class _Call(Generic[T]):
    """One caller's work and, once run, its result or error."""

    __slots__ = ("done", "error", "key", "lead", "result", "settled", "work")

    def __init__(self, work: Callable[[Connection], T], key: str) -> None:
        self.work = work
        self.key = key
        self.done = threading.Event()  # set when its outcome is in, or it is to lead
        self.lead = False
        self.settled = False  # its outcome is in
        self.result: Any = None
        self.error: BaseException | None = None

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[no-any-return]


class GroupCommit:
    """Runs ``work(connection)`` in a write transaction, sharing the commit with the
    work of other threads of this process queued behind it (see the module doc).

    ``limit`` caps the calls in one transaction (its lock hold time); 1 turns sharing
    off: every call is its own transaction.
    """

    def __init__(self, engine: Engine, limit: int = 32) -> None:
        self._engine = engine
        self.limit = max(1, limit)
        self._lock = threading.Lock()
        self._queue: deque[_Call[Any]] = deque()
        self._busy = False  # a leader is running: new calls queue
        # Counters, read by tests and benches: transactions run, calls they held.
        self.transactions = 0
        self.calls = 0

    def run(self, work: Callable[[Connection], T], key: str = "", *,
            shared: bool = True) -> T:
        """``work(connection)`` in a transaction; its result, or its error raised.

        ``key``: what orders it among the work of a shared transaction (the run id).
        ``shared=False``: in a transaction of its own, now, whatever is queued."""
        if self.limit == 1 or not shared:
            with self._engine.begin() as conn:
                return work(conn)
        call: _Call[T] = _Call(work, key)
        with self._lock:
            self._queue.append(call)
            lead = not self._busy
            self._busy = True
        if not lead:
            call.done.wait()
            if not call.lead:
                return call.outcome()
        # Leading: this call is first in the queue (a queue is never left without one).
        with self._lock:
            batch = [self._queue.popleft() for _ in range(min(self.limit, len(self._queue)))]
        try:
            self._execute(batch)
        except BaseException as exc:  # e.g. the leader's thread interrupted: nobody hangs
            for other in batch:
                if not other.settled:
                    other.error, other.settled = exc, True
            raise
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    self._busy = False
            for other in batch[1:]:
                other.done.set()
        return call.outcome()

    def _execute(self, batch: list[_Call[Any]]) -> None:
        self.transactions += 1
        self.calls += len(batch)
        if len(batch) == 1:
            _alone(batch[0], self._engine)
            return
        try:
            with self._engine.begin() as conn:
                for call in sorted(batch, key=lambda queued: queued.key):
                    call.result = call.work(conn)
            for call in batch:
                call.settled = True
        except Exception as exc:
            lost = is_unavailable(exc)
            for call in batch:
                call.result, call.error = None, None
                if lost:
                    call.error, call.settled = exc, True
                else:  # rolled back whole: each runs again, alone
                    _alone(call, self._engine)

    def after_fork(self) -> None:
        """In a forked child: forget the parent's queue and lock (its threads are gone)."""
        self._lock = threading.Lock()
        self._queue = deque()
        self._busy = False


def _alone(call: _Call[Any], engine: Engine) -> None:
    try:
        with engine.begin() as conn:
            call.result = call.work(conn)
    except Exception as exc:  # handed to its caller, raised in its thread
        call.error = exc
    call.settled = True
