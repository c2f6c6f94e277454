"""A run's completion notice follows its ``run_finished`` event; embedded steps do not wait
for their stream writes (their one writer keeps the order), and shutdown flushes them.

A caller woken from ``handle.wait()`` by the notice finds the run's stream complete: the
notice is sent by the stream's writer once ``run_finished`` is stored (or dropped). (A
wait that starts after the run ended reads the terminal status at once, and may still
beat the write by a moment; ``handle.stream()`` reads until ``run_finished``.)
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestration import Workflow
from orchestration.app import Orchestrator
from orchestration.core.settings import EMBEDDED_BROKER, Settings
from orchestration.core.stream_events import RUN_FINISHED, STEP_FINISHED
from orchestration.execute.live import StreamWriter
from orchestration.testing import embedded_orchestrator
from tests.support.polling import wait_until


class _HeldStream:
    """A stream whose writes wait for ``go`` (and fail with ``broken``); what it stored."""

    def __init__(self, broken: bool = False) -> None:
        self.go = threading.Event()
        self.broken = broken
        self.stored: list[tuple[str, str]] = []

    def append_all(self, items: Any, once: Any = ()) -> None:
        self.go.wait(30)
        if self.broken:
            raise ConnectionError("stream down")
        self.stored += [(run, event["type"]) for run, event in [*items, *once]]


def test_a_write_without_waiting_returns_first_and_a_flush_waits_for_it() -> None:
    stream = _HeldStream()
    writer = StreamWriter(stream)  # type: ignore[arg-type]
    writer.write("a", [{"type": STEP_FINISHED}], once=[{"type": RUN_FINISHED}],
                 wait=False)  # returns although nothing can be written yet
    assert stream.stored == []
    assert not writer.flush(timeout=0.05)  # still held
    stream.go.set()
    assert writer.flush()
    assert stream.stored == [("a", STEP_FINISHED), ("a", RUN_FINISHED)]
    assert writer.flush()  # nothing left: at once


@pytest.mark.parametrize("broken", [False, True], ids=["written", "stream-down"])
def test_then_runs_after_the_write_even_when_the_write_fails(broken: bool) -> None:
    stream = _HeldStream(broken=broken)
    writer = StreamWriter(stream)  # type: ignore[arg-type]
    seen: list[list[tuple[str, str]]] = []
    called = threading.Event()

    def then() -> None:
        seen.append(list(stream.stored))
        called.set()

    writer.write("a", [{"type": STEP_FINISHED}], once=[{"type": RUN_FINISHED}],
                 wait=False, then=then)
    assert not called.wait(0.05)  # not before the write
    stream.go.set()
    assert called.wait(10)
    assert seen == [[] if broken else [("a", STEP_FINISHED), ("a", RUN_FINISHED)]]


def test_a_callback_that_raises_does_not_stop_the_writer() -> None:
    stream = _HeldStream()
    stream.go.set()
    writer = StreamWriter(stream)  # type: ignore[arg-type]

    def broken() -> None:
        raise RuntimeError("notice failed")

    writer.write("a", [{"type": STEP_FINISHED}], wait=False, then=broken)
    writer.write("b", [{"type": STEP_FINISHED}])  # waits: the writer is still there
    assert stream.stored == [("a", STEP_FINISHED), ("b", STEP_FINISHED)]


@pytest.fixture
def orch(tmp_path: Path) -> Iterator[Orchestrator]:
    with embedded_orchestrator(tmp_path) as orchestrator:
        yield orchestrator


def _notice_sees_stream(orch: Orchestrator) -> dict[str, list[str]]:
    """Make each completion notice note the event types its run's stream holds by then."""
    completions = orch.store.completions
    seen: dict[str, list[str]] = {}
    notify: Callable[[str, str], None] = completions.notify

    def noting(run_id: str, status: str) -> None:
        seen[run_id] = [body["type"] for _, body in orch.run_stream.read(run_id)]
        notify(run_id, status)

    completions.notify = noting  # type: ignore[method-assign]
    return seen


def test_the_completion_notice_follows_run_finished(orch: Orchestrator) -> None:
    """Both ways a run ends: its last step's record, and a finalize (last step skipped)."""
    linear = Workflow("notice_linear", app=orch)

    @linear.task
    def first(x: int) -> int:
        return x + 1

    @linear.task
    def second(first: int) -> int:
        return first * 2

    skipped = Workflow("notice_skipped_last", app=orch)

    @skipped.task
    def start(x: int) -> int:
        return x

    @skipped.task(when=lambda start: start > 10)
    def big(start: int) -> int:
        return start

    seen = _notice_sees_stream(orch)
    handles = [linear.submit(x=i) for i in range(5)] + [skipped.submit(x=1)]
    for handle in handles:
        handle.wait(timeout=30)
    # A wait that began after its run ended returned without the notice: it still comes.
    wait_until(lambda: all(handle.run_id in seen for handle in handles), timeout=30,
               what="every run's completion notice")
    for handle in handles:  # a waiter woken by the notice finds the stream complete
        assert seen[handle.run_id][-1] == RUN_FINISHED, seen[handle.run_id]


def test_only_the_embedded_default_skips_the_wait_and_its_shutdown_flushes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step of an embedded run runs in this process, whose one writer keeps the
    order: no step waits for its write, and shutdown writes what is queued. A worker's
    step (the next may run in another process) still waits."""
    from orchestration import app as app_module

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


def test_a_worker_step_waits_for_its_events_only_when_its_outcome_leaves_the_process(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a Celery worker (``stream_in_process`` off): a step whose outcome goes on in
    another message waits for its ``step_finished``; a fused chain's inner steps (their
    next step runs in this process) and the run's last step (nothing goes on) do not."""
    from orchestration.execute import runtime

    waits: list[tuple[str, bool]] = []
    original = runtime.record_step_finished

    def noting(stream: Any, run_id: str, step: str, *args: Any, **kwargs: Any) -> None:
        waits.append((step, kwargs["wait"]))
        original(stream, run_id, step, *args, **kwargs)

    monkeypatch.setattr(runtime, "record_step_finished", noting)
    delivery = orch.delivery

    def as_worker(task: Any) -> Any:
        return dataclasses.replace(delivery(task), stream_in_process=False)

    monkeypatch.setattr(orch, "delivery", as_worker)
    fused = Workflow("waits_fused", app=orch)  # one queue: one message for all three

    @fused.task
    def a(x: int) -> int:
        return x

    @fused.task
    def b(a: int) -> int:
        return a

    @fused.task
    def c(b: int) -> int:
        return b

    split = Workflow("waits_split", app=orch)  # two queues: two messages

    @split.task(queue="waits.one")
    def first(x: int) -> int:
        return x

    @split.task(queue="waits.two")
    def second(first: int) -> int:
        return first

    fused.submit(x=1).wait(timeout=30)
    assert waits == [("a", False), ("b", False), ("c", False)]
    waits.clear()
    split.submit(x=1).wait(timeout=30)
    assert waits == [("first", True), ("second", False)]


def test_a_batched_steps_runs_are_written_with_one_wait_before_their_messages_go_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestration.worker import batching

    seen: list[tuple[str, Any]] = []
    original_record, original_flush = batching.record_step_finished, batching.flush

    def record(*args: Any, **kwargs: Any) -> None:
        seen.append(("record", kwargs.get("wait", True)))
        original_record(*args, **kwargs)

    def flush(stream: Any) -> bool:
        seen.append(("flush", None))
        return original_flush(stream)

    def send_on(host: Any, elements: list[Any]) -> None:
        seen.append(("send", len(elements)))
        original_send(host, elements)

    original_send = batching.send_on
    monkeypatch.setattr(batching, "record_step_finished", record)
    monkeypatch.setattr(batching, "flush", flush)
    monkeypatch.setattr(batching, "send_on", send_on)
    with embedded_orchestrator(tmp_path) as orch:
        batched = Workflow("waits_batched", inputs=["n"], app=orch)

        @batched.task(batch_size=3, batch_wait=3600)
        def double(n: list[int]) -> list[int]:
            return [x * 2 for x in n]

        handles = [batched.submit(n=n) for n in range(3)]
        assert [h.wait(timeout=30).outputs["double"] for h in handles] == [0, 2, 4]
    assert seen == [("record", False)] * 3 + [("flush", None), ("send", 3)]


def test_a_fused_message_handing_its_run_on_stores_the_events_it_did_not_wait_for(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a Celery worker: the first of two fused steps does not wait for its write;
    when the second parks the run (here: waits for a person), the message flushes the
    writer before the run can go on in another process."""
    from orchestration.worker import step_task

    flushed: list[Any] = []
    original = step_task.flush
    monkeypatch.setattr(step_task, "flush",
                        lambda stream: flushed.append(stream) or original(stream))
    delivery = orch.delivery
    monkeypatch.setattr(orch, "delivery", lambda task: dataclasses.replace(
        delivery(task), stream_in_process=False))
    gated = Workflow("waits_gated", app=orch)

    @gated.task
    def draft(x: int) -> int:
        return x

    @gated.task
    def review(draft: int, ctx: Any) -> int:
        return int(ctx.wait_for_input("ok")["n"]) + draft

    handle = gated.submit(x=1)
    wait_until(lambda: orch.store.run_status(handle.run_id).value == "waiting", timeout=30,
               what="the run waiting for a person")
    assert flushed == [orch.run_stream]
    types = [body["type"] for _, body in orch.run_stream.read(handle.run_id)]
    assert types[:2] == ["step_started", "step_finished"]  # draft's, stored
