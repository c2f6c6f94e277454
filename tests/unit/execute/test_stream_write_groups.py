"""The run stream's writer: a batch is written in as few calls as keep each run in order."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestration.execute.live import StreamWriter, _Item, write_groups


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


class _SlowStream:
    """A stream whose writes wait for ``go``; what it stored, in order."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.stored: list[tuple[str, str]] = []

    def append_all(self, items: Any, once: Any = ()) -> None:
        self.go.wait(30)
        self.stored += [(run, event["type"]) for run, event in [*items, *once]]


def test_a_write_without_waiting_returns_first_and_a_flush_waits_for_it() -> None:
    stream = _SlowStream()
    writer = StreamWriter(stream)  # type: ignore[arg-type]
    writer.write("a", [{"type": "step_finished"}], once=[{"type": "run_finished"}],
                 wait=False)  # returns although nothing can be written yet
    assert stream.stored == []
    assert not writer.flush(timeout=0.05)  # still held
    stream.go.set()
    assert writer.flush()
    assert stream.stored == [("a", "step_finished"), ("a", "run_finished")]
    assert writer.flush()  # nothing left: at once


def test_only_the_embedded_default_skips_the_wait_and_its_shutdown_flushes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step of an embedded run runs in this process, whose one writer keeps the
    order: no step waits for its write, and shutdown writes what is queued. A worker's
    step (the next may run in another process) still waits."""
    from orchestration import app as app_module
    from orchestration.app import Orchestrator
    from orchestration.core.settings import EMBEDDED_BROKER, Settings

    task = SimpleNamespace(request=SimpleNamespace(hostname="h", id="t"), name="f.s")
    flushed: list[Any] = []
    monkeypatch.setattr(app_module, "flush", flushed.append)
    database = f"sqlite:///{tmp_path / 'r.db'}"
    embedded = Orchestrator(Settings(broker_url=EMBEDDED_BROKER, result_backend=None,
                                     imports=[], database_url=database))
    try:
        assert embedded.delivery(task).stream_in_process
        embedded.embedded_worker()  # started, as by a first run
        stream = embedded.run_stream
    finally:
        embedded.shutdown()
    assert flushed == [stream]
    worker = Orchestrator(Settings(broker_url="redis://127.0.0.1:1/0", result_backend=None,
                                   imports=[], database_url=database))
    try:
        assert not worker.delivery(task).stream_in_process
    finally:
        worker.shutdown()
