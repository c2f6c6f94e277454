"""The run stream on the results DB (run_events): order, offsets, once, bounds, deletion.

The Redis implementation passes the same checks in tests/integration/test_run_stream.py.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from orchestration.core.clock import utcnow
from orchestration.core.results import RunHandle
from orchestration.core.status import RunStatus
from orchestration.core.stream_events import RUN_FINISHED, event
from orchestration.errors import WaitTimeout
from orchestration.store.models import RunEventRow, RunRow
from orchestration.store.repository import PlannedStep, Store
from orchestration.store.run_stream import TRIM_EVERY, SQLRunStream

STEPS = [PlannedStep("a", "a", "default", None, True)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.ensure_schema()
    yield store
    store.dispose()


def new_run(store: Store) -> str:
    return store.create_run(str(uuid.uuid4()), "wf", "v1", {"x": 1}, STEPS)


def test_events_read_back_in_order_after_any_offset(store: Store) -> None:
    run, other = new_run(store), new_run(store)
    stream = store.run_stream
    offsets = [stream.append(run, event("token", run, index=i, text=f"t{i}")) for i in range(5)]
    stream.append(other, event("token", other, index=0, text="other"))
    offsets += stream.append_many(run, [event("token", run, index=i, text=f"t{i}")
                                        for i in range(5, 8)])
    read = stream.read(run)
    assert [offset for offset, _ in read] == offsets
    assert [data["index"] for _, data in read] == list(range(8))
    # Reconnecting after any offset gives exactly the events after it.
    for cut in range(len(offsets)):
        assert [o for o, _ in stream.read(run, offsets[cut])] == offsets[cut + 1:]
    assert stream.read(run, offsets[-1]) == []


def test_append_once_writes_one_run_finished(store: Store) -> None:
    run = new_run(store)
    stream = store.run_stream
    first = stream.append_once(run, event(RUN_FINISHED, run, status="succeeded"))
    assert first is not None
    assert stream.append_once(run, event(RUN_FINISHED, run, status="failed")) is None
    assert [data["status"] for _, data in stream.read(run)] == ["succeeded"]


def test_a_blocking_read_returns_when_an_event_arrives(store: Store) -> None:
    run = new_run(store)
    stream = store.run_stream
    timer = threading.Timer(0.05, lambda: stream.append(run, event("token", run, text="x")))
    timer.start()
    try:
        read = stream.read(run, block=10)
    finally:
        timer.join()
    assert [data["text"] for _, data in read] == ["x"]


def test_a_run_keeps_about_maxlen_events(store: Store) -> None:
    run = new_run(store)
    stream = SQLRunStream(store.engine, store.reader, maxlen=10)
    for start in range(0, 600, 50):
        stream.append_many(run, [event("token", run, index=i) for i in range(start, start + 50)])
    kept = stream.read(run)
    assert len(kept) < 600
    assert [data["index"] for _, data in kept] == list(range(600 - len(kept), 600))


def test_events_go_with_their_run_and_with_the_ttl(store: Store) -> None:
    run, kept = new_run(store), new_run(store)
    stream = SQLRunStream(store.engine, store.reader)
    stream.append(run, event("token", run))
    stream.append(kept, event("token", kept))
    stream.delete(run)
    assert stream.read(run) == [] and len(stream.read(kept)) == 1
    assert stream.prune(utcnow() - timedelta(hours=1)) == 0
    assert stream.prune(utcnow() + timedelta(seconds=1)) == 1
    assert stream.read(kept) == []


def test_a_bad_offset_is_named(store: Store) -> None:
    with pytest.raises(ValueError, match="'1733300000000-0' is not an offset"):
        store.run_stream.read(new_run(store), "1733300000000-0")


# -- RunHandle.stream over the store -----------------------------------------------------


def test_handle_stream_ends_after_run_finished_and_resumes(store: Store) -> None:
    run = new_run(store)
    stream = store.run_stream
    stream.append(run, event("step_started", run, step="a", attempt=1))
    stream.append(run, event("step_finished", run, step="a", status="succeeded"))
    stream.append_once(run, event(RUN_FINISHED, run, status="succeeded"))
    stream.append(run, event("token", run, text="after the end"))  # never read
    handle = RunHandle(run, store)
    events = list(handle.stream(timeout=5))
    assert [e.type for e in events] == ["step_started", "step_finished", RUN_FINISHED]
    resumed = list(handle.stream(after=events[0].offset, timeout=5))
    assert [e.offset for e in resumed] == [e.offset for e in events[1:]]


def test_handle_stream_times_out_on_a_running_run(store: Store) -> None:
    run = new_run(store)
    store.run_stream.append(run, event("step_started", run, step="a"))
    seen = []
    with pytest.raises(WaitTimeout, match="did not finish"):
        for item in RunHandle(run, store).stream(timeout=0.2, poll=0.05):
            seen.append(item.type)
    assert seen == ["step_started"]


def test_a_finished_run_without_run_finished_is_closed_by_the_reader(store: Store) -> None:
    run = new_run(store)
    store.finish_run(run, RunStatus.CANCELLED, error="cancelled")
    with store.engine.begin() as conn:  # finished long ago
        conn.execute(update(RunRow).where(RunRow.id == run)
                     .values(finished_at=utcnow() - timedelta(minutes=1)))
    events = list(RunHandle(run, store).stream(timeout=5, poll=0.01))
    assert [(e.type, e["status"]) for e in events] == [(RUN_FINISHED, "cancelled")]


def test_astream_yields_the_same_events(store: Store) -> None:
    run = new_run(store)
    stream = store.run_stream
    stream.append(run, event("token", run, text="a"))

    def finish_later() -> None:
        stream.append(run, event("token", run, text="b"))
        stream.append_once(run, event(RUN_FINISHED, run, status="succeeded"))

    async def collect() -> list[str]:
        out = []
        timer = threading.Timer(0.05, finish_later)
        timer.start()
        async for item in RunHandle(run, store).astream(timeout=5, poll=0.5):
            out.append(item.type if item.type != "token" else item["text"])
        timer.join()
        return out

    assert asyncio.run(collect()) == ["a", "b", RUN_FINISHED]


def test_a_deleted_runs_events_go_with_it(store: Store) -> None:
    run, kept = new_run(store), new_run(store)
    for run_id in (run, kept):
        store.run_stream.append(run_id, event("token", run_id))
    store.memory.forget("no-conversation", runs=[run])  # retention deletes the run rows
    assert store.run_stream.read(run) == [] and len(store.run_stream.read(kept)) == 1
    store.run_stream.delete_many([kept])
    assert store.run_stream.read(kept) == []


def test_events_past_the_ttl_go_when_a_run_is_trimmed(store: Store) -> None:
    run = new_run(store)
    stream = SQLRunStream(store.engine, store.reader, ttl=3600)
    stream.append(run, event("token", run, index=-1))
    with store.engine.begin() as conn:
        conn.execute(update(RunEventRow).values(created_at=utcnow() - timedelta(hours=2)))
    while int(stream.append(run, event("token", run))) % TRIM_EVERY:
        pass
    assert all(data.get("index") != -1 for _, data in stream.read(run))


def test_a_batch_trims_each_run_by_its_share_not_every_run(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """300 runs with an event each and one run with 200, written together: with the dice
    at 0.5 only the big run has a chance over it (200/256); 300 small ones are not each
    trimmed because the batch as a whole is large."""
    from orchestration.store import run_stream

    stream = SQLRunStream(store.engine, store.reader)
    small = [new_run(store) for _ in range(300)]
    big = new_run(store)
    trimmed: list[str] = []
    monkeypatch.setattr(run_stream.random, "random", lambda: 0.5)
    monkeypatch.setattr(stream, "_trim", lambda conn, run_id: trimmed.append(run_id))
    stream.append_all([(run, event("token", run)) for run in small]
                      + [(big, event("token", big, index=i)) for i in range(200)])
    assert trimmed == [big]
    assert len(stream.read(small[0])) == 1 and len(stream.read(big)) == 200


def test_once_events_of_many_runs_are_one_statement_and_stay_once(store: Store) -> None:
    from sqlalchemy import event as sa_event

    stream = SQLRunStream(store.engine, store.reader)
    runs = [new_run(store) for _ in range(50)]
    finished = [(run, event(RUN_FINISHED, run, status="succeeded")) for run in runs]
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "run_events" in statement:
            statements.append(statement)

    sa_event.listen(store.engine, "before_cursor_execute", count)
    try:
        stream.append_all([], finished)
        stream.append_all([], finished[:10])  # again: already there, nothing written
    finally:
        sa_event.remove(store.engine, "before_cursor_execute", count)
    assert len(statements) == 2  # one executemany per call
    assert all([data["type"] for _, data in stream.read(run)] == [RUN_FINISHED]
               for run in runs)
