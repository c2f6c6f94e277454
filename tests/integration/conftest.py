"""Session fixtures of the integration suite: services, a fresh database, real workers.

The ``ORCH_*`` variables are set when this file is imported, before anything builds the
default orchestrator (it reads them once, lazily) and before the test workflows module
is imported, so the test process and every worker it starts share one configuration:

- broker and result backend: Redis ``ORCH_TEST_REDIS_URL``; by default the first free
  of DBs 15, 11, 10, 9 and 8 on 127.0.0.1:6379, leased for the session (a key in that
  DB with a 30-minute TTL, dropped at the end), so two integration sessions on one machine
  never share queues; flushed at session start and end;
- results database: a PostgreSQL database created for this session on the server of
  ``ORCH_TEST_POSTGRES_URL`` and dropped at the end.

A missing service skips the tests that need it (marker ``redis`` / ``postgres``), or
fails them loudly when ``CI`` is set.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # workers and this process import test workflows by name
    sys.path.insert(0, str(ROOT))

from tests.support import services  # noqa: E402
from tests.support.services import pytest_runtest_makereport  # noqa: E402, F401 - a hook
from tests.support.workers import Workers  # noqa: E402

LEASE_KEY = "orchestration:test-session-lease"
LEASE_SECONDS = 1800


def _lease_redis_db() -> str:
    """The first Redis DB no other integration session holds (15 if Redis is down)."""
    for db in (15, 11, 10, 9, 8):
        url = f"redis://127.0.0.1:6379/{db}"
        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=1)
            if services.take_lease(client, LEASE_KEY, LEASE_SECONDS):
                return url
        except redis.RedisError:
            return "redis://127.0.0.1:6379/15"  # the service check reports it
    raise RuntimeError("every integration Redis DB (15, 11, 10, 9, 8) is leased by a "
                       f"live session; delete {LEASE_KEY} if none is running")


REDIS_URL = os.environ.get("ORCH_TEST_REDIS_URL") or _lease_redis_db()
SESSION_DATABASE = f"orch_it_{uuid.uuid4().hex[:12]}"
DATABASE_URL = services.database_url(SESSION_DATABASE)
INLINE_RETRY_LIMIT_S = 0.2
WORKFLOWS = "tests.integration.support.workflows"  # the package of the test workflows

os.environ.update({
    "ORCH_BROKER_URL": REDIS_URL,
    "ORCH_RESULT_BACKEND": REDIS_URL,
    "ORCH_REDIS_URL": REDIS_URL,
    "ORCH_DATABASE_URL": DATABASE_URL,
    # What every worker imports: the test workflows and the shipped support workflow.
    "ORCH_IMPORTS": ",".join([*(f"{WORKFLOWS}.{name}" for name in (
        "common", "dynamic", "durability", "reconcile", "liveness", "reliability",
        "packs", "forks")),
        "tasks.support.workflow"]),
    "ORCH_INLINE_RETRY_LIMIT": str(INLINE_RETRY_LIMIT_S),
})
# Hermetic: LLM steps answer from the local provider, never a real API.
os.environ.pop("OPENAI_API_KEY", None)


# -- services ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_service() -> Iterator[redis.Redis]:
    """The session's Redis DB, flushed at start (keeping the lease) and at the end."""
    with services.leased_redis(REDIS_URL, "integration", lease_key=LEASE_KEY,
                               lease_seconds=LEASE_SECONDS, socket_timeout=5) as client:
        yield client


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A PostgreSQL database of this session (its URL), dropped at the end."""
    with services.postgres_database(SESSION_DATABASE, "integration",
                                    before_drop=_close_default_store) as url:
        yield url


def _close_default_store() -> None:
    from orchestration.app import default_orchestrator

    default_orchestrator().reset_store()


@pytest.fixture(autouse=True)
def _require_services(request: pytest.FixtureRequest) -> None:
    """Tests marked ``redis`` / ``postgres`` / ``workers`` get (or skip without) them."""
    if request.node.get_closest_marker("redis"):
        request.getfixturevalue("redis_service")
    if request.node.get_closest_marker("postgres"):
        request.getfixturevalue("postgres_database")
    if request.node.get_closest_marker("workers"):
        request.getfixturevalue("workers")


# -- workers -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def worker_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where every worker of the session writes its log."""
    return tmp_path_factory.mktemp("worker-logs")


@pytest.fixture(scope="session")
def workers(redis_service: redis.Redis, postgres_database: str,
            worker_logs: Path) -> Iterator[Workers]:
    """The session's workers: prefork (-c 2) on the common queues, threads (-c 4) on its own."""
    from orchestration import default_orchestrator
    from tests.integration.support.workflows.common import OTHER_QUEUE, QUEUE, THREADS_QUEUE

    settings = default_orchestrator().settings
    assert settings.database_url == postgres_database, (
        "the default orchestrator was built before the integration conftest set ORCH_*; "
        "run the integration suite in its own pytest session"
    )
    pool = Workers(worker_logs)
    try:
        prefork = pool.start("it-prefork", [QUEUE, OTHER_QUEUE], pool="prefork",
                             concurrency=2, wait=False)
        threads = pool.start("it-threads", [THREADS_QUEUE], pool="threads", concurrency=4,
                             wait=False)
        pool.wait_ready(prefork)
        pool.wait_ready(threads)
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture
def extra_workers(workers: Workers, worker_logs: Path) -> Iterator[Workers]:
    """Start more workers inside a test; they are stopped when the test ends."""
    pool = Workers(worker_logs)
    try:
        yield pool
    finally:
        pool.stop_all()
