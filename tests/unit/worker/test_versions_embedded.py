"""Runs in flight meet a worker of another workflow version (embedded default).

One process carries one version of a workflow; runs "of another version" are written
here with an old version and their messages carry it, as a previous deployment's would.
Defined outcomes (docs/upgrades.md): the step is never run with this version's code;
it is parked and ``orchestrate show`` says for which version; a worker carrying the
version sends it on; past ORCH_VERSION_GRACE with no carrier the run fails saying so; a
step this version lacks (removed, renamed) is parked the same way; ``resume`` of an
old run refuses unless ``upgrade`` (same steps only); a stalled old run is left for a
carrier, not failed.
"""

from __future__ import annotations

import importlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import chain, group
from click.testing import CliRunner

from orchestration import RunStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.core.clock import utcnow
from orchestration.core.envelope import Envelope
from orchestration.errors import NotResumable
from orchestration.store.versions import VersionWait
from orchestration.store.workers import WorkerInfo
from orchestration.submit.durability import reconcile, redispatch
from orchestration.submit.submission import planned
from orchestration.testing import embedded_orchestrator
from orchestration.worker.versions import sweep, version_waits
from tests.support.polling import wait_until

OLD = "0ldversion"
CALLS: list[str] = []
LOCK = threading.Lock()


def _called(name: str) -> None:
    with LOCK:
        CALLS.append(name)


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with embedded_orchestrator(Path(tmp_path_factory.mktemp("versions")),
                               heartbeat_interval=0.2, worker_dead_after=1.0) as orch:
        skew = Workflow("skew", inputs=["text"], orchestrator=orch)

        @skew.task
        def first(text: str) -> str:
            _called("first")
            return text.upper()

        @skew.task
        def second(first: str) -> str:
            _called("second")
            return first + "!"

        mapped = Workflow("skewmap", inputs=["items"], orchestrator=orch)

        @mapped.task(map="items", chunk_size=2)
        def double(items: int) -> int:
            return items * 2

        @mapped.task
        def total(double: list[int]) -> int:
            return sum(double)

        yield SimpleNamespace(orch=orch, skew=skew, mapped=mapped)


def _with_version(signature: Any, version: str) -> Any:
    if isinstance(signature, chain | group):
        for part in signature.tasks:
            _with_version(part, version)
    elif signature.task.startswith("skew."):
        signature.kwargs["version"] = version
    return signature


def _old_run(flows: SimpleNamespace, version: str = OLD, *, send: bool = True) -> str:
    """A run written as a worker of ``version`` would have, its messages naming it."""
    orch: Orchestrator = flows.orch
    run_id = str(uuid.uuid4())
    inputs = {"text": "hi"}
    orch.store.create_run(run_id, "skew", version, inputs, planned(flows.skew.validate()))
    if send:
        _with_version(flows.skew.canvas(run_id, inputs), version).apply_async()
    return run_id


def _show(orch: Orchestrator, run_id: str, monkeypatch: pytest.MonkeyPatch) -> str:
    cli = importlib.import_module("orchestration.cli.main")
    monkeypatch.setattr(cli, "orchestrator_for_cli", lambda **_: orch)
    result = CliRunner().invoke(cli.main, ["show", run_id], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output


def test_a_step_of_another_version_is_parked_not_run_and_show_says_why(
        flows: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    CALLS.clear()
    run_id = _old_run(flows)
    waits = wait_until(lambda: version_waits(flows.orch.store).of_run(run_id), timeout=10,
                       what="the step message parked")
    assert [(w.workflow, w.version, w.step) for w in waits] == [("skew", OLD, "first")]
    assert CALLS == []  # never run with this version's code
    run = flows.orch.store.get_run(run_id)
    assert run.status is RunStatus.PENDING
    shown = _show(flows.orch, run_id, monkeypatch)
    assert f"waits for a worker carrying skew@{OLD}" in shown
    # The reconciler leaves it alone: it waits visibly, the grace period ends it.
    assert run_id not in reconcile(flows.orch, idle_seconds=0).failed
    assert flows.orch.store.get_run(run_id).status is RunStatus.PENDING


def test_past_the_grace_period_with_no_carrier_the_run_fails_saying_so(
        flows: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = _old_run(flows)
    wait_until(lambda: version_waits(flows.orch.store).of_run(run_id), timeout=10,
               what="the step message parked")
    monkeypatch.setattr(flows.orch.settings, "version_grace", 0.3)
    run = wait_until(lambda: (lambda r: r if r.status is RunStatus.FAILED else None)(
        flows.orch.store.get_run(run_id)), timeout=15, what="the run failed by the grace")
    assert run.error is not None
    assert f"for a worker carrying skew@{OLD}" in run.error
    assert f"skew@{flows.skew.validate().version}" in run.error  # what live workers carry
    assert run.steps["first"].status.value == "failed"
    assert version_waits(flows.orch.store).of_run(run_id) == []


def test_a_worker_carrying_the_version_sends_a_parked_step_on(flows: SimpleNamespace) -> None:
    """Parked by a worker of another version; this one carries the run's: the run ends."""
    current = flows.skew.validate().version
    run_id = _old_run(flows, current, send=False)
    signature = flows.skew.canvas(run_id, {"text": "hi"})
    message = json.loads(json.dumps(dict(signature)))
    assert message["kwargs"]["version"] == current
    version_waits(flows.orch.store).park(VersionWait(
        run_id, "skew", current, "first", flows.skew.validate().steps["first"].queue, message,
        "elsewhere (skew@other)"), utcnow())
    finished = wait_until(lambda: (lambda r: r if r.status.is_terminal else None)(
        flows.orch.store.get_run(run_id)), timeout=15, what="the run finished")
    assert finished.status is RunStatus.SUCCEEDED
    assert finished.outputs["second"] == "HI!"
    assert version_waits(flows.orch.store).of_run(run_id) == []


def test_a_step_this_version_lacks_is_parked_for_the_runs_version(
        flows: SimpleNamespace) -> None:
    """A step removed or renamed since the run started: no task here, parked, not dropped."""
    run_id = _old_run(flows, send=False)
    envelope = Envelope.for_inputs(run_id, {"text": "hi"}, 10_000).to_message()
    queue = flows.skew.validate().steps["first"].queue
    flows.orch.celery.send_task("skew.removed_step", args=(envelope,),
                                kwargs={"run_id": run_id, "version": OLD}, queue=queue)
    waits = wait_until(lambda: version_waits(flows.orch.store).of_run(run_id), timeout=10,
                       what="the unknown step parked")
    assert [(w.step, w.version) for w in waits] == [("removed_step", OLD)]
    assert waits[0].message["task"] == "skew.removed_step"
    assert "no step 'removed_step'" in waits[0].parked_by


def test_resume_of_an_old_run_names_the_versions_and_needs_upgrade(
        flows: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    orch: Orchestrator = flows.orch
    current = flows.skew.validate().version
    run_id = _old_run(flows, send=False)
    orch.store.finish_run(run_id, RunStatus.FAILED, error="boom")
    with pytest.raises(NotResumable) as refused:
        orch.resume(run_id)
    assert f"started on skew@{OLD}; this process carries skew@{current}" in str(refused.value)
    assert "--upgrade" in str(refused.value)
    assert orch.store.recovery.run_state(run_id).version == OLD  # nothing changed
    cli = importlib.import_module("orchestration.cli.main")
    monkeypatch.setattr(cli, "orchestrator_for_cli", lambda **_: orch)
    refused_cli = CliRunner().invoke(cli.main, ["resume", run_id], env={"COLUMNS": "250"})
    assert refused_cli.exit_code != 0 and "--upgrade" in refused_cli.output
    done = CliRunner().invoke(cli.main, ["resume", run_id, "--upgrade"],
                              env={"COLUMNS": "250"})
    assert done.exit_code == 0, done.output
    assert f"resumed run {run_id} on skew@{current}" in done.output
    finished = wait_until(lambda: (lambda r: r if r.status.is_terminal else None)(
        orch.store.get_run(run_id)), timeout=15, what="the resumed run finished")
    assert finished.status is RunStatus.SUCCEEDED
    assert orch.store.recovery.run_state(run_id).version == current


def test_resume_refuses_even_with_upgrade_when_steps_differ(flows: SimpleNamespace) -> None:
    orch: Orchestrator = flows.orch
    run_id = str(uuid.uuid4())
    steps = planned(flows.skew.validate())
    orch.store.create_run(run_id, "skew", OLD, {"text": "hi"},
                          [*steps, replace(steps[0], name="gone_step", output_name="gone")])
    orch.store.finish_run(run_id, RunStatus.FAILED, error="boom")
    with pytest.raises(NotResumable, match="removed or renamed: gone_step"):
        orch.resume(run_id, upgrade=True)
    assert orch.store.recovery.run_state(run_id).version == OLD


def test_a_stalled_old_run_is_left_for_a_carrier_not_failed(flows: SimpleNamespace) -> None:
    orch: Orchestrator = flows.orch
    run_id = _old_run(flows, send=False)
    assert redispatch(orch, run_id, "skew", OLD, {"text": "hi"}, why="made no progress")
    waits = version_waits(orch.store).of_run(run_id)
    assert [(w.step, w.version) for w in waits] == [("", OLD)]
    assert orch.store.get_run(run_id).status is RunStatus.PENDING


def test_a_stalled_run_of_this_version_parked_elsewhere_is_redispatched_here(
        flows: SimpleNamespace) -> None:
    current = flows.skew.validate().version
    run_id = _old_run(flows, current, send=False)
    version_waits(flows.orch.store).park(VersionWait(
        run_id, "skew", current, "", "", {"redispatch": "made no progress"},
        "elsewhere (skew@other)"), utcnow())
    result = wait_until(lambda: (lambda r: r if r.status.is_terminal else None)(
        flows.orch.store.get_run(run_id)), timeout=15, what="the run finished")
    assert result.status is RunStatus.SUCCEEDED


def test_workers_advertise_the_versions_they_carry(
        flows: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    current = flows.skew.validate().version
    carriers = wait_until(lambda: version_waits(flows.orch.store).carriers(
        utcnow() - timedelta(seconds=5)).get("skew"), timeout=10, what="a heartbeat")
    assert carriers == {current}
    run_id = _old_run(flows, "elsewhere1", send=False)
    version_waits(flows.orch.store).park(VersionWait(
        run_id, "skew", "elsewhere1", "first", "default", {}, "test"), utcnow())
    cli = importlib.import_module("orchestration.cli.main")
    monkeypatch.setattr(cli, "orchestrator_for_cli", lambda **_: flows.orch)
    shown = CliRunner().invoke(cli.main, ["workers"], env={"COLUMNS": "250"}).output
    assert f"carried: skew@{current}" in shown, shown
    assert "waiting: 1 step message(s) of skew@elsewhere1" in shown, shown


def test_a_maps_chunks_carry_the_runs_version(
        flows: SimpleNamespace, published: list[tuple[str, Any]]) -> None:
    """Chunk messages are built by the worker mid-run: they name the version too."""
    result = flows.mapped.submit(items=[1, 2, 3, 4, 5]).wait(timeout=30)
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs["total"] == 30
    steps = [(name, body[1]) for name, body in published if name.startswith("skewmap.")]
    chunks = [kwargs for _, kwargs in steps if "chunk" in kwargs]
    assert len(chunks) == 3
    assert {kwargs.get("version") for _, kwargs in steps} == {flows.mapped.validate().version}


def test_the_grace_does_not_end_while_a_worker_carrying_the_version_lives(
        flows: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    orch: Orchestrator = flows.orch
    run_id = _old_run(flows, "carried2", send=False)
    version_waits(orch.store).park(VersionWait(
        run_id, "skew", "carried2", "first", "elsewhere.queue", {}, "test"),
        utcnow() - timedelta(hours=2))
    carrier = WorkerInfo("carrier-of-2", "old@host", "host", 1, ["elsewhere.queue"],
                         {"skew": ["carried2"]})
    orch.store.workers.beat(carrier, utcnow())
    monkeypatch.setattr(orch.settings, "version_grace", 60.0)
    sweep(orch, [])  # what any worker's heartbeat does
    assert [w.version for w in version_waits(orch.store).of_run(run_id)] == ["carried2"]
    assert orch.store.get_run(run_id).status is RunStatus.PENDING
    orch.store.workers.stopped(carrier.instance, utcnow())  # the old deployment is gone
    sweep(orch, [])
    run = orch.store.get_run(run_id)
    assert run.status is RunStatus.FAILED
    assert "for a worker carrying skew@carried2" in (run.error or "")
