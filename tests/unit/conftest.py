"""Fixtures shared by the unit tests.

Why module-scoped orchestrators: stopping an in-process worker takes ~2 s (Celery's
synchronous consumer loop drains the in-memory broker with a 2 s timeout before it
notices the stop), so end-to-end modules share one orchestrator and declare all their
workflows before its first submit (a workflow declared after the worker started is
never run: see test_embedded.py).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `tests.fakes` and `tests.support` are imported by name
    sys.path.insert(0, str(ROOT))

from tests.fakes.llm_server import FakeLLMClient, FakeLLMServer  # noqa: E402

# -- the fake LLM server (tests/fakes), one per test module ---------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    """A fake LLM server for the test module."""
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture(scope="module")
def control_client(server: FakeLLMServer) -> Iterator[FakeLLMClient]:
    """A client of its control API."""
    with FakeLLMClient(server.url) as client:
        yield client


@pytest.fixture
def control(control_client: FakeLLMClient) -> FakeLLMClient:
    """The module's control client, with every model reset and stats cleared."""
    control_client.reset()
    return control_client
