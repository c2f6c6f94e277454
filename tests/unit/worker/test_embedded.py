"""The embedded default: runs stranded by a dead process are recovered by the next one."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import signals

from orchestration import RunHandle, RunResult, RunStatus, StepContext, StepStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.core.clock import utcnow
from orchestration.store.repository import AttemptRecord, PlannedStep, StepOutcome, Store
from orchestration.testing import embedded_orchestrator, embedded_settings
from orchestration.worker.embedded import EmbeddedWorker

Calls = list[tuple[str, str, int]]  # (step, run id, attempt)


def define(app: Orchestrator, calls: Calls) -> Workflow:
    """The same workflow in the dead process and in the next one."""
    wf = Workflow("stranded", app=app)

    @wf.task
    def extract(text: str, ctx: StepContext) -> str:
        calls.append(("extract", ctx.run_id, ctx.attempt))
        return text.upper()

    @wf.task
    def reply(extract: str, ctx: StepContext) -> str:
        calls.append(("reply", ctx.run_id, ctx.attempt))
        return f"re: {extract}"

    return wf


def define_evolving(app: Orchestrator) -> Workflow:
    """A workflow that gained a step since the dead process wrote its run."""
    wf = Workflow("evolving", app=app)

    @wf.task
    def draft(text: str) -> str:
        return text

    @wf.task
    def polish(draft: str) -> str:
        return draft.strip()

    return wf


def strand(store: Store, wf: Workflow, done: dict[str, Any], *, retrying: bool = False) -> str:
    """Write a run as a process that died mid-run would have left it (nothing enqueued)."""
    compiled = wf.validate()
    run_id = str(uuid.uuid4())
    planned = [PlannedStep(name, b.spec.output, b.queue, b.spec.model, b.spec.critical)
               for name, b in compiled.steps.items()]
    store.create_run(run_id, wf.name, compiled.version, {"text": "hello"}, planned)
    for name, output in done.items():
        claim = store.claim_step(run_id, name, worker="dead@host", task_id=None)
        store.record_step(run_id, name, StepOutcome(StepStatus.SUCCEEDED, output=output),
                          claimed_at=claim.claimed_at)
    if retrying:
        store.claim_step(run_id, "extract", worker="dead@host", task_id=None)
        failed = AttemptRecord(1, "failed", utcnow(), utcnow(), error="boom",
                               error_type="builtins.OSError")
        store.record_step(run_id, "extract", StepOutcome(StepStatus.RETRYING, attempts=[failed]))
    return run_id


@pytest.fixture(scope="module")
def recovered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    directory = tmp_path_factory.mktemp("recovery")
    store = Store(embedded_settings(directory).database_url)
    with embedded_orchestrator(directory) as dead:  # never starts its worker
        wf = define(dead, [])
        runs = {
            "half_done": strand(store, wf, {"extract": "FROM THE DEAD"}),
            "untouched": strand(store, wf, {}),
            "all_done": strand(store, wf, {"extract": "A", "reply": "re: A"}),
            "retrying": strand(store, wf, {}, retrying=True),
        }
        old_evolving = Workflow("evolving", app=dead)

        @old_evolving.task
        def draft(text: str) -> str:
            return text

        runs["changed"] = strand(store, old_evolving, {})
    store.dispose()
    calls: Calls = []
    with embedded_orchestrator(directory) as current:
        wf = define(current, calls)
        define_evolving(current)
        fresh = wf.submit(text="new")  # starts the in-process worker, which recovers
        results = {name: RunHandle(run_id, current.store).wait(timeout=10)
                   for name, run_id in runs.items() if name != "changed"}
        results["fresh"] = fresh.wait(timeout=10)
        runs["fresh"] = fresh.run_id
        yield SimpleNamespace(app=current, runs=runs, results=results, calls=calls)


def calls_of(recovered: SimpleNamespace, name: str) -> list[tuple[str, int]]:
    run_id = recovered.runs[name]
    return [(step, attempt) for step, run, attempt in recovered.calls if run == run_id]


def test_succeeded_step_is_not_rerun(recovered: SimpleNamespace) -> None:
    result: RunResult = recovered.results["half_done"]
    assert result.status is RunStatus.SUCCEEDED
    assert calls_of(recovered, "half_done") == [("reply", 1)]
    assert result.outputs == {"extract": "FROM THE DEAD", "reply": "re: FROM THE DEAD"}


def test_untouched_run_runs_every_step(recovered: SimpleNamespace) -> None:
    result: RunResult = recovered.results["untouched"]
    assert result.status is RunStatus.SUCCEEDED
    assert sorted(calls_of(recovered, "untouched")) == [("extract", 1), ("reply", 1)]
    assert result.outputs == {"extract": "HELLO", "reply": "re: HELLO"}


def test_run_with_every_step_done_is_finalised(recovered: SimpleNamespace) -> None:
    result: RunResult = recovered.results["all_done"]
    assert result.status is RunStatus.SUCCEEDED and result.finished_at is not None
    assert calls_of(recovered, "all_done") == []
    assert result.outputs == {"extract": "A", "reply": "re: A"}


def test_retrying_step_continues_its_attempt_count(recovered: SimpleNamespace) -> None:
    result: RunResult = recovered.results["retrying"]
    assert result.status is RunStatus.SUCCEEDED
    assert ("extract", 2) in calls_of(recovered, "retrying")
    extract = result.steps["extract"]
    assert extract.attempts == 2
    assert [a["status"] for a in extract.attempt_log] == ["failed", "succeeded"]


def test_runs_of_the_live_process_are_not_redispatched(recovered: SimpleNamespace) -> None:
    result: RunResult = recovered.results["fresh"]
    assert result.outputs == {"extract": "NEW", "reply": "re: NEW"}
    assert sorted(calls_of(recovered, "fresh")) == [("extract", 1), ("reply", 1)]
    assert all(step.deliveries == 1 for step in result.steps.values())


def test_only_the_lock_holder_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(embedded_settings(tmp_path).database_url)
    with embedded_orchestrator(tmp_path) as writer:
        run_id = strand(store, define(writer, []), {})
    store.dispose()
    dispatched: dict[str, list[str]] = {"first": [], "second": []}
    with embedded_orchestrator(tmp_path) as first, embedded_orchestrator(tmp_path) as second:
        for name, app in (("first", first), ("second", second)):
            monkeypatch.setattr(define(app, []), "dispatch",
                                lambda run, inputs, name=name: dispatched[name].append(run))
        holder = EmbeddedWorker(first)  # recover() without starting a worker
        assert holder.recover() == 1 and dispatched["first"] == [run_id]
        assert EmbeddedWorker(second).recover() == 0 and dispatched["second"] == []
        holder.stop()  # the first process exits: its lock is released
        successor = EmbeddedWorker(second)
        try:
            assert successor.recover() == 1 and dispatched["second"] == [run_id]
        finally:
            successor.stop()


# -- regressions ------------------------------------------------------------------


def test_recovered_run_of_a_changed_workflow_still_ends(recovered: SimpleNamespace) -> None:
    result = RunHandle(recovered.runs["changed"], recovered.app.store).wait(timeout=30)
    assert result.status.is_terminal


def test_workflow_declared_after_the_worker_started_runs(recovered: SimpleNamespace) -> None:
    late = Workflow("late", app=recovered.app)

    @late.task
    def echo(x: int) -> int:
        return x

    assert late.run(x=1, timeout=30).outputs == {"echo": 1}


def test_two_orchestrators_do_not_share_the_in_process_broker(
        recovered: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    discarded = threading.Event()

    def on_unknown(**_: Any) -> None:
        discarded.set()

    signals.task_unknown.connect(on_unknown, weak=False)
    try:
        with embedded_orchestrator(tmp_path) as other:  # `recovered.app`'s worker is running
            wf = Workflow("isolated", app=other)

            @wf.task
            def echo(x: int) -> int:
                return x

            # publish before this orchestrator's worker runs, so only the other could take it
            monkeypatch.setattr(other, "before_dispatch", lambda compiled: None)
            handle = wf.submit(x=1)
            discarded.wait(timeout=2)
            other.embedded_worker()
            assert handle.wait(timeout=30).outputs == {"echo": 1}
    finally:
        signals.task_unknown.disconnect(on_unknown)
