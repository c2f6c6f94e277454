"""Priority where runs start besides ``submit``: schedules, a pipeline file's schedules,
``orchestrate submit --priority`` and ``orchestrate emit --priority``.

Runs are started on the embedded default and their stored priority (``runs.priority``)
is read back; the CLI is invoked in-process with the test's orchestrator as the default.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner, Result

import orchestration.define.host as host_module
from orchestration import PipelineError, Workflow, WorkflowDefinitionError, load_pipeline
from orchestration.cli import main
from orchestration.define.triggers import make_schedule
from orchestration.events.beat import Beat
from orchestration.events.outcomes import Outcome
from orchestration.testing import embedded_orchestrator

START = datetime(2026, 2, 2, 8, 0, 30, tzinfo=UTC)


def test_a_schedule_priority_is_checked_when_declared() -> None:
    assert make_schedule("s", cron="* * * * *", workflow="w").priority == 0
    assert make_schedule("s", cron="* * * * *", workflow="w", priority=9).priority == 9
    for bad in (10, -1, "high", True, 2.5):
        with pytest.raises(WorkflowDefinitionError,
                           match=r"schedule 's': priority must be an int from 0 to 9"):
            make_schedule("s", cron="* * * * *", workflow="w", priority=bad)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with embedded_orchestrator(tmp_path_factory.mktemp("prio-starters")) as app:
        wf = Workflow("prio_starters", app=app, inputs=["text"])

        @wf.task
        def echo(text: str) -> str:
            return text

        wf.on_event("prio.starters", name="prio_starters_trigger", inputs={"text": "$.text"},
                    priority=2)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(host_module, "_default", app)
            yield SimpleNamespace(app=app, workflow=wf)


def test_workflow_schedule_takes_a_priority_and_names_a_bad_one(
        deployment: SimpleNamespace) -> None:
    wf = deployment.workflow
    with pytest.raises(WorkflowDefinitionError,
                       match=r"workflow 'prio_starters', schedule 'too_urgent': priority must "
                             r"be an int from 0 to 9 \(9 the most urgent\), got 12"):
        wf.schedule("* * * * *", inputs={"text": "x"}, name="too_urgent", priority=12)
    assert [s.name for s in wf.schedules] == []  # nothing declared


def test_a_schedule_starts_its_runs_at_its_priority(tmp_path: Path) -> None:
    now = [START]
    with embedded_orchestrator(tmp_path) as app:
        wf = Workflow("prio_scheduled", app=app, inputs=["text"])

        @wf.task
        def echo(text: str) -> str:
            return text

        wf.schedule("* * * * *", inputs={"text": "tick"}, name="prio_every_minute",
                    overlap="allow", priority=7)
        beat = Beat(app, clock=lambda: now[0])
        assert beat.tick() == []  # before the first tick
        now[0] = START + timedelta(seconds=32)
        [outcome] = beat.tick()
        assert outcome.outcome is Outcome.STARTED and outcome.run_id is not None
        assert app.store.priority_of(outcome.run_id) == 7


def test_a_pipeline_schedule_has_a_priority(tmp_path: Path) -> None:
    def document(priority: object) -> Path:
        path = tmp_path / f"s{priority}.json"
        path.write_text(json.dumps({
            "pipeline": f"prio_sched_{priority}", "inputs": ["text"],
            "steps": {"answer": {"model": "gpt-4o-mini", "prompt": "{{ text }}"}},
            "schedules": {f"nightly_{priority}": {"cron": "0 2 * * *",
                                                  "inputs": {"text": "x"},
                                                  "priority": priority}}}))
        return path

    with embedded_orchestrator(tmp_path) as app:
        assert load_pipeline(document(5), orchestrator=app).schedules[0].priority == 5
        with pytest.raises(PipelineError, match=r"/schedules/nightly_10.*priority"):
            load_pipeline(document(10), orchestrator=app)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_cli_submit_takes_a_priority(deployment: SimpleNamespace) -> None:
    result = invoke("submit", "prio_starters", "--inputs", '{"text": "hi"}', "--priority", "6",
                    "--timeout", "30")
    assert result.exit_code == 0, result.output
    run_id = result.output.splitlines()[0].strip()
    assert deployment.app.store.priority_of(run_id) == 6
    plain = invoke("submit", "prio_starters", "--inputs", '{"text": "hi"}', "--timeout", "30")
    assert deployment.app.store.priority_of(plain.output.splitlines()[0].strip()) == 0


def test_cli_submit_refuses_a_bad_priority_naming_it(deployment: SimpleNamespace) -> None:
    before = len(deployment.app.store.list_runs(workflow="prio_starters", limit=100))
    too_high = invoke("submit", "prio_starters", "--inputs", '{"text": "hi"}',
                      "--priority", "10")
    assert too_high.exit_code == 1
    assert "priority must be an int from 0 to 9" in too_high.output
    word = invoke("submit", "prio_starters", "--inputs", '{"text": "hi"}', "--priority", "high")
    assert word.exit_code == 2 and "--priority" in word.output
    in_inputs = invoke("submit", "prio_starters", "--inputs", '{"text": "hi", "priority": 3}')
    assert in_inputs.exit_code == 2
    assert "'priority' is an option of the run, not an input: use --priority" in \
        in_inputs.output
    assert len(deployment.app.store.list_runs(workflow="prio_starters", limit=100)) == before


def test_cli_emit_takes_a_priority_over_the_triggers(deployment: SimpleNamespace) -> None:
    store = deployment.app.store
    urgent = invoke("emit", "prio.starters", "--payload", '{"text": "a"}', "--event-id",
                    "prio-cli-1", "--priority", "9", "--timeout", "30")
    assert urgent.exit_code == 0, urgent.output
    own = invoke("emit", "prio.starters", "--payload", '{"text": "b"}', "--event-id",
                 "prio-cli-2", "--timeout", "30")
    assert own.exit_code == 0, own.output
    started = {row.record.event_id: row.record.run_id
               for row in store.events.recent(name="prio.starters", limit=10)}
    assert store.priority_of(started["prio-cli-1"]) == 9
    assert store.priority_of(started["prio-cli-2"]) == 2  # the trigger's own
    bad = invoke("emit", "prio.starters", "--payload", '{"text": "c"}', "--event-id",
                 "prio-cli-3", "--priority", "-1")
    assert bad.exit_code == 1 and "priority must be an int from 0 to 9" in bad.output
    assert "prio-cli-3" not in {row.record.event_id
                                for row in store.events.recent(name="prio.starters",
                                                               limit=10)}
