"""Retention: finished runs past their policy go with every row that names them.

Runs of the embedded default end; some are then aged (finished_at moved into the past);
a prune deletes exactly the aged finished runs, across every table with a ``run_id``
(counted by one query per table), and never a run that is pending or waiting.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from orchestration import RunStatus, StepContext, Workflow
from orchestration.app import Orchestrator
from orchestration.core.clock import utcnow
from orchestration.store.models import RunRow
from orchestration.store.pruning import run_tables
from orchestration.submit.retention import prune_runs
from orchestration.testing import embedded_orchestrator
from tests.support.polling import wait_until

GATE = threading.Event()


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with embedded_orchestrator(Path(tmp_path_factory.mktemp("retention"))) as orch:
        yield _declare(orch)


def _declare(orch: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(orch=orch, kept=Workflow("ret_kept", app=orch, retention="off"),
                         short=Workflow("ret_short", app=orch, retention="1h"),
                         plain=Workflow("ret_plain", app=orch))

    for wf in (ns.kept, ns.short, ns.plain):
        @wf.task(name="first", cache=True)
        def first(n: int) -> int:
            return n

        @wf.task(name="second", depends_on="first")
        def second(first: int, ctx: StepContext) -> int:
            if first < 0:
                return int(ctx.wait_for_input("go", timeout=3600))
            if first == 999:
                GATE.wait(60)
            return first * 2

    return ns


def _age(orch: Orchestrator, run_ids: list[str], days: float) -> None:
    with orch.store.engine.begin() as conn:
        conn.execute(update(RunRow).where(RunRow.id.in_(run_ids))
                     .values(finished_at=utcnow() - timedelta(days=days)))


def _rows(orch: Orchestrator, run_ids: list[str]) -> dict[str, int]:
    with orch.store.engine.connect() as conn:
        counts = {table.name: int(conn.execute(select(func.count()).select_from(table).where(
            table.c.run_id.in_(run_ids))).scalar_one()) for table in run_tables()}
        counts["runs"] = int(conn.execute(select(func.count()).select_from(RunRow).where(
            RunRow.id.in_(run_ids))).scalar_one())
    return counts


def test_prune_deletes_exactly_the_old_finished_runs(flows: SimpleNamespace) -> None:
    orch = flows.orch
    old = [flows.plain.submit(n=n) for n in range(6)]
    recent = [flows.plain.submit(n=n) for n in range(6, 9)]
    waiting = flows.plain.submit(n=-1)
    running = flows.plain.submit(n=999)
    for handle in old + recent:
        assert handle.wait(timeout=30).status is RunStatus.SUCCEEDED
    wait_until(lambda: orch.store.run_status(waiting.run_id) is RunStatus.WAITING,
               timeout=30, what="a run waiting for input")
    old_ids = [h.run_id for h in old]
    alive = [waiting.run_id, running.run_id]
    _age(orch, old_ids, days=40)
    _age(orch, alive, days=40)  # a stale finished_at must not make a live run prunable
    before = _rows(orch, old_ids)
    assert before["steps"] == 12 and before["step_attempts"] >= 12

    dry = prune_runs(orch, older_than=30 * 86400, dry_run=True)
    assert sorted(dry.runs) == sorted(old_ids)
    assert {t: n for t, n in dry.rows.items() if n} == {t: n for t, n in before.items() if n}
    assert _rows(orch, old_ids) == before  # a dry run deletes nothing

    pruned = prune_runs(orch, older_than=30 * 86400)
    assert sorted(pruned.runs) == sorted(old_ids)
    assert all(count == 0 for count in _rows(orch, old_ids).values())
    kept = [h.run_id for h in recent] + alive
    assert _rows(orch, kept)["runs"] == len(kept)
    assert orch.store.run_status(waiting.run_id) is RunStatus.WAITING
    GATE.set()
    assert running.wait(timeout=30).status is RunStatus.SUCCEEDED


def test_the_policy_and_workflow_overrides(flows: SimpleNamespace) -> None:
    orch = flows.orch
    handles = {name: [getattr(flows, name).submit(n=n) for n in range(3)]
               for name in ("kept", "short", "plain")}
    for group in handles.values():
        for handle in group:
            assert handle.wait(timeout=30).status is RunStatus.SUCCEEDED
    ids = {name: [h.run_id for h in group] for name, group in handles.items()}
    for group in ids.values():
        _age(orch, group, days=2)
    # No ORCH_RETENTION: only ret_short's own 1 h applies; ret_kept is kept forever.
    pruned = prune_runs(orch)
    assert sorted(pruned.runs) == sorted(ids["short"])
    orch.settings.retention = 86400.0  # ORCH_RETENTION=1d: now ret_plain's runs go too
    try:
        pruned = prune_runs(orch, max_batches=1)
        assert sorted(pruned.runs) == sorted(ids["plain"])
        assert _rows(orch, ids["kept"])["runs"] == 3
        # The reconciler's pass prunes as well (nothing left here).
        assert orch.reconcile().runs_pruned == 0
    finally:
        orch.settings.retention = None


def test_orchestrate_db_prune(flows: SimpleNamespace) -> None:
    orch = flows.orch
    handle = flows.plain.submit(n=5)
    assert handle.wait(timeout=30).status is RunStatus.SUCCEEDED
    _age(orch, [handle.run_id], days=10)
    cli = importlib.import_module("orchestration.cli.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "orchestrator_for_cli", lambda **_: orch)
        with pytest.MonkeyPatch.context() as unset:  # no policy anywhere: refused
            unset.setattr(flows.short, "retention", None)
            unset.setattr(flows.kept, "retention", None)
            refused = CliRunner().invoke(cli.db, ["prune"])
        assert refused.exit_code != 0 and "no retention is configured" in refused.output
        bad = CliRunner().invoke(cli.db, ["prune", "--older-than", "soon"])
        assert bad.exit_code != 0 and "--older-than must be a duration" in bad.output
        dry = CliRunner().invoke(cli.db, ["prune", "--older-than", "7d", "--dry-run",
                                          "--json"])
        assert dry.exit_code == 0, dry.output
        assert json.loads(dry.output)["runs"] == 1
        done = CliRunner().invoke(cli.db, ["prune", "--older-than", "7d", "-w", "ret_plain"])
        assert done.exit_code == 0, done.output
        assert "deleted 1 run(s)" in done.output
    assert _rows(orch, [handle.run_id])["runs"] == 0
