"""The run stream's writer: a batch is written in as few calls as keep each run in order."""

from __future__ import annotations

from typing import Any

from orchestration.execute.live import _Item, write_groups


def item(run: str, kind: str, once: bool = False) -> _Item:
    return _Item(run, {"type": kind}, once=once)


def flat(groups: list[Any]) -> dict[str, list[str]]:
    """Each run's events in the order the calls write them (events, then once-events)."""
    seen: dict[str, list[str]] = {}
    for pending, once in groups:
        for run, event in [*pending, *once]:
            seen.setdefault(run, []).append(event["type"])
    return seen


def test_many_runs_ending_together_are_one_write() -> None:
    batch = []
    for run in "abcdef":
        batch += [item(run, "step_started"), item(run, "step_finished"),
                  item(run, "run_finished", once=True)]
    groups = write_groups(batch)
    assert len(groups) == 1
    assert flat(groups) == {run: ["step_started", "step_finished", "run_finished"]
                            for run in "abcdef"}


def test_an_event_after_its_own_runs_once_event_starts_the_next_write() -> None:
    batch = [item("a", "step_started"), item("a", "run_finished", once=True),
             item("b", "step_started"), item("a", "late"), item("b", "run_finished", once=True)]
    groups = write_groups(batch)
    assert len(groups) == 2
    assert flat(groups) == {"a": ["step_started", "run_finished", "late"],
                            "b": ["step_started", "run_finished"]}
    assert groups[0] == ([("a", {"type": "step_started"}), ("b", {"type": "step_started"})],
                         [("a", {"type": "run_finished"})])


def test_nothing_queued_writes_nothing() -> None:
    assert write_groups([]) == []
