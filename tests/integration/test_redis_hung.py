"""A hung Redis (it accepts connections and never answers) hangs no run and no waiter.

The orchestrator's Redis is a server of the test's own, stopped with SIGSTOP after a first
run warmed every connection: the kernel still accepts and buffers, nothing replies. With
``ORCH_REDIS_TIMEOUT`` at 1 s each Redis call fails within about that, is logged and
skipped (stream events dropped, the completion notice not sent), so a run whose steps use
nothing of Redis still finishes and ``RunHandle.wait`` returns by re-reading the DB.
Without a timeout of its own a call blocks for redis-py's default: for ever before
redis-py 8, 5 s since (and a blocking stream read longer than that then fails instead of
returning nothing: the second test).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestration import Orchestrator, RunStatus, Workflow
from orchestration.core.settings import EMBEDDED_BROKER, Settings
from tests.support.own_redis import OwnRedis
from tests.support.polling import wait_until

TIMEOUT_S = 1.0  # ORCH_REDIS_TIMEOUT here
QUIET_BLOCK_S = 6.0  # above redis-py 8's default socket timeout (5 s)
DEADLINE_S = 60.0  # generous: a few calls of TIMEOUT_S each, on a loaded machine


def orchestrator(server: OwnRedis, tmp_path: Path) -> Orchestrator:
    # The embedded default (in-process broker and worker): Redis holds the breakers, the
    # run stream and the completion notices, nothing Celery needs.
    return Orchestrator(Settings(broker_url=EMBEDDED_BROKER, result_backend=None,
                                 redis_url=server.url, redis_timeout=TIMEOUT_S, imports=[],
                                 database_url=f"sqlite:///{tmp_path / 'r.db'}"))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.kill()


def test_a_run_finishes_and_its_wait_returns_while_redis_hangs(server: OwnRedis,
                                                                tmp_path: Path) -> None:
    app = orchestrator(server, tmp_path)
    flow = Workflow("it_redis_hung", app=app)

    @flow.task
    def echo(text: str) -> str:
        return text.upper()

    flow.validate()
    completions = app.store.completions
    notified: list[str] = []  # runs whose notice returned (sent or failed)
    notify = completions.notify

    def spy(run_id: str, status: str) -> None:
        notify(run_id, status)
        notified.append(run_id)

    completions.notify = spy  # type: ignore[method-assign]
    try:
        warm = flow.submit(text="warm")  # opens the connections the hung server keeps
        assert warm.wait(timeout=DEADLINE_S).status is RunStatus.SUCCEEDED
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)

        handle = flow.submit(text="hung")
        # (1) the run finishes: its final commit, then the PUBLISH after it returns (the
        # last step's thread, which wrote the run's stream events first).
        wait_until(lambda: handle.run_id in notified, timeout=DEADLINE_S,
                   what="the run's finalisation to return with Redis hung")
        assert app.store.run_status(handle.run_id) is RunStatus.SUCCEEDED
        # (2) a waiter returns, in a thread of its own so a hang fails the test, not pytest.
        waited: list[RunStatus] = []
        waiter = threading.Thread(target=lambda: waited.append(
            handle.wait(timeout=None).status), daemon=True)
        waiter.start()
        waiter.join(DEADLINE_S)
        assert waited == [RunStatus.SUCCEEDED], "RunHandle.wait hung on the hung Redis"
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
        app.shutdown()


def test_a_blocking_stream_read_longer_than_the_timeout_returns_nothing(
        server: OwnRedis, tmp_path: Path) -> None:
    # A reader may ask to block longer than the socket timeout (handle.stream(poll=...)):
    # each XREAD BLOCK waits at most half of it, so a quiet stream reads as empty rather
    # than failing with a socket timeout (redis-py 8 times out reads after 5 s by default).
    app = orchestrator(server, tmp_path)
    try:
        assert app.run_stream.read("it-quiet-run", block=QUIET_BLOCK_S) == []
    finally:
        app.shutdown()
