"""Events start runs at most once per event id, on Redis + PostgreSQL with a real worker.

The workflows (``support/workflows/events.py``) are imported here and by a threads worker
of this module's own serving their queue. Each test uses ids and ticket numbers of its
own, so it reads back only its own events and runs from the session's database.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from orchestration import RunHandle, RunStatus, default_orchestrator, emit
from orchestration.events import Outcome, run_key
from orchestration.store.events import RecordedEvent
from orchestration.store.models import RunRow
from tests.integration.support import event_processes
from tests.integration.support.workflows import events as ew
from tests.support.processes import ORCHESTRATE, ROOT, child_env, orchestrate
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres]
MODULE = ew.__name__
RUN_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def events_worker(redis_service: Any, postgres_database: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """A threads worker on the events queue, importing the events workflows."""
    pool = Workers(tmp_path_factory.mktemp("events-worker"), child_env(imports=[MODULE]))
    try:
        pool.start("it-events", [ew.EVENTS_QUEUE], pool="threads", concurrency=4)
        yield pool
    finally:
        pool.stop_all()


def tag() -> str:
    return uuid.uuid4().hex[:10]


def ticket_number() -> int:
    return uuid.uuid4().int % 10**9


def runs_of_ticket(ticket: int) -> list[str]:
    """Ids of every run of the tickets workflow for this ticket, however it started."""
    store = default_orchestrator().store
    with store.reader.connect() as conn:
        return list(conn.execute(select(RunRow.id).where(
            RunRow.workflow == ew.tickets.name,
            RunRow.inputs["ticket_id"].as_integer() == ticket)).scalars())


def rows(event_id: str) -> list[RecordedEvent]:
    return default_orchestrator().store.events.recent(event_id=event_id, limit=100)


def created(ticket: int, status: str = "new", **extra: Any) -> dict[str, Any]:
    return {"ticket": {"id": ticket, "description": f"cannot log in ({ticket})",
                       "status": status, **extra}}


def test_eight_concurrent_emits_in_threads_start_one_run(events_worker: Workers) -> None:
    ticket, event_id = ticket_number(), f"zd-{tag()}"
    barrier = threading.Barrier(8)
    outcomes: list[Any] = []

    def deliver() -> None:
        barrier.wait(30)
        outcomes.extend(emit(ew.TICKET_CREATED, created(ticket), event_id=event_id))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RUN_TIMEOUT_S)
    assert sorted(o.outcome.value for o in outcomes) == ["duplicate"] * 7 + ["started"]
    [run_id] = runs_of_ticket(ticket)
    assert {o.run_id for o in outcomes} == {run_id}
    assert sorted(r.record.outcome for r in rows(event_id)) == ["duplicate"] * 7 + ["started"]
    result = RunHandle(run_id, default_orchestrator().store).wait(RUN_TIMEOUT_S)
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs == {"classify": f"{ticket}:cannot log in ({ticket})"}


def test_eight_concurrent_emits_in_processes_start_one_run(events_worker: Workers) -> None:
    ticket, event_id = ticket_number(), f"zd-{tag()}"
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(8)
    processes = [spawn.Process(target=event_processes.emit_together,
                               args=(barrier, MODULE, (ew.TICKET_CREATED, created(ticket),
                                                       event_id))) for _ in range(8)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(RUN_TIMEOUT_S)
    assert [process.exitcode for process in processes] == [0] * 8
    recorded = rows(event_id)
    [run_id] = runs_of_ticket(ticket)
    assert {r.record.run_id for r in recorded} == {run_id}
    assert sorted(r.record.outcome for r in rows(event_id)) == ["duplicate"] * 7 + ["started"]


def test_orchestrate_emit_from_several_processes_and_events_shows_it(
        events_worker: Workers) -> None:
    ticket, event_id = ticket_number(), f"zd-{tag()}"
    env = child_env(imports=[MODULE])
    command = [*ORCHESTRATE, "emit", ew.TICKET_CREATED, "--payload",
               json.dumps(created(ticket)), "--event-id", event_id]
    children = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [child.communicate(timeout=RUN_TIMEOUT_S) for child in children]
    assert all(child.returncode == 0 for child in children), outputs
    lines = sorted(out.strip() for out, _ in outputs)
    [run_id] = runs_of_ticket(ticket)
    assert [line.split(":")[0] for line in lines] == ["duplicate", "duplicate", "started"]
    assert all(f"run {run_id}" in line and "trigger it_new_ticket" in line for line in lines)
    shown = json.loads(orchestrate("events", "--event-id", event_id, "--json", env=env,
                                   check=True).stdout)
    assert sorted((r["outcome"], r["run_id"], r["workflow"]) for r in shown) == [
        ("duplicate", run_id, ew.tickets.name), ("duplicate", run_id, ew.tickets.name),
        ("started", run_id, ew.tickets.name)]


def test_an_event_no_trigger_listens_to_is_recorded_unmatched() -> None:
    event_id = f"nobody-{tag()}"
    [outcome] = emit("it.nobody.listens", {"x": 1}, event_id=event_id)
    assert (outcome.outcome, outcome.run_id) == (Outcome.UNMATCHED, None)
    [row] = rows(event_id)
    assert (row.record.name, row.record.outcome, row.record.payload, row.record.reason) == (
        "it.nobody.listens", "unmatched", {"x": 1},
        "no trigger listens to event 'it.nobody.listens'")


def test_a_payload_missing_a_mapped_path_is_rejected_naming_it() -> None:
    ticket, event_id = ticket_number(), f"bad-{tag()}"
    payload = {"ticket": {"id": ticket, "status": "new"}}  # no description
    [outcome] = emit(ew.TICKET_CREATED, payload, event_id=event_id)
    assert (outcome.outcome, outcome.reason) == (
        Outcome.REJECTED, "$.ticket.description: no such key at $.ticket.description")
    [row] = rows(event_id)
    assert (row.record.outcome, row.record.trigger, row.record.run_id) == (
        "rejected", "it_new_ticket", None)
    assert "$.ticket.description" in (row.record.reason or "")
    assert runs_of_ticket(ticket) == []


def test_a_filter_starts_only_matching_events() -> None:
    ticket = ticket_number()
    closed = emit(ew.TICKET_CREATED, created(ticket, status="closed"), event_id=f"c-{tag()}")
    assert [(o.outcome, o.reason) for o in closed] == [
        (Outcome.UNMATCHED, "filtered out by trigger(s) it_new_ticket")]
    assert runs_of_ticket(ticket) == []
    opened = emit(ew.TICKET_CREATED, created(ticket), event_id=f"o-{tag()}")
    assert [o.outcome for o in opened] == [Outcome.STARTED]
    assert runs_of_ticket(ticket) == [opened[0].run_id]


def test_a_dedupe_path_makes_updates_of_one_ticket_one_run() -> None:
    ticket = ticket_number()
    first = emit(ew.TICKET_UPDATED, created(ticket), event_id=f"u1-{tag()}")
    second = emit(ew.TICKET_UPDATED, created(ticket, status="open"), event_id=f"u2-{tag()}")
    other = emit(ew.TICKET_UPDATED, created(ticket + 1), event_id=f"u3-{tag()}")
    assert first[0].outcome is Outcome.STARTED
    assert (second[0].outcome, second[0].run_id) == (Outcome.DUPLICATE, first[0].run_id)
    assert other[0].outcome is Outcome.STARTED
    assert runs_of_ticket(ticket) == [first[0].run_id]
    assert default_orchestrator().store.find_by_idempotency_key(
        run_key("it_ticket_updated", str(ticket))) == first[0].run_id
