"""ingest: triggers start runs at most once per dedupe key; every event is recorded."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestration import InvalidInput, Workflow
from orchestration.app import Orchestrator
from orchestration.core.results import RunHandle
from orchestration.events import Outcome, ingest, reject, run_key
from orchestration.store.events import RecordedEvent
from orchestration.testing import embedded_orchestrator


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    """One orchestrator for the module, its workflows declared before any run."""
    with embedded_orchestrator(Path(tmp_path_factory.mktemp("events"))) as orchestrator:
        support = Workflow("support", app=orchestrator, inputs=["text", "priority"])

        @support.task
        def classify(text: str, priority: int = 0) -> str:
            return f"{text}:{priority}"

        support.on_event("ticket.created", name="new_ticket",
                         inputs={"text": "$.ticket.description", "priority": 1},
                         filter={"$.ticket.status": "new"})
        support.on_event("ticket.merged", name="merged", inputs={"text": "$.text"},
                         dedupe="$.ticket_id")
        audit = Workflow("audit", app=orchestrator, inputs=["text"])

        @audit.task
        def note(text: str) -> str:
            return text

        audit.on_event("ticket.created", name="audit_ticket",
                       inputs={"text": "$.ticket.description"})
        yield orchestrator


def _rows(host: Orchestrator, event_id: str) -> list[RecordedEvent]:
    return host.store.events.recent(event_id=event_id, limit=100)


def test_each_matching_trigger_starts_a_run_and_is_recorded(host: Orchestrator) -> None:
    payload = {"ticket": {"description": "cannot log in", "status": "new"}}
    outcomes = ingest(host, "ticket.created", payload, event_id="e-1")
    assert sorted((o.trigger, o.outcome) for o in outcomes) == [
        ("audit_ticket", Outcome.STARTED), ("new_ticket", Outcome.STARTED)]
    by_trigger = {o.trigger: o for o in outcomes}
    run = host.store.get_run(by_trigger["new_ticket"].run_id or "")
    assert run.workflow == "support" and run.inputs == {"text": "cannot log in",
                                                        "priority": 1}
    rows = _rows(host, "e-1")
    assert sorted((r.record.trigger, r.record.outcome, r.record.source) for r in rows) == [
        ("audit_ticket", "started", "emit"), ("new_ticket", "started", "emit")]
    assert {r.record.run_id for r in rows} == {o.run_id for o in outcomes}
    assert all(r.record.payload == payload for r in rows)


def test_an_event_every_filter_refuses_is_unmatched_and_says_so(
        tmp_path: Path) -> None:
    with embedded_orchestrator(tmp_path) as alone:
        wf = Workflow("only_new", app=alone, inputs=["text"])

        @wf.task
        def step(text: str) -> str:
            return text

        wf.on_event("ticket.created", inputs={"text": "$.t"}, filter={"$.status": "new"})
        [outcome] = ingest(alone, "ticket.created", {"t": "x", "status": "old"})
    assert (outcome.outcome, outcome.reason) == (
        Outcome.UNMATCHED, "filtered out by trigger(s) only_new_on_ticket_created")


def test_the_same_id_again_is_a_duplicate_naming_the_first_run(host: Orchestrator) -> None:
    payload = {"ticket": {"description": "x", "status": "new"}}
    first = {o.trigger: o.run_id for o in ingest(host, "ticket.created", payload,
                                                 event_id="e-2")}
    again = ingest(host, "ticket.created", payload, event_id="e-2", source="stream")
    assert {(o.trigger, o.outcome, o.run_id) for o in again} == {
        (name, Outcome.DUPLICATE, run_id) for name, run_id in first.items()}
    assert sorted(r.record.outcome for r in _rows(host, "e-2")) == [
        "duplicate", "duplicate", "started", "started"]


def test_concurrent_deliveries_of_one_id_start_one_run_per_trigger(host: Orchestrator) -> None:
    payload = {"ticket": {"description": "race", "status": "new"}}
    results: list[Any] = []
    barrier = threading.Barrier(8)

    def deliver() -> None:
        barrier.wait()
        results.extend(ingest(host, "ticket.created", payload, event_id="e-race"))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    started = [o for o in results if o.outcome is Outcome.STARTED]
    assert sorted(o.trigger for o in started) == ["audit_ticket", "new_ticket"]
    assert len(results) == 16
    assert len({o.run_id for o in results}) == 2


def test_an_event_no_trigger_listens_to_is_recorded_unmatched(host: Orchestrator) -> None:
    [outcome] = ingest(host, "invoice.paid", {"amount": 3}, event_id="e-3")
    assert (outcome.trigger, outcome.outcome, outcome.run_id) == (None, Outcome.UNMATCHED, None)
    assert outcome.reason == "no trigger listens to event 'invoice.paid'"
    [row] = _rows(host, "e-3")
    assert (row.record.name, row.record.outcome, row.record.payload) == (
        "invoice.paid", "unmatched", {"amount": 3})


def test_a_filter_lets_through_only_matching_payloads(host: Orchestrator) -> None:
    closed = {"ticket": {"description": "x", "status": "closed"}}
    outcomes = ingest(host, "ticket.created", closed, event_id="e-4")
    # audit_ticket has no filter; new_ticket refuses status=closed
    assert [(o.trigger, o.outcome) for o in outcomes] == [("audit_ticket", Outcome.STARTED)]


def test_a_payload_missing_the_dedupe_path_is_rejected_with_the_path(
        host: Orchestrator) -> None:
    outcomes = ingest(host, "ticket.merged", {"text": "t"}, event_id="e-5")
    assert [(o.trigger, o.outcome) for o in outcomes] == [("merged", Outcome.REJECTED)]
    assert outcomes[0].reason == ("$.ticket_id: no such key at $.ticket_id (the dedupe key)")


def test_a_payload_missing_a_mapped_path_is_rejected_with_the_path(host: Orchestrator) -> None:
    outcomes = ingest(host, "ticket.created", {"ticket": {"status": "new"}}, event_id="e-6")
    assert {o.trigger: (o.outcome, o.reason) for o in outcomes} == {
        "new_ticket": (Outcome.REJECTED,
                       "$.ticket.description: no such key at $.ticket.description"),
        "audit_ticket": (Outcome.REJECTED,
                         "$.ticket.description: no such key at $.ticket.description")}
    rows = _rows(host, "e-6")
    assert {r.record.outcome for r in rows} == {"rejected"}
    assert all("$.ticket.description" in (r.record.reason or "") for r in rows)
    assert all(r.record.run_id is None for r in rows)


def test_a_dedupe_path_makes_different_ids_one_event(host: Orchestrator) -> None:
    first = ingest(host, "ticket.merged", {"ticket_id": 42, "text": "a"}, event_id="m-1")
    second = ingest(host, "ticket.merged", {"ticket_id": 42, "text": "b"}, event_id="m-2")
    other = ingest(host, "ticket.merged", {"ticket_id": 43, "text": "c"}, event_id="m-1")
    assert first[0].outcome is Outcome.STARTED
    assert (second[0].outcome, second[0].run_id) == (Outcome.DUPLICATE, first[0].run_id)
    assert other[0].outcome is Outcome.STARTED and other[0].run_id != first[0].run_id


def test_an_event_without_an_id_gets_one(host: Orchestrator) -> None:
    payload = {"ticket": {"description": "x", "status": "new"}}
    one = ingest(host, "ticket.created", payload)
    two = ingest(host, "ticket.created", payload)
    assert one[0].event_id and two[0].event_id and one[0].event_id != two[0].event_id
    assert {o.outcome for o in one + two} == {Outcome.STARTED}
    assert len(_rows(host, one[0].event_id or "")) == 2


def test_payloads_are_stored_redacted(host: Orchestrator) -> None:
    payload = {"text": "hi", "api_key": "sk-abcdefghijklmnopqrstu", "note": "Bearer abcdefghijk"}
    ingest(host, "secret.event", payload, event_id="e-7")
    [row] = _rows(host, "e-7")
    assert row.record.payload == {"text": "hi", "api_key": "[REDACTED]",
                                  "note": "[REDACTED]"}


@pytest.mark.parametrize(("name", "payload", "event_id", "message"), [
    ("bad name!", {}, None, "an event name is"),
    ("ok", {}, "", "event_id must be a non-empty string"),
    ("ok", {}, "x" * 201, "event_id must be"),
    ("ok", {"when": object()}, None, "the payload must be JSON"),
])
def test_a_bad_event_is_refused_before_anything_is_recorded(
        host: Orchestrator, name: str, payload: Any, event_id: str | None,
        message: str) -> None:
    before = host.store.events.count()
    with pytest.raises(InvalidInput, match=message):
        ingest(host, name, payload, event_id=event_id)
    assert host.store.events.count() == before


def test_a_payload_over_the_input_limit_is_refused(host: Orchestrator,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host.settings, "max_input_bytes", 50)
    before = host.store.events.count()
    with pytest.raises(InvalidInput, match=r"the payload is 6\d bytes of JSON, over the "
                                           r"limit of 50 \(ORCH_MAX_INPUT_BYTES\)"):
        ingest(host, "ticket.created", {"ticket": {"description": "x" * 40}})
    assert host.store.events.count() == before


def test_runs_started_by_events_finish(host: Orchestrator) -> None:
    [started] = ingest(host, "ticket.merged", {"ticket_id": "fin", "text": "done"},
                       event_id="e-8")
    assert RunHandle(started.run_id or "", host.store).wait(30).outputs == {
        "classify": "done:0"}


def test_reject_records_an_unreadable_event(host: Orchestrator) -> None:
    outcome = reject(host, None, b"\x00", reason="entry has no field 'name'",
                     event_id="1-0", source="stream")
    assert outcome.outcome is Outcome.REJECTED
    [row] = _rows(host, "1-0")
    assert (row.record.name, row.record.source, row.record.reason) == (
        "?", "stream", "entry has no field 'name'")


def test_long_dedupe_keys_are_hashed_into_the_idempotency_key() -> None:
    assert run_key("t", "abc") == "event:t:abc"
    long = run_key("t", "x" * 500)
    assert len(long) <= 200 and long.startswith("event:sha256:")
    assert long == run_key("t", "x" * 500) != run_key("t", "x" * 499)
