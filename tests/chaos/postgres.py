"""A PostgreSQL cluster of a chaos test's own, to stop and start under load.

``initdb`` and ``pg_ctl`` in a temporary directory, run as the ``postgres`` user when
the tests run as root (PostgreSQL refuses to run as root), on a free port: the shared
server on 5432 is never touched.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

PG_USER = "postgres"


def _binary(name: str) -> str:
    """``name`` (initdb, pg_ctl) from PATH, else from the newest /usr/lib/postgresql."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise FileNotFoundError(f"{name} is not installed (PostgreSQL server binaries)")


class PostgresCluster:
    """``initdb`` once, then ``start`` / ``stop`` (immediate: a crash, no checkpoint)."""

    def __init__(self, port: int, parent: Path | None = None) -> None:
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="orch-chaos-pg-", dir=parent))
        self.data = self.dir / "data"
        self.logfile = self.dir / "postgres.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            # PostgreSQL will not run as root: the cluster belongs to the postgres user.
            account = pwd.getpwnam(PG_USER)
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            self.dir.chmod(0o755)
            runuser = shutil.which("runuser")
            self._as_user = ([runuser, "-u", PG_USER, "--"] if runuser
                             else ["su", PG_USER, "-s", "/bin/sh", "-c"])

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the cluster's ``postgres`` database (trust auth)."""
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str, timeout: float = 60) -> str:
        argv = list(command)
        if self._as_user and self._as_user[0] == "su":
            argv = [*self._as_user, " ".join(argv)]
        elif self._as_user:
            argv = [*self._as_user, *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=self.dir)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n"
                                 f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}\n"
                                 f"{self.log_tail()}")
        return done.stdout

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's log."""
        try:
            return self.logfile.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def init(self) -> None:
        """Create the cluster (trust auth, no fsync: it is thrown away)."""
        self._run(_binary("initdb"), "-D", str(self.data), "-U", PG_USER, "--auth=trust",
                  "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        # fsync=off survives what the tests do (the server process killed, the OS up);
        # synchronous_commit=off would not: a commit the engine was told of would vanish
        # with the server, which no engine can survive.
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} "
                   "-c fsync=off -c full_page_writes=off -c max_connections=300")
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-o",
                  options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server: ``immediate`` drops every connection at once, like a crash."""
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        """Stop the server if it runs, and delete the cluster."""
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
