"""Assertions about a finished run's recorded steps (unit and integration suites alike)."""

from __future__ import annotations

from itertools import pairwise

from orchestration import RunResult


def assert_in_order(result: RunResult, names: list[str]) -> None:
    """Each step started after the one before it finished (recorded in the results DB)."""
    for before, after in pairwise([result.steps[name] for name in names]):
        assert before.started_at is not None and before.finished_at is not None, before
        assert after.started_at is not None, after
        assert before.started_at <= before.finished_at <= after.started_at, (before, after)
