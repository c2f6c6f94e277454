"""Several runs in one message (submit_many packs): each run fails, retries, waits and
records on its own; a malformed run in a pack never stops its neighbours."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from orchestration import RunHandle, RunStatus, StepContext, StepStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.compile.packing import PACK, pack, packable
from orchestration.store.repository import PlannedStep
from orchestration.testing import embedded_orchestrator


def _packs(published: list[tuple[str, Any]], task: str) -> list[list[Any]]:
    return [body[1][PACK] for name, body in published
            if name == task and PACK in (body[1] or {})]


def test_submit_many_shares_messages_and_every_run_records_its_own_outcome(
        tmp_path: Path, published: list[tuple[str, Any]]) -> None:
    calls: Counter[str] = Counter()
    lock = threading.Lock()
    with embedded_orchestrator(tmp_path, pack_size=8, inline_retry_limit=0.0) as app:
        wf = Workflow("packed", app=app)

        @wf.task(retries=1, backoff=0.01)
        def first(n: int, ctx: StepContext) -> int:
            with lock:
                calls[f"{n}:{ctx.attempt}"] += 1
            if n % 5 == 0:
                raise ValueError(f"bad {n}")  # fails both attempts
            if n % 7 == 0 and ctx.attempt == 1:
                raise ConnectionError("flaky")  # retried through the broker, alone
            return n * 2

        @wf.task
        def second(first: int) -> int:  # fused with first: one message per run
            return first + 1

        handles = wf.submit_many([{"n": n} for n in range(1, 41)])
        results = {h.run_id: h.wait(timeout=60) for h in handles}

        packs = _packs(published, "packed.first")
        assert [len(p) for p in packs] == [8] * 5, "40 runs in 5 messages of 8"
        # each retry (through the broker: inline_retry_limit=0) went out as its run alone
        singles = [body for name, body in published
                   if name == "packed.first" and PACK not in (body[1] or {})]
        assert len(singles) == len([n for n in range(1, 41) if n % 7 == 0 or n % 5 == 0])
        assert all(body[1]["params"] == {"first": {}} for body in singles)
        for n, handle in enumerate(handles, start=1):
            result = results[handle.run_id]
            steps = result.steps
            if n % 5 == 0:
                assert result.status is RunStatus.FAILED
                assert steps["first"].status is StepStatus.FAILED
                assert steps["first"].attempts == 2
                assert steps["second"].status is StepStatus.SKIPPED
            else:
                assert result.status is RunStatus.SUCCEEDED, (n, result.error)
                assert steps["second"].output == n * 2 + 1
                assert steps["first"].attempts == (2 if n % 7 == 0 else 1)
        # every attempt ran exactly once
        assert all(count == 1 for count in calls.values()), calls
        # Each run was claimed under its pack's delivery, whichever runner thread took it.
        workers = {r.steps["first"].worker for r in results.values()}
        assert len(workers) == 1 and None not in workers, workers


def test_a_malformed_run_in_a_pack_does_not_stop_its_neighbours(
        orchestrator: Orchestrator) -> None:
    wf = Workflow("packed_bad", app=orchestrator)

    @wf.task
    def only(n: int) -> int:
        return n * 10

    compiled = wf.validate()
    planned = [PlannedStep(name, b.spec.output, b.queue, b.spec.model, b.spec.critical)
               for name, b in compiled.steps.items()]
    runs = []
    for n in (1, 2):  # written as submit writes them, nothing sent yet
        run_id = str(uuid.uuid4())
        orchestrator.store.create_run(run_id, wf.name, compiled.version, {"n": n}, planned)
        runs.append([wf.canvas(run_id, {"n": n})["args"][0], run_id])
    task = orchestrator.celery.tasks["packed_bad.only"]
    task.apply_async(args=(), kwargs={PACK: [runs[0], ["not an envelope", 7], {"x": 1},
                                             runs[1]], "finalize": True,
                                      "version": compiled.version})
    for (_, run_id), n in zip(runs, (1, 2), strict=True):
        result = RunHandle(run_id, orchestrator.store).wait(timeout=30)
        assert result.status is RunStatus.SUCCEEDED
        assert result.steps["only"].output == n * 10


def test_only_one_message_runs_are_packed(orchestrator: Orchestrator) -> None:
    wf = Workflow("packed_shapes", app=orchestrator)

    @wf.task
    def a(n: int) -> int:
        return n

    @wf.task(queue="elsewhere")
    def b(a: int) -> int:
        return a

    canvas = wf.canvas("r1", {"n": 1})
    assert not packable(canvas)  # two queues: a chain of two messages
    single = Workflow("packed_single", app=orchestrator)

    @single.task
    def c(n: int) -> int:
        return n

    signatures = [single.canvas(f"r{i}", {"n": i}) for i in range(5)]
    assert all(packable(s) for s in signatures)
    packed = pack(signatures, 2, orchestrator.celery)
    assert [len(p["kwargs"][PACK]) for p in packed[:2]] == [2, 2]
    assert "run_id" not in packed[0]["kwargs"]
    assert packed[2]["kwargs"]["run_id"] == "r4"  # a pack of one is the run's own message


@pytest.mark.parametrize("size", [1])
def test_pack_size_one_sends_a_message_per_run(tmp_path: Path, size: int,
                                               published: list[tuple[str, Any]]) -> None:
    with embedded_orchestrator(tmp_path, pack_size=size) as app:
        wf = Workflow("unpacked", app=app)

        @wf.task
        def only(n: int) -> int:
            return n

        for handle in wf.submit_many([{"n": n} for n in range(6)]):
            assert handle.wait(timeout=30).status is RunStatus.SUCCEEDED
        assert not _packs(published, "unpacked.only")
        assert sum(1 for name, _ in published if name == "unpacked.only") == 6


def test_deferred_runs_are_sent_packed_by_the_worker(
        tmp_path: Path, published: list[tuple[str, Any]]) -> None:
    with embedded_orchestrator(tmp_path, pack_size=4) as app:
        wf = Workflow("packed_deferred", app=app)

        @wf.task
        def only(n: int) -> int:
            return n + 100

        handles = wf.submit_many([{"n": n} for n in range(10)], defer=True)
        for n, handle in enumerate(handles):
            result = handle.wait(timeout=30)
            assert result.status is RunStatus.SUCCEEDED
            assert result.outputs["only"] == n + 100
        assert sorted(len(p) for p in _packs(published, "packed_deferred.only")) == [2, 4, 4]
