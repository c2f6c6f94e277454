"""Group commit on PostgreSQL (store/group_commit.py): a caller's error inside a shared
transaction (which PostgreSQL aborts whole) or at its COMMIT has each caller run again
alone, so the error is that caller's only; a backend killed mid-transaction fails every
caller of it and no other.

Needs the PostgreSQL server of ``ORCH_TEST_POSTGRES_URL``; the tables live in a schema
of the test's own. The backend is terminated with ``pg_terminate_backend``: the server
itself never stops.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from orchestration.store.engine import create_engines
from orchestration.store.group_commit import GroupCommit
from tests.unit.store.test_group_commit import Callers

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine(postgres_database: str) -> Iterator[Engine]:
    schema = f"gc_{uuid.uuid4().hex[:10]}"
    admin = create_engines(postgres_database)[0]
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
        conn.execute(text(f"CREATE TABLE {schema}.parent (id INTEGER PRIMARY KEY)"))
        conn.execute(text(f"CREATE TABLE {schema}.item (id INTEGER PRIMARY KEY, parent "
                          f"INTEGER REFERENCES {schema}.parent (id) "
                          "DEFERRABLE INITIALLY DEFERRED)"))
    engine = _in_schema(postgres_database, schema)
    yield engine
    engine.dispose()
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def _in_schema(url: str, schema: str) -> Engine:
    engine = create_engines(url)[0]

    @event.listens_for(engine, "connect")
    def _search_path(dbapi_connection: object, _record: object) -> None:
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        cursor.execute(f"SET search_path TO {schema}")
        cursor.close()
        dbapi_connection.commit()  # type: ignore[attr-defined]

    return engine


def insert(value: int, parent: int | None = None) -> Callable[[Connection], int]:
    def work(conn: Connection) -> int:
        conn.execute(text("INSERT INTO item (id, parent) VALUES (:v, :p)"),
                     {"v": value, "p": parent})
        return value
    return work


def stored(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return sorted(conn.execute(text("SELECT id FROM item")).scalars())


def test_an_error_in_a_shared_transaction_is_its_callers_alone(engine: Engine) -> None:
    group = GroupCommit(engine)
    callers = Callers(group)
    # The duplicate key aborts PostgreSQL's transaction: each caller runs again alone.
    callers.start([insert(1), insert(2), insert(2), insert(3)])
    outcomes = callers.finish()
    assert (outcomes[0], outcomes[1], outcomes[3]) == (1, 2, 3)
    assert "duplicate key" in str(outcomes[2])
    assert stored(engine) == [1, 2, 3]
    assert (group.transactions, group.calls) == (2, 4)


def test_a_commit_that_fails_runs_each_caller_again_alone(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO parent (id) VALUES (1)"))
    group = GroupCommit(engine)
    callers = Callers(group)
    # A deferred foreign key is checked at COMMIT, after every caller's work ran.
    callers.start([insert(1, 1), insert(2, 1), insert(7, 99), insert(3, 1)])
    outcomes = callers.finish()
    assert (outcomes[0], outcomes[1], outcomes[3]) == (1, 2, 3)
    assert "foreign key" in str(outcomes[2])
    assert stored(engine) == [1, 2, 3]


def test_a_killed_backend_fails_every_caller_of_its_transaction_only(engine: Engine) -> None:
    def killed(conn: Connection) -> int:
        conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        return 0

    group = GroupCommit(engine)
    callers = Callers(group)
    callers.start([insert(1), insert(2), killed, insert(3)])
    outcomes = callers.finish()
    assert outcomes[0] == 1
    for index in (1, 2, 3):  # the commit never happened: each learns its connection died
        assert isinstance(outcomes[index], DBAPIError), outcomes[index]
        assert outcomes[index].connection_invalidated
    assert stored(engine) == [1]
    assert group.run(insert(4)) == 4  # a fresh connection: the group goes on
    assert stored(engine) == [1, 4]
