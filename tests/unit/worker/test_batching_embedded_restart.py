"""The embedded default loses no buffered element when its process is SIGKILLed.

A child process (embedded default, SQLite file) buffers three elements of a batch of
five and is killed; this process opens the same results DB, buffers two more, and the
batch of five is called: the three runs of the dead process finish too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from orchestration import RunHandle, RunStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.testing import embedded_orchestrator
from tests.support.polling import wait_until
from tests.support.processes import ROOT, child_env

CHILD = """
import sys, time
from pathlib import Path
from orchestration.testing import embedded_orchestrator
from tests.unit.worker.test_batching_embedded_restart import declare
with embedded_orchestrator(Path(sys.argv[1]), log_level="WARNING") as app:
    flow = declare(app)
    for n in (1, 2, 3):
        print(flow.submit(n=n).run_id, flush=True)
    time.sleep(600)
"""


def declare(app: Orchestrator) -> Workflow:
    flow = Workflow("batch_restart", inputs=["n"], app=app)

    @flow.task(batch_size=5, batch_wait=3600)
    def score(n: list[int]) -> list[int]:
        return [x * 10 for x in n]

    return flow


def test_elements_buffered_by_a_killed_embedded_process_are_called_after(
        tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], cwd=ROOT,
                             env=child_env(), stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        assert child.stdout is not None
        run_ids = [child.stdout.readline().strip() for _ in range(3)]
        with embedded_orchestrator(tmp_path, log_level="WARNING") as app:
            wait_until(lambda: all(app.store.get_run(r).status is RunStatus.WAITING
                                   for r in run_ids), timeout=30, what="3 elements buffered")
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            flow = declare(app)
            later = [flow.submit(n=n) for n in (4, 5)]
            results = [RunHandle(r, app.store).wait(timeout=60) for r in run_ids]
            results += [handle.wait(timeout=60) for handle in later]
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 5
    assert [r.outputs["score"] for r in results] == [10, 20, 30, 40, 50]
