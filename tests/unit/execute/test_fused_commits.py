"""A fused chain claims each next step in the transaction that records the one before it.

Counted on the writer engine of the embedded default (SQLite; the run stream off, so only
the step path commits): a 4-step run on one queue is its run row, the first claim and
four records (each with the next claim, the last with the run's end), 6 commits where a
claim and a record apiece took 9. The outcomes are those of the unfused path: a step
skipped by ``when=`` is not claimed, a failed one blocks what needs it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from orchestration import RunStatus, StepStatus, Workflow
from orchestration.testing import embedded_orchestrator


def _commits(engine: Any) -> tuple[list[int], Any]:
    count = [0]
    lock = threading.Lock()

    def on_commit(_conn: Any) -> None:
        with lock:
            count[0] += 1

    event.listen(engine, "commit", on_commit)
    return count, on_commit


@pytest.mark.parametrize("group_commit", [1, 32])
def test_a_four_step_fused_run_commits_six_times(tmp_path: Path, group_commit: int) -> None:
    """With ``group_commit=1`` every transaction is a commit; with sharing on (the
    default), runs going at once may share commits: never more, the same writes."""
    with embedded_orchestrator(tmp_path, stream=False, heartbeat_interval=3600,
                               worker_dead_after=7200, reconcile_interval=3600,
                               group_commit=group_commit) as app:
        wf = Workflow("fused_commits", app=app)

        @wf.task
        def a(x: int) -> int:
            return x + 1

        @wf.task
        def b(a: int) -> int:
            return a * 2

        @wf.task
        def c(b: int) -> int:
            return b - 3

        @wf.task
        def d(c: int) -> int:
            return c * 10

        assert wf.run(x=0, timeout=30).outputs["d"] == -10  # warm: schema, worker
        count, listener = _commits(app.store.engine)
        calls0 = app.store.group.calls
        try:
            runs = [wf.submit(x=n) for n in range(5)]
            results = [handle.wait(timeout=30) for handle in runs]
        finally:
            event.remove(app.store.engine, "commit", listener)
        assert [r.outputs["d"] for r in results] == [((n + 1) * 2 - 3) * 10 for n in range(5)]
        assert all(r.steps[name].attempts == 1 for r in results for name in "abcd")
        # The run rows (5) are written by submit; a claim and 4 records per run go
        # through the group.
        if group_commit == 1:
            assert count[0] == 5 * 6
        else:
            assert 5 + 5 * 5 / group_commit <= count[0] <= 5 * 6
            assert app.store.group.calls - calls0 == 5 * 5


def test_a_step_skipped_or_blocked_is_not_claimed_ahead(tmp_path: Path) -> None:
    with embedded_orchestrator(tmp_path, stream=False) as app:
        wf = Workflow("fused_skips", app=app)

        @wf.task
        def first(x: int) -> int:
            if x < 0:
                raise ValueError("negative")
            return x

        @wf.task(when=lambda first: first > 10)
        def big(first: int) -> str:
            return "big"

        @wf.task
        def after(first: int) -> int:
            return first + 1

        small = wf.run(x=1, timeout=30)
        assert small.status is RunStatus.SUCCEEDED
        assert small.steps["big"].status is StepStatus.SKIPPED
        assert small.steps["big"].attempts == 0
        assert small.outputs["after"] == 2
        failed = wf.submit(x=-1).wait(timeout=30)
        assert failed.status is RunStatus.FAILED
        for name in ("big", "after"):
            assert failed.steps[name].status is StepStatus.SKIPPED, name
            assert failed.steps[name].started_at is None, name
