"""A ``redis-server`` of a test's own, to kill and start again mid-test.

Tests that take the broker away never touch the shared server on 6379: they start one on
a free port with no persistence (a restart comes back empty, as a lost broker does).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.processes import free_port

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def redis_server_or_skip() -> str:
    """The ``redis-server`` binary; skip the test without it (fail it when ``CI`` is set)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set and this test needs redis-server", pytrace=False)
        pytest.skip("redis-server is not installed")
    return binary


class OwnRedis:
    """One server on ``port`` (a free one by default): ``start()``, ``kill()``, ``stop()``.

    ``bind``: the addresses it listens on (loopback by default; a multi-host test adds the
    address its network namespaces reach, see ``netns.py``). ``url`` names the first.
    """

    def __init__(self, workdir: Path, port: int | None = None,
                 bind: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.workdir = workdir
        self.port = free_port() if port is None else port
        self.bind = bind
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """URL of the server's DB 0."""
        return f"redis://{self.bind[0]}:{self.port}/0"

    def start(self) -> None:
        """Start the server (each start logs to a file of its own); return once it answers."""
        binary = redis_server_or_skip()
        self.starts += 1
        logfile = self.workdir / f"redis-{self.starts}.log"
        with open(logfile, "ab") as out:
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", *self.bind, "--save", "",
                 # No password on a throw-away server: clients of other addresses too.
                 "--protected-mode", "no" if self.bind != ("127.0.0.1",) else "yes",
                 "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis(host=self.bind[0], port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        self.kill()
                        raise AssertionError(f"redis-server on {self.port} did not start:\n"
                                             f"{logfile.read_text()[-2000:]}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: everything in it (queues, unacked messages, chord counters) is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def own_redis(workdir: Path) -> Iterator[OwnRedis]:
    """A started server of the test's own, stopped at the end."""
    server = OwnRedis(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
