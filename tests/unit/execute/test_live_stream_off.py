"""ORCH_STREAM=off: a run's steps write nothing to its stream (own orchestrator, own module)."""

from __future__ import annotations

from pathlib import Path

from orchestration import StepContext, Workflow
from orchestration.testing import embedded_orchestrator


def test_streaming_off_writes_nothing(tmp_path: Path) -> None:
    with embedded_orchestrator(tmp_path, redis_url=None, stream=False) as orch:
        wf = Workflow("live_off", app=orch)

        @wf.task
        def only(ctx: StepContext) -> str:
            ctx.partial("hidden")
            ctx.on_token("hidden")
            return "done"

        handle = wf.submit()
        handle.wait(timeout=30)
        assert orch.run_stream.read(handle.run_id) == []
