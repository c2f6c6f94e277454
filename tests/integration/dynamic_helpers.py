"""Helpers of the dynamic-workflow tests: the ``orchestrate`` CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 60.0


def cli_env(extra_imports: tuple[str, ...] = ()) -> dict[str, str]:
    """The test process's environment (its ``ORCH_*``), importable from the repo root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(ROOT), env.get("PYTHONPATH", "")) if part)
    if extra_imports:
        imports = [name for name in env.get("ORCH_IMPORTS", "").split(",") if name]
        env["ORCH_IMPORTS"] = ",".join([*imports, *extra_imports])
    return env


def orchestrate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``orchestrate <args>`` (the installed console script) and return what it did."""
    script = Path(sys.executable).with_name("orchestrate")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "orchestration.cli"]
    return subprocess.run([*command, *args], cwd=ROOT, env=env or cli_env(),
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)
