"""Scenario 1: SIGKILL prefork pool processes and worker main processes under load.

Two ``celery -A orchestration worker -P prefork -c 2`` on the test's own queues, Redis
DB 12 of the shared server as broker and backend, a fresh PostgreSQL results DB. 300
runs of the 4-step ticket chain (50-150 ms per step), in two layouts, alternating:

- ``chaos_kills``: every step on ``chaos.kills``; the compiler fuses the chain into one
  message per run (a re-delivery runs the steps not yet finished);
- ``chaos_kills_hops``: each step on its own queue (``chaos.kills.classifier`` ...), like
  the shipped ticket workflow's per-model queues: a broker hop between steps.

A killer SIGKILLs a random
pool process every ~2 s and, every third kill, a worker's main process; a supervisor
starts a replacement worker on the same queue. Meanwhile ``orchestrate reconcile
--idle 20`` runs every ~10 s.

Recovery paths:

- a pool process killed: its message is re-queued at once (acks_late +
  reject_on_worker_lost);
- a main process killed: its pool processes die with it and its unacknowledged messages
  stay in Redis's ``unacked`` hash. Redis re-delivers them after the visibility timeout
  (``ORCH_VISIBILITY_TIMEOUT=30`` here), but only at a worker's restore sweep: when a
  worker starts, then every ~100 s (kombu's ``unacked_restore_interval`` 10 s x
  ``unacked_restore_throttle`` 10, which ``config/celery.py`` leaves at the default).
  The reconciler re-dispatches runs idle for 20 s, so it usually gets there first.

The verdict reads the results DB, an audit trigger installed in it (every status
change of every run and step), the Redis execution counters and the deliveries log.
"""

from __future__ import annotations

import time

import pytest
import redis
from sqlalchemy import Engine

from tests.chaos.harness import (
    Chaos,
    chaos_env,
    log,
    reconcile,
    run_cli,
    submit,
)
from tests.chaos.verdict import analyse, dump_evidence, install_audit, terminal_count, wait_for
from tests.chaos.workflows import KILLS_QUEUE, queues
from tests.support.workers import Workers

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

RUNS = 300
QUEUES = (KILLS_QUEUE, *queues(KILLS_QUEUE, hops=True))
VISIBILITY_TIMEOUT_S = 30
RECONCILE_IDLE_S = 20
RECONCILE_EVERY_S = 10
CHAOS_WINDOW_S = 60  # kill for this long at most ...
CHAOS_UNTIL = 0.9  # ... or until this share of the runs is terminal
MIN_KILLS = 9  # ... and at least this many kills (every third one a main process)
DEADLINE_S = 240  # from submission


def test_runs_survive_killed_pool_and_main_processes(
        counters: redis.Redis, results_db: tuple[str, Engine], worker_pool: Workers) -> None:
    database_url, engine = results_db
    broker = counters.connection_pool.connection_kwargs
    redis_url = f"redis://{broker['host']}:{broker['port']}/{broker['db']}"
    env = chaos_env(ORCH_BROKER_URL=redis_url, ORCH_RESULT_BACKEND=redis_url,
                    ORCH_REDIS_URL=redis_url, ORCH_CHAOS_COUNTER_URL=redis_url,
                    ORCH_DATABASE_URL=database_url,
                    ORCH_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT_S))
    worker_pool.env = env
    started = time.monotonic()
    run_cli(env, "db", "upgrade")
    install_audit(engine)
    first = worker_pool.start("kills-a", QUEUES, concurrency=2, wait=False)
    second = worker_pool.start("kills-b", QUEUES, concurrency=2, wait=False)
    worker_pool.wait_ready(first)
    worker_pool.wait_ready(second)
    log(f"workers ready; logs in {worker_pool.log_dir}")

    run_ids = submit(env, RUNS, "chaos_kills", "chaos_kills_hops")
    submitted = time.monotonic()
    log(f"submitted {len(run_ids)} runs in {submitted - started:.1f} s since start")

    chaos = Chaos(worker_pool, QUEUES, counters, seed=int(time.time()))
    chaos.start()
    redispatches: list[tuple[float, str]] = []
    next_reconcile = time.monotonic() + RECONCILE_EVERY_S

    def tick(done: int) -> None:
        nonlocal next_reconcile
        now = time.monotonic()
        enough = done >= CHAOS_UNTIL * RUNS and len(chaos.kills) >= MIN_KILLS
        if chaos.running and (now - submitted > CHAOS_WINDOW_S or enough):
            chaos.stop()
            log(f"chaos stopped at {done}/{RUNS} terminal: {chaos.count('child')} pool "
                f"process and {chaos.count('main')} main process kills")
        if now >= next_reconcile:
            at = time.time()
            ids = reconcile(env, RECONCILE_IDLE_S)
            redispatches.extend((at, run_id) for run_id in ids)
            log(f"{done}/{RUNS} terminal; reconcile re-dispatched {len(ids)}")
            next_reconcile = time.monotonic() + RECONCILE_EVERY_S

    try:
        done, all_done_at = wait_for(engine, RUNS, submitted + DEADLINE_S, tick=tick)
    finally:
        chaos.stop()
    elapsed = time.monotonic() - submitted
    log(f"{done}/{RUNS} terminal after {elapsed:.1f} s")
    # Let stragglers (duplicate deliveries still in flight) land before the verdict.
    time.sleep(3)
    worker_pool.stop_all()

    verdict = analyse(engine, counters, run_ids, kills=chaos.kills, redispatches=redispatches)
    last_kill = chaos.last_kill
    verdict.figures.update({
        "kills: pool process / main process": f"{chaos.count('child')} / {chaos.count('main')}",
        "kills that interrupted a step": sum(1 for k in chaos.kills if k.busy),
        "pool processes outliving their main (killed 1 s later)": sum(
            k.orphans for k in chaos.kills),
        "workers restarted by the supervisor": chaos.restarts,
        "killer ticks skipped (no ready worker)": chaos.skipped,
        "time to all terminal since submit (s)": round(elapsed, 1),
        "time to recover after the last kill (s)": (
            round(all_done_at - last_kill, 1) if all_done_at and last_kill else None),
        "terminal runs at the end": terminal_count(engine),
    })
    verdict.print("scenario 1: worker kills")
    dump_evidence(engine, verdict, worker_pool.log_dir / "evidence.txt")
    assert not chaos.errors, f"the killer failed: {chaos.errors}"
    assert chaos.count("child") >= 3 and chaos.count("main") >= 1, "too little chaos to judge"
    assert not verdict.violations, "\n".join(verdict.violations)
