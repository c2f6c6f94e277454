"""resume() hands back a RunHandle, as submit() does, so ``resume(run_id).wait()`` works."""

from __future__ import annotations

from pathlib import Path

import orchestration
from orchestration import RunHandle, RunStatus, Workflow
from orchestration.testing import embedded_orchestrator


def test_resume_returns_a_handle_to_wait_on(tmp_path: Path) -> None:
    broken = {"yes": True}
    with embedded_orchestrator(tmp_path) as orch:
        wf = Workflow("resume_handle", orchestrator=orch)

        @wf.task(retries=0)
        def flaky(x: int) -> int:
            if broken["yes"]:
                raise RuntimeError("down")
            return x + 1

        failed = wf.submit(x=1).wait(timeout=30)
        assert failed.status is RunStatus.FAILED
        broken["yes"] = False

        handle = orchestration.resume(failed.run_id, orchestrator=orch)

        assert isinstance(handle, RunHandle) and handle.run_id == failed.run_id
        result = handle.wait(timeout=30)
        assert result.status is RunStatus.SUCCEEDED
        assert result.outputs["flaky"] == 2
        assert wf.app is wf.orchestrator is orch  # the old name still answers
