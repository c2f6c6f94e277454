"""Database engines and schema migration.

SQLite gets WAL (readers never block the writer), a busy timeout, and write
transactions that start with ``BEGIN IMMEDIATE`` so two worker processes never
deadlock upgrading read locks. Migrations run on first use under a lock, so several
workers starting at once migrate exactly once.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 7_242_019  # arbitrary app-wide advisory lock id
CONNECT_TIMEOUT = 5  # seconds, PostgreSQL connections
PING_IDLE_S = 1.0  # a pooled connection idle this long is checked before use
T = TypeVar("T")


def is_sqlite(url: str) -> bool:
    """True for a SQLite URL."""
    return make_url(url).get_backend_name() == "sqlite"


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the results database cannot be reached (or is locked) now.

    Such an error is transient: the work is kept and tried again, never recorded as the
    step's failure.
    """
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def create_engines(url: str) -> tuple[Engine, Engine]:
    """A (writer, reader) pair of engines for ``url``; the same engine twice unless SQLite."""
    if not is_sqlite(url):
        parsed = make_url(url)
        # A server that does not answer must not hang a worker: fail fast and retry.
        connect_args = ({} if "connect_timeout" in parsed.query
                        or parsed.get_backend_name() != "postgresql"
                        else {"connect_timeout": CONNECT_TIMEOUT})
        engine = create_engine(url, pool_size=5, max_overflow=10, connect_args=connect_args)
        _ping_when_idle(engine)
        return engine, engine
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    writer = _sqlite_engine(url, immediate=True)
    reader = _sqlite_engine(url, immediate=False)
    return writer, reader


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection at checkout only if it sat idle ``PING_IDLE_S`` or more.

    ``pool_pre_ping`` checks every checkout: a round trip per transaction, a quarter of a
    submit's on PostgreSQL. A connection used a moment ago is almost surely alive; one
    that is not fails its first statement, which invalidates the pool (SQLAlchemy's
    "optimistic" disconnect handling) and :func:`retry_disconnect` runs the work again.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["used_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        used_at = record.info.get("used_at")
        if used_at is None or time.monotonic() - used_at < PING_IDLE_S:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # any failure of the ping: a dead connection
            raise DisconnectionError(f"stale pooled connection: {type(exc).__name__}") from exc
        if not alive:
            raise DisconnectionError("stale pooled connection")


def retry_disconnect(work: Callable[[], T]) -> T:
    """Run ``work``; run it once more if it failed because its connection was dead.

    Only for work that is safe to repeat when the first try's commit is unknown (the
    caller checks: e.g. a duplicate key means the first try committed).
    """
    try:
        return work()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return work()


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    # Pooled: in WAL mode, closing the last connection to a database checkpoints the log
    # and fsyncs (~1.5 ms), so a connection per transaction costs 20x a kept one. Pooled
    # connections must not cross a fork: Store.after_fork() drops the child's pool.
    engine = create_engine(url, pool_size=8, max_overflow=32, pool_timeout=30,
                           connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def alembic_config(url: str) -> Config:
    """The Alembic configuration for the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def schema_is_current(engine: Engine) -> bool:
    """True when the database is at the newest migration."""
    head = ScriptDirectory.from_config(alembic_config(str(engine.url))).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current == head


def upgrade(engine: Engine) -> None:
    """Apply every pending migration, once, even with several processes racing."""
    with _migration_lock(engine):
        if schema_is_current(engine):
            return
        config = alembic_config(engine.url.render_as_string(hide_password=False))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate-lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            try:
                yield
            finally:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_MIGRATION_LOCK}
                )
                connection.commit()
        return
    yield
