"""A PostgreSQL cluster of a test's own, to stop and start mid-test.

Fault tests never touch the shared server on 5432: they ``initdb`` a cluster in a
temporary directory (as the ``postgres`` user when run as root), start it on a free port
with ``pg_ctl`` and stop it (``-m immediate``, like a crash) and start it again.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import free_port

START_TIMEOUT_S = 30.0


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                                   reverse=True)), None)
    if found is None:
        raise FileNotFoundError(f"{name} (PostgreSQL server binaries) is not installed")
    return found


class OwnPostgres:
    """One throw-away cluster: ``start()``, ``stop()`` (immediate), ``url``."""

    def __init__(self, root: Path, listen: tuple[str, ...] = ("127.0.0.1",),
                 trust: str | None = None) -> None:
        """``listen``: addresses to listen on (loopback first); ``trust``: a network (CIDR)
        whose clients are trusted too, e.g. the namespaces of a multi-host test."""
        self.root = root
        self.listen = listen
        self.trust = trust
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        self._initdb()

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the cluster's ``postgres`` database."""
        return self.url_at("127.0.0.1")

    def url_at(self, host: str) -> str:
        """SQLAlchemy URL of the cluster's ``postgres`` database, reached at ``host``."""
        return f"postgresql+psycopg://postgres@{host}:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        kwargs: dict[str, object] = {}
        if self._as_postgres:
            account = pwd.getpwnam("postgres")
            kwargs = {"user": account.pw_uid, "group": account.pw_gid}
        subprocess.run(command, check=True, capture_output=True, timeout=120, **kwargs)  # type: ignore[call-overload]

    def _initdb(self) -> None:
        if self._as_postgres:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync")
        if self.trust is not None:
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {self.trust} trust\n")

    def start(self) -> None:
        """Start the server and wait until it accepts connections.

        ``fsync=off`` survives what tests do (the server killed, the OS up); never
        ``synchronous_commit=off``, which loses commits the engine was told of.
        """
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", str(int(START_TIMEOUT_S)), "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses={','.join(self.listen)} "
                  "-c fsync=off -c max_connections=300", "start")

    def stop(self) -> None:
        """Stop the server at once (``-m immediate``: connections drop as in a crash)."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def accepts(self) -> bool:
        """True while the server's port takes connections."""
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def own_postgres(listen: tuple[str, ...] = ("127.0.0.1",),
                 trust: str | None = None) -> Iterator[OwnPostgres]:
    """A started cluster of the test's own, stopped and removed at the end."""
    try:
        _bin("initdb")
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and this test needs PostgreSQL's server binaries: {exc}",
                        pytrace=False)
        pytest.skip(str(exc))
    root = Path(tempfile.mkdtemp(prefix="orch-own-pg-"))
    os.chmod(root, 0o755)
    server = OwnPostgres(root, listen, trust)
    server.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.accepts():
        if time.monotonic() > deadline:
            pytest.fail(f"own PostgreSQL did not start:\n{server.log_tail()}", pytrace=False)
        time.sleep(0.1)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
