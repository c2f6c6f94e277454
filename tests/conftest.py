"""Shared test configuration: the project's own testing helpers are the users' ones."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import signals

pytest_plugins = ["orchestration.testing"]


@pytest.fixture
def published() -> Iterator[list[tuple[str, Any]]]:
    """``(task name, body)`` of every Celery message published while the test runs."""
    seen: list[tuple[str, Any]] = []

    def record(sender: str | None = None, body: Any = None, **_: Any) -> None:
        seen.append((str(sender), body))

    signals.before_task_publish.connect(record, weak=False)
    try:
        yield seen
    finally:
        signals.before_task_publish.disconnect(record)
