"""``orchestrate show`` and ``runs`` print every step status, and data as text, not markup.

A run is written straight into a SQLite results DB with one step in each
:class:`StepStatus`; its workflow name, errors, queue, worker and model hold rich
markup (``[/]``, ``[bold]``), which must be printed verbatim and never break the output.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import update

import orchestration.define.host as host_module
from orchestration.cli import main
from orchestration.core.clock import utcnow
from orchestration.core.status import RunStatus, StepStatus
from orchestration.store.models import RunRow, StepRow
from orchestration.store.repository import AttemptRecord, PlannedStep, Store

MARKUP = "[/] and [bold]x[/bold] [red]"
WORKFLOW = "[bold]markup_flow[/]"


@pytest.fixture
def run_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A run with one step per status, markup in every text field; the CLI reads its DB."""
    url = f"sqlite:///{tmp_path / 'show.db'}"
    store = Store(url)
    run_id = str(uuid.uuid4())
    steps = [PlannedStep(f"step_{status.value}", f"out_{status.value}", f"q.{MARKUP}",
                         f"model {MARKUP}", True) for status in StepStatus]
    store.create_run(run_id, WORKFLOW, "v1", {"text": MARKUP}, steps)
    now = utcnow()
    with store.engine.begin() as conn:
        for status in StepStatus:
            conn.execute(update(StepRow).where(
                StepRow.run_id == run_id, StepRow.name == f"step_{status.value}",
            ).values(status=status.value, error=f"Error: {status.value} {MARKUP}",
                     worker=f"w@{MARKUP}", started_at=now, output={"v": MARKUP}))
        conn.execute(update(RunRow).where(RunRow.id == run_id).values(
            status=RunStatus.CANCELLED.value, error=f"cancelled {MARKUP}"))
    store.record_attempts(run_id, "step_failed", [AttemptRecord(
        1, "failed", now, now + timedelta(milliseconds=5),
        error=f"Traceback\nValueError: {MARKUP}")])
    store.dispose()
    monkeypatch.setenv("ORCH_DATABASE_URL", url)
    monkeypatch.setenv("ORCH_IMPORTS", "")
    monkeypatch.delenv("ORCH_BROKER_URL", raising=False)
    monkeypatch.setattr(host_module, "_default", None)
    yield run_id
    built = host_module._default
    if built is not None:
        built.shutdown()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"COLUMNS": "400"})


def test_show_prints_a_step_in_every_status_with_markup_verbatim(run_id: str) -> None:
    result = invoke("show", run_id)
    assert result.exit_code == 0, repr(result.exception)
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{WORKFLOW} run {run_id}: cancelled"), lines[0]
    assert f"cancelled {MARKUP}" in result.output  # the run's error
    for status in StepStatus:
        line = next(line for line in lines if f"step_{status.value} {status.value}" in line)
        assert f"on q.{MARKUP} by w@{MARKUP} model=model {MARKUP}" in line, line
    for status in (StepStatus.FAILED, StepStatus.FALLBACK, StepStatus.SKIPPED,
                   StepStatus.CANCELLED):
        assert f"Error: {status.value} {MARKUP}" in result.output, status
    assert f"attempt 1: failed 5.0 ms ValueError: {MARKUP}" in result.output


def test_runs_prints_markup_verbatim(run_id: str) -> None:
    result = invoke("runs")
    assert result.exit_code == 0, repr(result.exception)
    line = next(line for line in result.output.splitlines() if run_id in line)
    assert WORKFLOW in line and f"cancelled {MARKUP}" in line


def test_show_json_keeps_every_status(run_id: str) -> None:
    result = invoke("show", run_id, "--json")
    assert result.exit_code == 0, repr(result.exception)
    assert f'"status": "{StepStatus.WAITING.value}"' in result.output


def test_stats_of_a_workflow_named_with_markup(run_id: str) -> None:
    result = invoke("stats", WORKFLOW, "--since", "all")
    assert result.exit_code == 0, repr(result.exception)
    assert result.output.startswith(f"{WORKFLOW} over all: 1 runs")
