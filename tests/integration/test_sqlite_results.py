"""SQLite as the results DB of several worker processes (the default database URL).

Two prefork workers (two processes each) write step transitions to one SQLite file
while a producer in a third process submits and waits: every run must succeed and every
step must have run, and been recorded, exactly once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.support.workflows import common as wf
from tests.support.processes import ROOT, child_env
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.workers]

RUNS = 60

_PRODUCE = """
import json, sys
from tests.integration.support.workflows.common import sqlite_diamond, calls
handles = [sqlite_diamond.submit(n=i) for i in range(int(sys.argv[1]))]
results = [h.wait(timeout=120) for h in handles]
print(json.dumps([
    {"status": r.status.value, "total": r.outputs["total"], "n": r.inputs["n"],
     "attempts": {name: s.attempts for name, s in r.steps.items()},
     "workers": sorted({s.worker for s in r.steps.values()}),
     "calls": {name: calls(r.run_id, name) for name in r.steps}}
    for r in results
]))
"""


def test_several_worker_processes_share_one_sqlite_results_db(
    workers: Workers, worker_logs: Path, tmp_path: Path
) -> None:
    env = child_env(ORCH_DATABASE_URL=f"sqlite:///{tmp_path / 'results.db'}")
    pool = Workers(worker_logs, env=env)
    try:
        first = pool.start("it-sqlite-1", [wf.SQLITE_QUEUE], pool="prefork", concurrency=2,
                           wait=False)
        second = pool.start("it-sqlite-2", [wf.SQLITE_QUEUE], pool="prefork", concurrency=2,
                            wait=False)
        pool.wait_ready(first)
        pool.wait_ready(second)
        producer = subprocess.run([sys.executable, "-c", _PRODUCE, str(RUNS)], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=180,
                                  check=False)
    finally:
        pool.stop_all()

    assert producer.returncode == 0, producer.stderr[-3000:]
    runs = json.loads(producer.stdout.strip().splitlines()[-1])
    assert len(runs) == RUNS
    assert {run["status"] for run in runs} == {"succeeded"}
    assert all(run["total"] == 2 * run["n"] + run["n"] ** 2 for run in runs)
    for run in runs:
        assert set(run["attempts"].values()) == {1}, run
        assert set(run["calls"].values()) == {1}, run
    # Both worker processes took part: the file really had concurrent writers.
    assert {worker for run in runs for worker in run["workers"]} >= {
        first.nodename, second.nodename}
