"""The stream consumer: each entry ingested then acknowledged; malformed ones recorded
rejected and acknowledged; infrastructure failures leave the entry pending and are retried."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from orchestration import Workflow
from orchestration.app import Orchestrator
from orchestration.errors import SubmitFailed
from orchestration.events import Outcome
from orchestration.events.stream import StreamConsumer, StreamOptions, connect
from orchestration.testing import embedded_orchestrator
from tests.support.polling import wait_until
from tests.support.processes import free_port


class AckLog:
    """Stands in for Redis where only acknowledgements matter (``handle``)."""

    def __init__(self) -> None:
        self.acked: list[str] = []

    def xack(self, stream: str, group: str, entry_id: str) -> int:
        self.acked.append(entry_id)
        return 1


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    with embedded_orchestrator(Path(tmp_path_factory.mktemp("stream"))) as orchestrator:
        wf = Workflow("streamed", app=orchestrator, inputs=["n"])

        @wf.task
        def double(n: int) -> int:
            return 2 * n

        wf.on_event("item.added", inputs={"n": "$.n"})
        yield orchestrator


def _consumer(host: Orchestrator, client: Any) -> StreamConsumer:
    return StreamConsumer(host, client, StreamOptions(stream="s", group="g", consumer="c"))


def test_an_entry_is_ingested_then_acknowledged(host: Orchestrator) -> None:
    acks = AckLog()
    seen: list[str] = []
    consumer = StreamConsumer(host, acks, StreamOptions(consumer="c"),
                              observer=lambda entry, _: seen.append(f"{entry}:{acks.acked}"))
    [outcome] = consumer.handle("5-0", {"name": "item.added", "payload": json.dumps({"n": 2})})
    assert outcome.outcome is Outcome.STARTED and outcome.event_id == "5-0"
    assert seen == ["5-0:[]"] and acks.acked == ["5-0"]  # observed before the ack
    [again] = consumer.handle("5-0", {"name": "item.added", "payload": '{"n": 2}'})
    assert (again.outcome, again.run_id) == (Outcome.DUPLICATE, outcome.run_id)


def test_the_id_field_is_the_event_id(host: Orchestrator) -> None:
    [outcome] = _consumer(host, AckLog()).handle(
        "6-0", {"name": "item.added", "payload": '{"n": 1}', "id": "order-77"})
    assert outcome.event_id == "order-77"
    assert host.store.events.recent(event_id="order-77")[0].record.source == "stream"


@pytest.mark.parametrize(("fields", "reason"), [
    ({"payload": "{}"}, "the entry has no field 'name'"),
    ({"name": "item.added", "payload": "{nope"}, "field 'payload' is not JSON"),
    ({"name": "no spaces allowed", "payload": "{}"}, "an event name is"),
    ({"name": "item.added", "payload": "{}", "id": "x" * 300}, "event_id must be"),
])
def test_a_malformed_entry_is_recorded_rejected_and_acknowledged(
        host: Orchestrator, fields: dict[str, str], reason: str) -> None:
    acks = AckLog()
    entry = f"{abs(hash(reason)) % 10_000}-1"
    [outcome] = _consumer(host, acks).handle(entry, fields)
    assert outcome.outcome is Outcome.REJECTED and reason in (outcome.reason or "")
    assert acks.acked == [entry]
    rows = host.store.events.recent(outcome="rejected", limit=200)
    assert any(r.record.event_id == outcome.event_id and reason in (r.record.reason or "")
               for r in rows)


def test_an_oversized_entry_is_rejected_without_storing_it(
        host: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host.settings, "max_input_bytes", 100)
    acks = AckLog()
    big = json.dumps({"n": 1, "pad": "x" * 200})
    [outcome] = _consumer(host, acks).handle("9-0", {"name": "item.added", "payload": big})
    assert outcome.outcome is Outcome.REJECTED and "ORCH_MAX_INPUT_BYTES" in (outcome.reason or "")
    assert acks.acked == ["9-0"]
    [row] = host.store.events.recent(event_id="9-0")
    assert isinstance(row.record.payload, str) and "not stored" in row.record.payload


def test_a_payload_missing_a_path_is_rejected_and_acknowledged(host: Orchestrator) -> None:
    acks = AckLog()
    [outcome] = _consumer(host, acks).handle("7-0", {"name": "item.added", "payload": "{}"})
    assert (outcome.outcome, outcome.reason) == (Outcome.REJECTED, "$.n: no such key at $.n")
    assert acks.acked == ["7-0"]


def test_an_infrastructure_failure_leaves_the_entry_pending(
        host: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise SubmitFailed("the broker did not take run x")

    monkeypatch.setattr(host, "submit", refuse)
    acks = AckLog()
    with pytest.raises(SubmitFailed):
        _consumer(host, acks).handle("8-0", {"name": "item.added", "payload": '{"n": 1}'})
    assert acks.acked == []


def test_redis_down_is_retried_with_backoff_and_logged_never_an_exit(
        host: Orchestrator) -> None:
    client = connect(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    consumer = StreamConsumer(host, client, StreamOptions(consumer="c", max_backoff=0.5))
    with structlog.testing.capture_logs() as logs:
        thread = threading.Thread(target=consumer.run, daemon=True)
        thread.start()
        wait_until(lambda: sum(1 for e in logs
                               if e["event"] == "stream consumer cannot proceed; retrying") >= 2,
                   timeout=10, what="two retries logged")
        assert thread.is_alive()
        started = time.monotonic()
        consumer.stop()
        thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 2
    retry = next(e for e in logs if e["event"] == "stream consumer cannot proceed; retrying")
    assert "ConnectionError" in retry["error"] and retry["retry_in_s"] > 0


def test_connect_decodes_strings() -> None:
    client = connect("redis://127.0.0.1:1/0", block=2)
    assert client.connection_pool.connection_kwargs["decode_responses"] is True
