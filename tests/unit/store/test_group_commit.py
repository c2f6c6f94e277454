"""Group commit (store/group_commit.py): threads' transactions share commits, and each
caller still gets exactly its own outcome.

Batches are made deterministic here: the first caller's work blocks inside its
transaction until the others have queued behind it (their queue is polled with a
deadline), so the next transaction holds all of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from orchestration.store.engine import create_engines
from orchestration.store.group_commit import GroupCommit


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    # The store's own SQLite writer: BEGIN IMMEDIATE, foreign keys on.
    engine = create_engines(f"sqlite:///{tmp_path / 'g.db'}")[0]
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        conn.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, "
                          "parent INTEGER REFERENCES parent(id))"))
        conn.execute(text("INSERT INTO parent (id) VALUES (1)"))
    return engine


def insert(value: int) -> Callable[[Connection], int]:
    def work(conn: Connection) -> int:
        conn.execute(text("INSERT INTO item (id) VALUES (:v)"), {"v": value})
        return value
    return work


def stored(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return sorted(conn.execute(text("SELECT id FROM item")).scalars())


def until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Callers:
    """Runs works through the group on threads: the first holds its transaction open
    until ``release`` is called, after every other has queued."""

    def __init__(self, group: GroupCommit) -> None:
        self.group = group
        self.gate = threading.Event()
        self.outcomes: dict[int, Any] = {}
        self.threads: list[threading.Thread] = []

    def start(self, works: list[Callable[[Connection], Any]],
              keys: list[str] | None = None, unshared: int | None = None) -> None:
        """``unshared``: the index of a work run with ``shared=False`` (started last)."""
        first = works[0]
        keys = keys or [""] * len(works)

        def held(conn: Connection) -> Any:
            self.gate.wait(30)
            return first(conn)

        self._spawn(0, held, keys[0])
        until(lambda: self.group._busy)
        for index, work in enumerate(works[1:], start=1):
            self._spawn(index, work, keys[index], shared=index != unshared)
            if index != unshared:
                until(lambda index=index: len(self.group._queue) == index)  # queued in order

    def _spawn(self, index: int, work: Callable[[Connection], Any], key: str,
               shared: bool = True) -> None:
        def call() -> None:
            try:
                self.outcomes[index] = self.group.run(work, key, shared=shared)
            except BaseException as exc:
                self.outcomes[index] = exc

        thread = threading.Thread(target=call, daemon=True)
        self.threads.append(thread)
        thread.start()

    def finish(self) -> dict[int, Any]:
        self.gate.set()
        for thread in self.threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in self.threads), "a caller hangs"
        return self.outcomes


def test_a_lone_caller_is_one_transaction_as_without_the_group(engine: Engine) -> None:
    group = GroupCommit(engine)
    assert [group.run(insert(value)) for value in (1, 2, 3)] == [1, 2, 3]
    assert (group.transactions, group.calls) == (3, 3)
    assert stored(engine) == [1, 2, 3]


def test_callers_queued_behind_a_commit_share_the_next_one(engine: Engine) -> None:
    group = GroupCommit(engine)
    callers = Callers(group)
    callers.start([insert(value) for value in range(1, 11)])
    outcomes = callers.finish()
    assert outcomes == {value - 1: value for value in range(1, 11)}
    assert stored(engine) == list(range(1, 11))
    # The held one alone, then the nine queued behind it in one transaction.
    assert (group.transactions, group.calls) == (2, 10)


def test_a_shared_transaction_runs_its_callers_in_key_order(engine: Engine) -> None:
    # The store keys each call by its run id: two processes' shared transactions then
    # lock any two runs' rows in the same order, so they cannot deadlock on each other.
    order: list[str] = []

    def noted(key: str) -> Callable[[Connection], str]:
        def work(conn: Connection) -> str:
            conn.execute(text("SELECT 1"))
            order.append(key)
            return key
        return work

    group = GroupCommit(engine)
    callers = Callers(group)
    keys = ["held", "run-c", "run-a", "run-b", "run-a"]
    callers.start([noted(key) for key in keys], keys)
    outcomes = callers.finish()
    assert outcomes == dict(enumerate(keys))
    assert order == ["held", "run-a", "run-a", "run-b", "run-c"]


def test_unshared_work_never_joins_a_batch(engine: Engine) -> None:
    # A step writing conversation turns locks rows keyed by conversation, which the run-id
    # order of a batch does not cover: its record runs in a transaction of its own.
    group = GroupCommit(engine)
    callers = Callers(group)
    callers.start([insert(value) for value in (1, 2, 3, 4)], unshared=3)
    assert len(group._queue) == 2  # 2 and 3 queued; 4 went past the queue
    outcomes = callers.finish()
    assert outcomes == {0: 1, 1: 2, 2: 3, 3: 4}
    assert stored(engine) == [1, 2, 3, 4]
    # The held one alone, then 2 and 3 together; 4 in its own transaction, not counted.
    assert (group.transactions, group.calls) == (2, 3)


def test_limit_caps_a_transaction_and_one_turns_sharing_off(engine: Engine) -> None:
    group = GroupCommit(engine, limit=4)
    callers = Callers(group)
    callers.start([insert(value) for value in range(1, 10)])
    callers.finish()
    assert stored(engine) == list(range(1, 10))
    assert (group.transactions, group.calls) == (3, 9)  # 1, then 4 and 4

    off = GroupCommit(engine, limit=1)
    off.run(insert(20))
    assert stored(engine)[-1] == 20 and off.transactions == 0  # no group at all


def test_one_callers_error_rolls_back_its_own_writes_only(engine: Engine) -> None:
    def fails(conn: Connection) -> int:
        conn.execute(text("INSERT INTO item (id) VALUES (5)"))
        raise LookupError("run 5 has no step")

    group = GroupCommit(engine)
    callers = Callers(group)
    callers.start([insert(1), insert(2), fails, insert(3), insert(2)])
    outcomes = callers.finish()
    assert outcomes[0] == 1 and outcomes[1] == 2 and outcomes[3] == 3
    assert isinstance(outcomes[2], LookupError)
    assert "UNIQUE" in str(outcomes[4])  # the duplicate of 2 fails alone
    assert stored(engine) == [1, 2, 3]  # 5 rolled back, the others written on their own
    assert group.transactions == 2


def test_a_transaction_rolled_back_whole_runs_each_caller_again_alone(engine: Engine) -> None:
    # A deferred foreign key is checked at COMMIT: the shared transaction fails as a
    # whole, not at any caller's statement. Each caller is then run in its own.
    def orphan(conn: Connection) -> int:
        conn.execute(text("PRAGMA defer_foreign_keys = ON"))
        conn.execute(text("INSERT INTO item (id, parent) VALUES (7, 99)"))
        return 7

    group = GroupCommit(engine)
    callers = Callers(group)
    callers.start([insert(1), insert(2), orphan, insert(3)])
    outcomes = callers.finish()
    assert (outcomes[0], outcomes[1], outcomes[3]) == (1, 2, 3)
    assert "FOREIGN KEY" in str(outcomes[2])
    assert stored(engine) == [1, 2, 3]
    # The held one, then the shared one that failed (its callers then ran alone).
    assert group.transactions == 2 and group.calls == 4


def test_a_lost_connection_fails_every_caller_of_the_transaction(engine: Engine) -> None:
    def loses_the_connection(conn: Connection) -> int:
        conn.invalidate()
        raise OperationalError("INSERT", {}, ConnectionError("server closed the connection"))

    group = GroupCommit(engine)
    callers = Callers(group)
    callers.start([insert(1), insert(2), loses_the_connection, insert(3)])
    outcomes = callers.finish()
    assert outcomes[0] == 1
    assert all(isinstance(outcomes[index], OperationalError) for index in (1, 2, 3))
    assert stored(engine) == [1]  # none of the lost transaction's writes
    assert group.run(insert(4)) == 4  # and the group goes on
    assert stored(engine) == [1, 4]


def test_an_interrupted_leader_leaves_no_caller_waiting(engine: Engine) -> None:
    class Interrupted(BaseException):
        pass

    def interrupted(conn: Connection) -> int:
        raise Interrupted()

    group = GroupCommit(engine)
    callers = Callers(group)
    callers.start([insert(1), interrupted, insert(2)])
    outcomes = callers.finish()
    assert outcomes[0] == 1
    # The queued caller that led the next transaction was interrupted in it; its
    # neighbour learns it too, rather than waiting for ever or reading a None.
    assert isinstance(outcomes[1], Interrupted) and isinstance(outcomes[2], Interrupted)
    assert group.run(insert(3)) == 3
