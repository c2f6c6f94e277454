"""Runs sharing a message (``submit_many`` packs) on a real worker, killed mid-pack.

A pack of 16 runs: some finish, some fail on their own, some hang mid-step when the
worker's main process is SIGKILLed. After another worker starts, every run ends as if
it had had a message of its own: the finished ones are not run again, the hung ones are
run again once (a crash counted), the failing ones fail without touching the others.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

import pytest

from orchestration import RunStatus, StepStatus, get_run
from orchestration.compile.packing import PACK
from tests.integration.support.helpers import wait_until
from tests.integration.support.workflows.common import calls
from tests.integration.support.workflows.packs import PACKED_QUEUE, hangs, packed
from tests.integration.test_liveness import _env, _started, _terminal
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

RUNS = 16


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_pack_killed_mid_way_runs_each_run_exactly_as_its_own_message(
        pool: str, extra_workers: Workers, published: list[tuple[str, Any]]) -> None:
    extra_workers.env = _env(ORCH_PACK_CONCURRENCY=str(RUNS))  # every run of the pack at once
    first = extra_workers.start(f"pack-a-{pool}", [PACKED_QUEUE], pool=pool, concurrency=2)
    handles = packed.submit_many([{"n": n} for n in range(1, RUNS + 1)])
    sent = [body for name, body in published if name == "it_packed.work"]
    assert len(sent) == 1 and len(sent[0][1][PACK]) == RUNS
    ids = {n: h.run_id for n, h in enumerate(handles, start=1)}
    hung = [n for n in ids if hangs(n)]
    quick = [n for n in ids if not hangs(n)]
    wait_until(lambda: all(_started(ids[n], "work") for n in hung), timeout=60,
               what="the hanging runs to start")
    wait_until(lambda: all(get_run(ids[n]).status.is_terminal for n in quick), timeout=60,
               what="the other runs of the pack to end")
    os.kill(first.process.pid, signal.SIGKILL)  # the main process: the pack is not acked
    first.process.wait()
    with contextlib.suppress(ProcessLookupError):  # an orphaned prefork child
        os.killpg(first.process.pid, signal.SIGKILL)
    extra_workers.start(f"pack-b-{pool}", [PACKED_QUEUE], pool=pool, concurrency=2)
    for n, run_id in ids.items():
        run = _terminal(None, run_id, timeout=90)
        work = run.steps["work"]
        if n % 5 == 0:
            assert run.status is RunStatus.FAILED, (n, run.error)
            assert work.status is StepStatus.FAILED
            assert run.steps["done"].status is StepStatus.SKIPPED
        else:
            assert run.status is RunStatus.SUCCEEDED, (n, run.error)
            assert run.outputs["done"] == n * 10 + 1
        if hangs(n):  # mid-step at the kill: run again once
            assert work.crashes == 1, n
            assert calls(run_id, "work") == 2, n
        else:  # finished before the kill: never run again
            assert work.crashes == 0, n
            assert calls(run_id, "work") == 1, n
