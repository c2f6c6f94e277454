"""Run workflows end to end in your own test suite, with no servers.

Enable the fixtures with ``pytest_plugins = ["orchestration.testing"]`` in a conftest:

- ``orchestrator``: a fresh :class:`Orchestrator` on the in-process broker and a
  throwaway SQLite database; define workflows with ``Workflow(..., app=orchestrator)``.
- ``embedded_default``: the default orchestrator (the one module-level workflows bind
  to) re-pointed at a throwaway database and the in-process broker for one test.

Outside pytest, :func:`embedded_orchestrator` is the same as a context manager.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestration.app import Orchestrator, default_orchestrator
from orchestration.core.settings import EMBEDDED_BROKER, Settings


def embedded_settings(directory: Path, **overrides: Any) -> Settings:
    """Settings for an in-process run with its results DB under ``directory``."""
    values: dict[str, Any] = {
        "broker_url": EMBEDDED_BROKER,
        "result_backend": None,
        "database_url": f"sqlite:///{directory / 'orchestration.db'}",
        "imports": [],
        "pipelines": None,
        "embedded_concurrency": 4,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.contextmanager
def embedded_orchestrator(directory: Path | None = None,
                          **overrides: Any) -> Iterator[Orchestrator]:
    """A fresh orchestrator with an in-process worker; stopped on exit."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        orchestrator = Orchestrator(embedded_settings(directory, **overrides))
        try:
            yield orchestrator
        finally:
            orchestrator.shutdown()


@pytest.fixture
def orchestrator(tmp_path: Path) -> Iterator[Orchestrator]:
    """A fresh orchestrator on the in-process broker and a throwaway SQLite DB."""
    with embedded_orchestrator(tmp_path) as orch:
        yield orch


@pytest.fixture
def embedded_default(tmp_path: Path) -> Iterator[Orchestrator]:
    """The default orchestrator, re-pointed at a throwaway DB and the in-process broker."""
    orch = default_orchestrator()
    previous = orch.settings
    orch.reconfigure(embedded_settings(tmp_path))
    try:
        yield orch
    finally:
        orch.reconfigure(previous)
