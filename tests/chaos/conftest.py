"""Fixtures of the chaos suite: its own Redis DB, a fresh PostgreSQL database per test.

- ``counters``: DB ``ORCH_CHAOS_REDIS_URL`` (default ``redis://127.0.0.1:6379/12``) of
  the shared Redis server (the integration suite leases 15, 11, 10, 9, 8), leased by
  one chaos test at a time and flushed at its start and end. Most scenarios use it
  as broker and backend too; the broker-loss ones keep only their instrumentation there
  (their broker is a ``redis-server`` of their own, killed mid-test).
- ``results_db``: a PostgreSQL database created for the test on the server of
  ``ORCH_TEST_POSTGRES_URL`` and dropped afterwards (the results-DB outage scenario
  uses a PostgreSQL cluster of its own instead: ``postgres.py``).

What each scenario must show is in ``verdict.py``.

A missing service skips the test, or fails it loudly when ``CI`` is set. Nothing here
touches ``ORCH_*`` in this process: every engine process gets its environment explicitly.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, create_engine

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import services  # noqa: E402
from tests.support.services import pytest_runtest_makereport  # noqa: E402, F401 - a hook
from tests.support.workers import Workers  # noqa: E402

COUNTER_REDIS_URL = os.environ.get("ORCH_CHAOS_REDIS_URL", "redis://127.0.0.1:6379/12")
LEASE_KEY = "orchestration:chaos-lease"  # one chaos test at a time owns the DB
LEASE_SECONDS = 900


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: kills workers or the broker under load (make chaos; minutes, "
                   "needs Redis, redis-server and PostgreSQL)")


def _asked_for_chaos(config: pytest.Config) -> bool:
    """``tests/chaos`` (or a file in it) named, ``-m chaos``, or ``ORCH_CHAOS=1``."""
    here = Path(__file__).resolve().parent
    for arg in config.args:
        path = Path(str(arg).split("::", 1)[0]).resolve()
        if path == here or here in path.parents:
            return True
    return "chaos" in (config.option.markexpr or "") or os.environ.get("ORCH_CHAOS") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A bare ``pytest`` (testpaths = tests) does not start minutes of chaos by surprise."""
    if _asked_for_chaos(config):
        return
    skip = pytest.mark.skip(reason="chaos tests run with `make chaos` "
                                   "(or pytest tests/chaos, -m chaos, ORCH_CHAOS=1)")
    for item in items:
        if item.get_closest_marker("chaos"):
            item.add_marker(skip)


@pytest.fixture
def counters() -> Iterator[redis.Redis]:
    """The chaos Redis DB, flushed before and after the test."""
    with services.leased_redis(COUNTER_REDIS_URL, "chaos", lease_key=LEASE_KEY,
                               lease_seconds=LEASE_SECONDS, socket_timeout=10) as client:
        yield client


@pytest.fixture
def results_db() -> Iterator[tuple[str, Engine]]:
    """(URL, engine) of a PostgreSQL database of this test, dropped at the end."""
    name = f"orch_chaos_{uuid.uuid4().hex[:12]}"
    with services.postgres_database(name, "chaos") as url:
        engine = create_engine(url)
        try:
            yield url, engine
        finally:
            engine.dispose()


@pytest.fixture
def worker_pool(request: pytest.FixtureRequest) -> Iterator[Workers]:
    """Workers of one test (environment set by the test); all stopped at the end.

    Their logs go to a directory that outlives the session (pytest's own temporary
    directories are rotated by concurrent sessions): the evidence of a failure.
    """
    base = Path(os.environ.get("ORCH_CHAOS_LOG_DIR") or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix=f"orch-chaos-{request.node.name[:40]}-", dir=base))
    pool = Workers(log_dir, env={})
    try:
        yield pool
    finally:
        pool.stop_all()
