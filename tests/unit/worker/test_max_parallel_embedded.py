"""max_parallel on the embedded default: runs and steps beyond the limit wait, then run.

The steps count themselves (a lock-guarded counter): never more than the limit execute
at once, every run finishes, and a waiting run is ``pending`` with a permit wait on
record (``orchestrate show`` says so) until it gets its permit.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from orchestration import RunStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.testing import embedded_orchestrator
from tests.support.polling import wait_until


class Gauge:
    """How many are inside at once, and the most ever seen, per key."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.release = threading.Event()

    def enter(self, key: str) -> None:
        with self.lock:
            self.now[key] = self.now.get(key, 0) + 1
            self.most[key] = max(self.most.get(key, 0), self.now[key])

    def fill(self, key: str, count: int, within: float = 2.0) -> None:
        """Wait (briefly) until ``count`` are inside: the limit is reached, whatever the load."""
        deadline = time.monotonic() + within
        while self.now.get(key, 0) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    def leave(self, key: str) -> None:
        with self.lock:
            self.now[key] -= 1


RUNS, STEPS = Gauge(), Gauge()
ORDER: list[str] = []
GATE = threading.Event()


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with embedded_orchestrator(Path(tmp_path_factory.mktemp("permits")),
                               embedded_concurrency=8) as orch:
        yield _declare(orch)


def _declare(orch: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(orch=orch,
                         runs=Workflow("limited_runs", app=orch, max_parallel=2),
                         keyed=Workflow("limited_keyed", app=orch, max_parallel=1,
                                        concurrency_key="tenant"),
                         steps=Workflow("limited_steps", app=orch),
                         ordered=Workflow("limited_ordered", app=orch, max_parallel=1))

    @ns.ordered.task
    def in_order(tag: str) -> str:
        ORDER.append(tag)
        if tag == "first":
            GATE.wait(30)
        return tag

    @ns.runs.task
    def start(n: int) -> int:
        RUNS.enter("runs")
        RUNS.fill("runs", 2)
        return n

    @ns.runs.task(depends_on=start)
    def finish(start: int) -> int:
        time.sleep(0.05)
        RUNS.leave("runs")
        return start

    @ns.keyed.task
    def held(tenant: str, n: int) -> int:
        RUNS.enter(tenant)
        RUNS.release.wait(30)
        RUNS.leave(tenant)
        return n

    @ns.steps.task
    def free(n: int) -> int:
        return n

    @ns.steps.task(depends_on=free, max_parallel=3)
    def narrow(free: int) -> int:
        STEPS.enter("narrow")
        STEPS.fill("narrow", 3)
        STEPS.leave("narrow")
        return free

    return ns


def test_a_workflow_limit_bounds_runs_executing_at_once(flows: SimpleNamespace) -> None:
    handles = [flows.runs.submit(n=n) for n in range(12)]
    results = [handle.wait(timeout=60) for handle in handles]
    assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 12
    assert [r.outputs["finish"] for r in results] == list(range(12))
    assert RUNS.most["runs"] == 2


def test_a_step_limit_bounds_its_executions(flows: SimpleNamespace) -> None:
    results = [h.wait(timeout=60) for h in flows.steps.submit_many([{"n": n}
                                                                     for n in range(15)])]
    assert all(r.status == RunStatus.SUCCEEDED for r in results)
    assert STEPS.most["narrow"] == 3


def test_a_key_partitions_the_limit_and_a_waiting_run_is_pending(
        flows: SimpleNamespace) -> None:
    store = flows.orch.store
    first = flows.keyed.submit(tenant="a", n=1)
    second = flows.keyed.submit(tenant="a", n=2)
    other = flows.keyed.submit(tenant="b", n=3)
    try:
        # Tenant b is not held up by tenant a's permit; a's second run waits, pending.
        wait_until(lambda: RUNS.now.get("a") == 1 and RUNS.now.get("b") == 1, timeout=30,
                   what="both tenants running")
        assert store.run_status(second.run_id) == RunStatus.PENDING
        [(scope, step, ahead)] = store.permit_waits.of_run(second.run_id)
        assert (scope, step, ahead) == ("wf:limited_keyed:a", None, 0)
        # orchestrate show says why it waits.
        cli = importlib.import_module("orchestration.cli.main")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cli, "orchestrator_for_cli", lambda: flows.orch)
            shown = CliRunner().invoke(cli.main, ["show", second.run_id],
                                       env={"COLUMNS": "250"})
        assert "pending" in shown.output.splitlines()[0], shown.output
        assert ("queued: the run waits for a max_parallel permit of wf:limited_keyed:a "
                "(0 ahead of it)") in shown.output
    finally:
        RUNS.release.set()
    assert [h.wait(timeout=60).status for h in (first, second, other)] == \
        [RunStatus.SUCCEEDED] * 3
    assert RUNS.most["a"] == 1
    # The waker deletes the wait row just after sending the run, which may finish first.
    wait_until(lambda: store.permit_waits.of_run(second.run_id) == [], timeout=30,
               what="the second run's wait row deleted by its waker")


def test_waiting_runs_get_permits_in_priority_order(flows: SimpleNamespace) -> None:
    first = flows.ordered.submit(tag="first")
    wait_until(lambda: ORDER == ["first"], timeout=30, what="the first run holding the permit")
    normal = [flows.ordered.submit(tag=f"normal-{n}") for n in range(3)]
    urgent = flows.ordered.submit(tag="urgent", priority=9)
    GATE.set()
    for handle in (first, *normal, urgent):
        assert handle.wait(timeout=60).status is RunStatus.SUCCEEDED
    assert ORDER == ["first", "urgent", "normal-0", "normal-1", "normal-2"]
