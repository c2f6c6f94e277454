"""Scenario 3: the results DB (PostgreSQL) goes away mid-batch, briefly and for long.

A PostgreSQL cluster of the test's own (``initdb`` + ``pg_ctl`` on a free port, never the
shared server) holds the results; Redis DB 12 of the shared server is broker, result
backend and instrumentation. A prefork worker (-c 2) and a threads worker (-c 4) serve
the 4 per-step queues of ``chaos_db`` (the ticket chain, 0.2-0.4 s per step, a broker
hop between steps). 60 runs are submitted; when about a third of their steps are done the
cluster is stopped ``-m immediate`` (every connection dropped, like a crash) and started
again after ``OUTAGE_S``:

- short (5 s): within any retry window;
- long (25 s, the workers' ``ORCH_DB_OUTAGE_HOLD`` at 10 s): longer than the engine's
  in-process DB retry window, so finished steps are handed back to the broker.

No worker died and no step crashed, so what must hold: every run succeeds with no
reconciler pass (the workers keep what they could not record and finish it when the DB
is back), no crash is recorded, a step is executed again only if it was in flight during
the outage, nothing is recorded twice, and no worker exits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine, create_engine, text

from tests.chaos.harness import chaos_env, log, replace_dead, run_cli, submit
from tests.chaos.verdict import (
    Outage,
    Scenario,
    analyse,
    dump_evidence,
    install_audit,
    terminal_count,
    wait_for,
)
from tests.chaos.workflows import DB_QUEUE, queues
from tests.support.own_postgres import OwnPostgres, own_postgres
from tests.support.workers import Workers

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(480)]

RUNS = 60
QUEUES = queues(DB_QUEUE, hops=True)
STOP_AT_STEPS = 0.3  # share of all steps finished when the DB stops
RECOVER_DEADLINE_S = 150  # from the DB's restart: every run terminal by then


@pytest.fixture
def cluster(worker_pool: Workers) -> Iterator[OwnPostgres]:
    """A PostgreSQL cluster of this test, started; destroyed at the end."""
    with own_postgres() as own:
        try:
            yield own
        finally:
            (worker_pool.log_dir / "postgres.log").write_text(own.log_tail(5000))


def _steps_done(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM steps WHERE finished_at IS NOT NULL")).scalar() or 0)


def _loud_workers(pool: Workers, since: float) -> list[str]:
    """Workers whose log has a warning or worse about the database since ``since``."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since))
    loud = []
    for worker in pool.started:
        lines = worker.log_path.read_text(errors="replace").splitlines()
        if any(('"level": "warning"' in line or '"level": "error"' in line
                or '"level": "critical"' in line)
               and ("database" in line.lower() or "OperationalError" in line)
               and line[15:34] >= stamp for line in lines):
            loud.append(worker.nodename)
    return loud


@pytest.mark.parametrize(("outage_s", "hold_s"), [(5, None), (25, 10)],
                         ids=["short-5s", "long-25s-hold-10s"])
def test_runs_survive_a_results_db_outage(
        outage_s: int, hold_s: int | None, counters: redis.Redis, cluster: OwnPostgres,
        worker_pool: Workers) -> None:
    kwargs = counters.connection_pool.connection_kwargs
    redis_url = f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs['db']}"
    env = chaos_env(ORCH_BROKER_URL=redis_url, ORCH_RESULT_BACKEND=redis_url,
                    ORCH_REDIS_URL=redis_url, ORCH_CHAOS_COUNTER_URL=redis_url,
                    ORCH_DATABASE_URL=cluster.url)
    if hold_s is not None:  # the window to outlast (60 s by default), shorter for the suite
        env["ORCH_DB_OUTAGE_HOLD"] = str(hold_s)
    worker_pool.env = env
    engine = create_engine(cluster.url, pool_pre_ping=True)
    try:
        run_cli(env, "db", "upgrade")
        install_audit(engine)
        prefork = worker_pool.start("db-prefork", QUEUES, pool="prefork", concurrency=2,
                                    wait=False)
        threads = worker_pool.start("db-threads", QUEUES, pool="threads", concurrency=4,
                                    wait=False)
        worker_pool.wait_ready(prefork)
        worker_pool.wait_ready(threads)
        log(f"PostgreSQL of our own on {cluster.port}; workers ready; logs in "
            f"{worker_pool.log_dir}")

        run_ids = submit(env, RUNS, "chaos_db")
        submitted = time.monotonic()
        while (_steps_done(engine) < STOP_AT_STEPS * RUNS * 4
               and time.monotonic() < submitted + 60):
            time.sleep(0.1)
        done_before, steps_before = terminal_count(engine), _steps_done(engine)
        engine.dispose()
        stopped_at = time.time()
        cluster.stop()
        log(f"PostgreSQL stopped at {done_before}/{RUNS} terminal, {steps_before} steps done")
        deaths: list[str] = []
        outage_ends = time.monotonic() + outage_s
        while time.monotonic() < outage_ends:
            deaths.extend(replace_dead(worker_pool))
            time.sleep(0.5)
        cluster.start()
        restarted_at = time.time()
        log(f"PostgreSQL started again after {restarted_at - stopped_at:.1f} s")

        first_progress: float | None = None

        def tick(done: int) -> None:
            nonlocal first_progress
            ended = replace_dead(worker_pool)
            for line in ended:
                log(f"worker died, restarted: {line}")
            deaths.extend(ended)
            if first_progress is None and _steps_done(engine) > steps_before:
                first_progress = time.time()

        done, all_done_at = wait_for(engine, RUNS, time.monotonic() + RECOVER_DEADLINE_S,
                                     tick=tick)
        log(f"{done}/{RUNS} terminal {time.time() - restarted_at:.1f} s after the restart")
        time.sleep(3)  # re-deliveries still in flight land before the verdict
        loud = _loud_workers(worker_pool, stopped_at)
        worker_pool.stop_all()

        scenario = Scenario(outages=[Outage("results DB", stopped_at, restarted_at)])
        verdict = analyse(engine, counters, run_ids, scenario=scenario)
        verdict.figures.update({
            "outage (s)": round(restarted_at - stopped_at, 1),
            "runs terminal / steps done when the DB stopped": f"{done_before} / {steps_before}",
            "workers that died (restarted by the supervisor)": deaths,
            "workers that logged the outage at WARNING or worse": loud,
            "first step finished after the restart (s)": (
                round(first_progress - restarted_at, 1) if first_progress else None),
            "time to recover: all terminal after the restart (s)": (
                round(all_done_at - restarted_at, 1) if all_done_at else None),
        })
        verdict.print(f"scenario 3: results DB down {outage_s} s")
        dump_evidence(engine, verdict, worker_pool.log_dir / "evidence.txt")
    finally:
        engine.dispose()
    assert steps_before < RUNS * 4, "every step was done before the outage: nothing to judge"
    assert not deaths, f"workers died during a results-DB outage: {deaths}"
    assert not verdict.violations, "\n".join(verdict.violations)
