"""Repro: what a duplicate delivery of a *running* step does (not a pytest test).

    .venv/bin/python -m tests.chaos.repro_duplicates

Delivery is at least once (README, Guarantees), so a step's message can be delivered
again while a first delivery is still running it: a Redis visibility restore of a slow
step, a reconciler re-dispatch, a predecessor re-delivered after it had passed its
envelope on. Here the duplicates come from ``orchestration.reconcile`` while the
4-second step ``first`` of ``chaos_repro`` runs; one prefork worker (-c 4) serves both
queues, and **no process is ever killed**.

Case ``poison``: three duplicates. Each claim of the step while it is ``running``
counts a crash (runtime: "a claim of a step still 'running' counts a crashed
delivery"), so the third duplicate fails the step as a ``PoisonStep`` ("its worker died
3 times") and the run fails, although no worker died.

Case ``lineage``: one duplicate. Both deliveries run ``first``; the original records its
output, the duplicate's ``record_step`` is refused, but ``record_and_pass`` passes the
duplicate's *own* output on anyway. ``second`` is then run on both outputs and the
duplicate's (faster) execution records, so the recorded ``second`` was computed from
an output of ``first`` that was never recorded.

Needs Redis (``ORCH_CHAOS_REDIS_URL``, default DB 12 of 127.0.0.1:6379) and PostgreSQL
(``ORCH_TEST_POSTGRES_URL``); creates and drops its own database.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
COUNTER_URL = os.environ.get("ORCH_CHAOS_REDIS_URL", "redis://127.0.0.1:6379/12")
ADMIN_URL = os.environ.get("ORCH_TEST_POSTGRES_URL",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DATABASE = f"orch_chaos_repro_{uuid.uuid4().hex[:10]}"
DATABASE_URL = make_url(ADMIN_URL).set(database=DATABASE).render_as_string(hide_password=False)
ORCH = {
    "ORCH_BROKER_URL": COUNTER_URL, "ORCH_RESULT_BACKEND": COUNTER_URL,
    "ORCH_REDIS_URL": COUNTER_URL, "ORCH_CHAOS_COUNTER_URL": COUNTER_URL,
    "ORCH_DATABASE_URL": DATABASE_URL, "ORCH_IMPORTS": "tests.chaos.workflows",
    "ORCH_LOG_LEVEL": "WARNING",
}
os.environ.update(ORCH)  # before anything builds the default orchestrator
sys.path.insert(0, str(ROOT))

from orchestration import get_run, reconcile  # noqa: E402
from tests.chaos.harness import chaos_env  # noqa: E402
from tests.chaos.workflows import REPRO_QUEUES, chaos_repro, exec_key  # noqa: E402
from tests.support.workers import Workers  # noqa: E402


def _step_status(engine: Any, run_id: str, step: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(text("SELECT status FROM steps WHERE run_id = :r AND name = :n"),
                            {"r": run_id, "n": step}).scalar()


def _wait(probe: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _report(counters: redis.Redis, run_id: str) -> dict[str, Any]:
    run = get_run(run_id)
    steps = {name: {"status": s.status.value, "deliveries": s.deliveries, "crashes": s.crashes,
                    "executions": int(counters.get(exec_key(run_id, name)) or 0),
                    "error_type": s.error_type, "output": s.output}
             for name, s in run.steps.items()}
    return {"run": run_id, "status": run.status.value, "error": run.error, "steps": steps}


def case(engine: Any, counters: redis.Redis, label: str, duplicates: int,
         first_delay: float) -> dict[str, Any]:
    run_id = chaos_repro.submit(label=label).run_id
    _wait(lambda: _step_status(engine, run_id, "first") == "running", 30, "first to start")
    time.sleep(first_delay)
    for _ in range(duplicates):
        done = reconcile(idle_seconds=0.2)  # the run "made no progress": its step is slow
        assert run_id in done.redispatched, done
        time.sleep(0.4)
    _wait(lambda: get_run(run_id).status.is_terminal, 60, "the run to end")
    time.sleep(REPRO_SETTLE_S)  # the slower duplicates finish and pass on
    return _report(counters, run_id)


REPRO_SETTLE_S = 6.0


def main() -> int:
    counters = redis.Redis.from_url(COUNTER_URL)
    if counters.dbsize():
        print(f"{COUNTER_URL} is not empty: is a chaos session running? Not flushing it.")
        return 2
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    engine = create_engine(DATABASE_URL)
    log_dir = Path(tempfile.mkdtemp(prefix="orch-chaos-repro-"))
    workers = Workers(log_dir, env=chaos_env(**ORCH))
    try:
        worker = workers.start("repro", REPRO_QUEUES, concurrency=4)
        poison = case(engine, counters, "poison", duplicates=3, first_delay=0.2)
        lineage = case(engine, counters, "lineage", duplicates=1, first_delay=1.0)
        log = worker.log_path.read_text()
        deaths = log.count("WorkerLostError") + log.count("exited with")
    finally:
        workers.stop_all()
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        counters.flushdb()
    print(f"worker log: {worker.log_path}; pool processes that died: {deaths}")
    print("\n== poison: 3 duplicate deliveries of a running step, no process killed ==")
    _print(poison)
    print("\n== lineage: 1 duplicate delivery of a running step ==")
    _print(lineage)
    first_out = lineage["steps"]["first"]["output"]
    second_out = lineage["steps"]["second"]["output"]
    consistent = str(second_out).startswith(f"{first_out}|second:")
    print(f"recorded second built on recorded first: {consistent}")
    false_poison = (poison["steps"]["first"]["error_type"] == "PoisonStep" and deaths == 0)
    print(f"\nBUG false poison: {false_poison}; BUG unrecorded output passed on: {not consistent}")
    return 1 if false_poison or not consistent else 0


def _print(report: dict[str, Any]) -> None:
    print(f"run {report['run']}: {report['status']} {report['error'] or ''}")
    for name, step in report["steps"].items():
        print(f"  {name}: {step}")


if __name__ == "__main__":
    sys.exit(main())
