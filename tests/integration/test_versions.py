"""Upgrading workers with runs in flight: two real workers carrying two versions.

A worker of version 2 gets the messages of runs started on version 1: it never runs them
with its code (a changed step, and a step it no longer has), it parks them, and
``orchestrate show`` says which version the run waits for. A worker of version 1
started later takes them from its heartbeat and every run finishes on version 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from orchestration import RunStatus, default_orchestrator, get_run
from orchestration.core.clock import utcnow
from orchestration.store.versions import VersionWaits
from tests.integration.support.helpers import wait_until
from tests.integration.support.workflows import versions as wf
from tests.support.processes import child_env, orchestrate
from tests.support.workers import Workers

MODULE = "tests.integration.support.workflows.versions"
pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def _pool(logs: Path, version: str) -> Workers:
    return Workers(logs, env={**os.environ, "ORCH_IMPORTS": MODULE,
                              "ORCH_SKEW_VERSION": version,
                              "ORCH_HEARTBEAT_INTERVAL": "0.5",
                              "ORCH_WORKER_DEAD_AFTER": "5"})


@pytest.fixture
def pools(worker_logs: Path, workers: Workers) -> Iterator[tuple[Workers, Workers]]:
    old, new = _pool(worker_logs, "1"), _pool(worker_logs, "2")
    try:
        yield old, new
    finally:
        new.stop_all()
        old.stop_all()


def _waits() -> VersionWaits:
    store = default_orchestrator().store
    return VersionWaits(store.engine, store.reader)


def test_runs_of_version_1_wait_for_and_finish_on_a_worker_of_version_1(
        pools: tuple[Workers, Workers]) -> None:
    old, new = pools
    v1 = wf.skew.validate().version
    new.start("skew-v2", [wf.QUEUE, wf.REPLY_QUEUE], pool="threads", concurrency=2)
    v2 = wait_until(lambda: _waits().carriers(utcnow() - timedelta(seconds=5)).get("it_skew"),
                    timeout=30, what="the version-2 worker's heartbeat")
    assert v1 not in v2

    first = wf.skew.submit(text="Hello")
    parked = wait_until(lambda: _waits().of_run(first.run_id), timeout=30,
                        what="the version-2 worker parking the step")
    assert [(w.step, w.version) for w in parked] == [("classify", v1)]
    assert get_run(first.run_id).status is RunStatus.PENDING
    shown = orchestrate("show", first.run_id,
                        env=child_env(imports=(MODULE,), COLUMNS="250")).stdout
    assert f"waits for a worker carrying it_skew@{v1}" in shown, shown

    # A worker of version 1 comes: it takes the parked step; more runs meet both workers.
    old.start("skew-v1", [wf.QUEUE, wf.REPLY_QUEUE], pool="threads", concurrency=2)
    more = [wf.skew.submit(text=f"t{i}") for i in range(6)]
    for handle in [first, *more]:
        result = handle.wait(timeout=90)
        assert result.status is RunStatus.SUCCEEDED, (result.status, result.error)
        # Version 1's code, never version 2's (no "v2:", no "answer to").
        assert result.outputs["reply"].startswith("reply to v1:"), result.outputs
        assert set(result.steps) == {"classify", "reply"}
        assert all(step.worker and step.worker.startswith("skew-v1@")
                   for step in result.steps.values()), {
            name: step.worker for name, step in result.steps.items()}
    assert [name for name, *_ in _waits().waiting() if name == "it_skew"] == []
    carried = _waits().carriers(utcnow() - timedelta(seconds=5))["it_skew"]
    assert v1 in carried and len(carried) == 2
