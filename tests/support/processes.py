"""Child processes of the test suites: their environment, the ``orchestrate`` CLI, free ports.

A worker, the CLI or a server started by a test runs from the repository root with the
root first on ``PYTHONPATH``, so it imports the test workflow modules by the names the
test gives it in ``ORCH_IMPORTS``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ORCHESTRATE = (sys.executable, "-m", "orchestration.cli")  # the CLI, run as this Python
CLI_TIMEOUT_S = 60.0


def child_env(base: Mapping[str, str] | None = None, *, imports: Iterable[str] = (),
              **extra: str) -> dict[str, str]:
    """``base`` (this process's environment by default) for a child process.

    The repository root goes first on ``PYTHONPATH``, output is unbuffered, each module of
    ``imports`` is added to ``ORCH_IMPORTS`` unless it is there already, then ``extra``
    is applied (it may replace any of these).
    """
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(ROOT), env.get("PYTHONPATH", "")) if part)
    env["PYTHONUNBUFFERED"] = "1"
    wanted = [name for name in env.get("ORCH_IMPORTS", "").split(",") if name]
    wanted += [name for name in imports if name not in wanted]
    if wanted:
        env["ORCH_IMPORTS"] = ",".join(wanted)
    env.update(extra)
    return env


def orchestrate(*args: str, env: Mapping[str, str] | None = None, check: bool = False,
                timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run ``orchestrate ARGS`` to completion (``child_env()`` by default) and return it.

    ``check``: fail with the command's output when it exits non-zero.
    """
    done = subprocess.run([*ORCHESTRATE, *args], cwd=ROOT,
                          env=dict(env) if env is not None else child_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"orchestrate {' '.join(args)} exited {done.returncode}\n"
                             f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-3000:]}")
    return done


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
