"""Memory retention: turns and summaries past their workflow's retention are deleted."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from orchestration import Memory, RunStatus, StepContext, Workflow
from orchestration.core.clock import utcnow
from orchestration.submit.retention import forget, prune_memory
from orchestration.testing import embedded_orchestrator


def test_prune_deletes_only_what_is_past_retention_and_reconcile_prunes(tmp_path: Path) -> None:
    with embedded_orchestrator(tmp_path) as orch:
        kept = Workflow("ret_kept", inputs=["c"], app=orch, memory=Memory(key="c"))
        brief = Workflow("ret_brief", inputs=["c"], app=orch,
                         memory=Memory(key="c", retention=3600))

        @kept.task
        def keep(ctx: StepContext) -> None:
            ctx.memory.append(user="kept forever")

        @brief.task
        def short(ctx: StepContext) -> None:
            ctx.memory.append(user="kept an hour")

        assert kept.run(c="a", timeout=20).status is RunStatus.SUCCEEDED
        assert brief.run(c="a", timeout=20).status is RunStatus.SUCCEEDED
        memory = orch.store.memory
        assert prune_memory(orch) == 0  # nothing is an hour old yet
        assert orch.reconcile().memory_pruned == 0
        assert prune_memory(orch, utcnow() + timedelta(hours=2)) == 1
        assert set(memory.turns("a")) == {"ret_kept"}
        done = forget(orch, "a")
        assert (done.turns, done.runs) == (1, 2)  # both runs carried conversation "a"
        assert memory.turns("a") == {}
