"""The shared services a test suite needs: reach them, or skip (fail loudly in ``CI``).

Used by the integration and chaos suites' conftests: a Redis DB checked with a ping, a
PostgreSQL database created for a session or a test and dropped afterwards, and the
tails of live workers' logs attached to a failed test's report.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.support.workers import LIVE

POSTGRES_ADMIN_URL = os.environ.get(
    "ORCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def service_missing(suite: str, service: str, url: str, error: BaseException) -> NoReturn:
    """Skip the test for want of ``service``, or fail it when ``CI`` is set."""
    message = f"{service} is not reachable at {url}: {error}"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and the {suite} tests need {service}. {message}", pytrace=False)
    pytest.skip(f"{service} unavailable ({message})")


def redis_or_skip(url: str, suite: str, *, socket_timeout: float) -> redis.Redis:
    """A client of the Redis DB at ``url`` that answered a ping (else skip / fail in CI)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=socket_timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        service_missing(suite, "Redis", url, exc)
    return client


_TAKE_OVER = "if redis.call('get', KEYS[1]) == ARGV[1] then " \
             "return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3]) else return nil end"


def lease_holder() -> str:
    """What a lease holds: this host and process (a dead holder's lease can be taken over)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def take_lease(client: redis.Redis, key: str, seconds: int) -> bool:
    """Take the lease ``key`` unless a live process holds it (a dead holder's is taken over).

    A session killed without its teardown leaves its lease behind for ``seconds``; a holder
    on this host whose process is gone no longer blocks the next session.
    """
    me = lease_holder()
    if client.set(key, me, nx=True, ex=seconds):
        return True
    raw = client.get(key)
    if raw is None:
        return bool(client.set(key, me, nx=True, ex=seconds))
    holder = raw.decode()
    if holder == me:
        return True
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or _alive(int(pid)):
        return False
    return bool(client.eval(_TAKE_OVER, 1, key, holder, me, seconds))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def leased_redis(url: str, suite: str, *, lease_key: str, lease_seconds: int,
                 socket_timeout: float) -> Iterator[redis.Redis]:
    """The Redis DB at ``url``, held by this process for the block: flushed at both ends.

    The lease (``lease_key``, holding this process's id, expiring after ``lease_seconds``)
    keeps two sessions off one DB: taken here unless this process holds it already, kept
    across the first flush; the last flush releases it. Another holder fails the test.
    """
    client = redis_or_skip(url, suite, socket_timeout=socket_timeout)
    if not take_lease(client, lease_key, lease_seconds):
        holder = client.get(lease_key) or b"?"
        client.close()
        pytest.fail(f"{url} is leased by another live {suite} session ({holder.decode()}); "
                    f"delete {lease_key} there if none is running", pytrace=False)
    client.flushdb()
    client.set(lease_key, lease_holder(), ex=lease_seconds)
    try:
        yield client
    finally:
        client.flushdb()  # also releases the lease
        client.close()


def database_url(name: str, admin_url: str = POSTGRES_ADMIN_URL) -> str:
    """The URL of database ``name`` on the server of ``admin_url`` (password kept)."""
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


@contextmanager
def postgres_database(name: str, suite: str, *, before_drop: Callable[[], Any] | None = None,
                      admin_url: str = POSTGRES_ADMIN_URL) -> Iterator[str]:
    """Create database ``name`` (skip / fail in CI without PostgreSQL); drop it at the end.

    ``before_drop`` runs first at the end, to close what still holds connections.
    """
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT",
                          connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        service_missing(suite, "PostgreSQL", make_url(admin_url).render_as_string(), exc)
    try:
        yield database_url(name, admin_url)
    finally:
        if before_drop is not None:
            before_drop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    """On a failure, attach the tail of every live worker's log to the report.

    A hook for the conftests of the suites that start workers (they import it).
    """
    report = yield
    if report.failed and LIVE:
        for worker in LIVE:
            state = "running" if worker.alive else f"exited {worker.process.returncode}"
            report.sections.append(
                (f"worker {worker.nodename} ({state}) log tail", worker.log_tail())
            )
    return report


UNIT_REDIS_URL = "redis://127.0.0.1:6379/13"  # unit tests: every key under a name of its own


def unit_redis() -> redis.Redis:
    """A client of the unit tests' Redis DB (skip without it, fail in CI)."""
    return redis_or_skip(UNIT_REDIS_URL, "unit", socket_timeout=5)


def delete_keys(pattern: str, url: str = UNIT_REDIS_URL) -> None:
    """Delete the keys matching ``pattern``; best effort (Redis may be down)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        for key in client.scan_iter(pattern):
            client.delete(key)
    except redis.RedisError:
        pass
    finally:
        client.close()


def queue_lists(queue: str) -> list[str]:
    """The Redis lists holding one queue's messages: one per priority level (kombu's
    ``priority_steps``; see orchestration/core/priority.py). A normal run's are in ``:9``."""
    return [queue, *(f"{queue}:{level}" for level in range(1, 10))]


def waiting_messages(client: redis.Redis, queue: str) -> int:
    """Messages waiting in ``queue`` on the Redis broker, every priority level counted."""
    return sum(int(client.llen(name)) for name in queue_lists(queue))
