"""``orchestrate events`` / ``emit`` / ``consume``: the events DB as an operator sees it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from click.testing import CliRunner, Result

import orchestration.define.host as host_module
from orchestration import Workflow
from orchestration.cli import main
from orchestration.events import ingest
from orchestration.testing import embedded_orchestrator


@pytest.fixture(scope="module")
def received(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with embedded_orchestrator(tmp_path_factory.mktemp("cli-events")) as app:
        wf = Workflow("cli_events", app=app, inputs=["text"])

        @wf.task
        def echo(text: str) -> str:
            return text

        wf.on_event("cli.ticket", name="cli_ticket", inputs={"text": "$.text"})
        done = SimpleNamespace(
            started=ingest(app, "cli.ticket", {"text": "hi", "password": "hunter22"},
                           event_id="cli-1")[0],
            rejected=ingest(app, "cli.ticket", {"body": "?"}, event_id="cli-2")[0],
            unmatched=ingest(app, "cli.nobody", {}, event_id="cli-3")[0])
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ORCH_DATABASE_URL", app.settings.database_url)
            patch.setenv("ORCH_IMPORTS", "")
            patch.setenv("COLUMNS", "250")
            patch.delenv("ORCH_BROKER_URL", raising=False)
            patch.delenv("ORCH_REDIS_URL", raising=False)
            patch.delenv("ORCH_STREAM_URL", raising=False)
            patch.setattr(host_module, "_default", None)  # rebuilt from the environment
            yield done
            built = host_module._default
            if built is not None:
                built.shutdown()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_events_lists_recent_events_and_their_runs(received: SimpleNamespace) -> None:
    result = invoke("events")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "cli-1" in line)
    assert "started" in line and received.started.run_id in line and "cli_ticket" in line
    assert "rejected" in result.output  # (its reason wraps in the table; see --json)
    assert "unmatched" in result.output and "cli.nobody" in result.output


def test_events_filters_and_speaks_json(received: SimpleNamespace) -> None:
    rejected = invoke("events", "--outcome", "rejected", "--json")
    assert rejected.exit_code == 0, rejected.output
    rows = json.loads(rejected.output)
    assert [(r["event_id"], r["reason"]) for r in rows] == [
        ("cli-2", "$.text: no such key at $.text")]
    started = json.loads(invoke("events", "--name", "cli.ticket", "--event-id", "cli-1",
                                "--json").output)
    assert [(r["outcome"], r["run_id"], r["workflow"]) for r in started] == [
        ("started", received.started.run_id, "cli_events")]
    assert started[0]["payload"] == {"text": "hi", "password": "[REDACTED]"}
    assert invoke("events", "--outcome", "exploded").exit_code != 0


def test_emit_records_an_event_no_trigger_listens_to(received: SimpleNamespace) -> None:
    result = invoke("emit", "cli.other", "--payload", '{"a": 1}', "--event-id", "cli-4")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == ("unmatched: event 'cli.other' id cli-4, no trigger "
                                     "listens to event 'cli.other'")
    assert json.loads(invoke("events", "--event-id", "cli-4", "--json").output)[0][
        "outcome"] == "unmatched"


def test_emit_refuses_bad_input_naming_it(received: SimpleNamespace) -> None:
    bad_json = invoke("emit", "cli.other", "--payload", "{nope")
    assert bad_json.exit_code == 2 and "--payload" in bad_json.output
    bad_name = invoke("emit", "no spaces", "--payload", "{}")
    assert bad_name.exit_code == 1 and "an event name is" in bad_name.output


def test_consume_needs_a_redis(received: SimpleNamespace) -> None:
    result = invoke("consume")
    assert result.exit_code == 2 and "--redis-url" in result.output
