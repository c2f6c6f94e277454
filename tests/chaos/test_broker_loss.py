"""Scenario 2: the broker (Redis) is SIGKILLed mid-batch and comes back empty.

Two tests: prefork workers with the broker back at once, and a threads worker (with a
prefork one) with the broker down for longer than Celery's default result-backend
reconnection window (``test_threads_worker_survives_redis_down``).

A ``redis-server`` of the test's own (free port, no persistence) is broker and result
backend; two prefork workers (-c 2) serve the 4 per-step queues of ``chaos_broker``
(the ticket chain, ~0.3 s per step, a broker hop between steps). 150 runs are
submitted; when about a third of their steps are done the server is SIGKILLed and a
fresh, empty one is started on the same port. Every queued and unacknowledged message
is gone; the workers reconnect by themselves (Celery retries the broker connection).
Runs whose messages were lost sit ``running`` until ``orchestrate reconcile --idle 5``
(a subprocess with the same environment, every few seconds) re-dispatches them. A worker
that exits instead of reconnecting is restarted, as ``restart: unless-stopped`` does in
docker-compose.yml, and reported (kombu can crash the worker while it closes the dead
connection: "Unrecoverable error: AttributeError(... 'hostname')").

The instrumentation (execution counters, deliveries and publishes) lives in the shared
Redis's chaos DB, which is not killed.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, text

from tests.chaos.harness import (
    chaos_env,
    log,
    reconcile,
    replace_dead,
    run_cli,
    submit,
)
from tests.chaos.verdict import (
    Outage,
    Scenario,
    analyse,
    dump_evidence,
    install_audit,
    terminal_count,
    wait_for,
)
from tests.chaos.workflows import BROKER_QUEUE, THREADS_QUEUE, queues
from tests.support.own_redis import OwnRedis
from tests.support.workers import Workers

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

RUNS = 150
QUEUES = queues(BROKER_QUEUE, hops=True)
KILL_AT_STEPS = 0.35  # share of all steps finished when the broker dies
RECONCILE_IDLE_S = 5
RECONCILE_EVERY_S = 5
DEADLINE_S = 150  # from submission


def _steps_done(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM steps WHERE finished_at IS NOT NULL")).scalar() or 0)


def _messages_in(server: OwnRedis, queues: tuple[str, ...] = QUEUES) -> dict[str, int]:
    """What the broker holds right now: queued per queue, and unacknowledged."""
    client = redis.Redis(port=server.port, socket_timeout=5)
    try:
        # One list per run priority (core/priority.py): ``queue``, ``queue:1`` ... ``:9``.
        held = {queue: sum(int(client.llen(name)) for name in
                           (queue, *(f"{queue}:{level}" for level in range(1, 10))))
                for queue in queues}
        held["unacked"] = int(client.hlen("unacked"))
        return held
    finally:
        client.close()


def _own_broker(counters: redis.Redis, database_url: str,
                worker_pool: Workers) -> tuple[OwnRedis, dict[str, str]]:
    """A started redis-server of the test's own as broker and backend; the workers' env."""
    server = OwnRedis(Path(tempfile.mkdtemp(prefix="orch-chaos-redis-", dir=worker_pool.log_dir)))
    server.start()
    kwargs = counters.connection_pool.connection_kwargs
    counter_url = f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs['db']}"
    env = chaos_env(ORCH_BROKER_URL=server.url, ORCH_RESULT_BACKEND=server.url,
                    ORCH_CHAOS_COUNTER_URL=counter_url, ORCH_DATABASE_URL=database_url)
    worker_pool.env = env
    return server, env


def test_runs_survive_redis_restarted_empty(
        counters: redis.Redis, results_db: tuple[str, Engine], worker_pool: Workers) -> None:
    database_url, engine = results_db
    server, env = _own_broker(counters, database_url, worker_pool)
    try:
        run_cli(env, "db", "upgrade")
        install_audit(engine)
        first = worker_pool.start("broker-a", QUEUES, concurrency=2, wait=False)
        second = worker_pool.start("broker-b", QUEUES, concurrency=2, wait=False)
        worker_pool.wait_ready(first)
        worker_pool.wait_ready(second)
        log(f"redis-server on {server.port}; workers ready; logs in {worker_pool.log_dir}")

        run_ids = submit(env, RUNS, "chaos_broker")
        submitted = time.monotonic()
        deadline = submitted + DEADLINE_S
        while _steps_done(engine) < KILL_AT_STEPS * RUNS * 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        held = _messages_in(server)
        done_before = terminal_count(engine)
        killed_at = time.time()
        server.kill()
        server.start()
        restarted_at = time.time()
        log(f"redis-server SIGKILLed and restarted empty at {done_before}/{RUNS} terminal, "
            f"{_steps_done(engine)} steps done; it held {held}")

        redispatches: list[tuple[float, str]] = []
        deaths: list[str] = []
        next_reconcile = time.monotonic() + RECONCILE_EVERY_S

        def tick(done: int) -> None:
            nonlocal next_reconcile
            ended = replace_dead(worker_pool, QUEUES, 2)
            for line in ended:
                log(f"worker died, restarted: {line}")
            deaths.extend(ended)
            if time.monotonic() >= next_reconcile:
                at = time.time()
                ids = reconcile(env, RECONCILE_IDLE_S)
                redispatches.extend((at, run_id) for run_id in ids)
                log(f"{done}/{RUNS} terminal; reconcile re-dispatched {len(ids)}")
                next_reconcile = time.monotonic() + RECONCILE_EVERY_S

        done, all_done_at = wait_for(engine, RUNS, deadline, tick=tick)
        elapsed = time.monotonic() - submitted
        log(f"{done}/{RUNS} terminal after {elapsed:.1f} s")
        time.sleep(3)  # duplicates still in flight land before the verdict
        # Celery logs "Connected to redis://..." at start and at every reconnection.
        reconnected = [w.nodename for w in (first, second)
                       if w.alive and w.log_path.read_text().count("Connected to redis://") > 1]
    finally:
        worker_pool.stop_all()
        server.stop()

    scenario = Scenario(outages=[Outage("broker", killed_at, restarted_at)],
                        redispatches=redispatches)
    verdict = analyse(engine, counters, run_ids, scenario=scenario)
    verdict.figures.update({
        "broker held at the kill (lost)": held,
        "runs terminal before the kill": done_before,
        "workers that reconnected to the new broker": f"{len(reconnected)} of 2",
        "workers that died instead (restarted by the supervisor)": deaths,
        "time to all terminal since submit (s)": round(elapsed, 1),
        "time to recover after the broker restart (s)": (
            round(all_done_at - killed_at, 1) if all_done_at else None),
    })
    verdict.print("scenario 2: Redis restarted empty")
    dump_evidence(engine, verdict, worker_pool.log_dir / "evidence.txt")
    assert sum(held.values()) > 0, "the broker held nothing when it died: nothing to judge"
    assert not verdict.violations, "\n".join(verdict.violations)


THREADS_RUNS = 40
THREADS_QUEUES = queues(THREADS_QUEUE, hops=True)
THREADS_DOWN_S = 25  # longer than Celery's default backend reconnection window (~20 s)


def test_threads_worker_survives_redis_down(
        counters: redis.Redis, results_db: tuple[str, Engine], worker_pool: Workers) -> None:
    """A threads worker (-c 8) and a prefork one (-c 2) with runs in flight; Redis is
    SIGKILLed, stays down ``THREADS_DOWN_S`` and comes back empty. No worker may exit
    (kombu#582/#970: "AttributeError ... 'hostname'"; "Retry limit exceeded ... must be
    restarted"); the lost runs are re-dispatched by the reconciler once Redis is back."""
    database_url, engine = results_db
    server, env = _own_broker(counters, database_url, worker_pool)
    try:
        run_cli(env, "db", "upgrade")
        install_audit(engine)
        threads = worker_pool.start("broker-threads", THREADS_QUEUES, pool="threads",
                                    concurrency=8, wait=False)
        prefork = worker_pool.start("broker-prefork", THREADS_QUEUES, pool="prefork",
                                    concurrency=2, wait=False)
        worker_pool.wait_ready(threads)
        worker_pool.wait_ready(prefork)
        log(f"redis-server on {server.port}; workers ready; logs in {worker_pool.log_dir}")

        run_ids = submit(env, THREADS_RUNS, "chaos_threads")
        submitted = time.monotonic()
        while (_steps_done(engine) < KILL_AT_STEPS * THREADS_RUNS * 4
               and time.monotonic() < submitted + DEADLINE_S):
            time.sleep(0.2)
        held = _messages_in(server, THREADS_QUEUES)
        done_before = terminal_count(engine)
        killed_at = time.time()
        server.kill()
        log(f"redis-server SIGKILLed at {done_before}/{THREADS_RUNS} terminal; it held {held}")
        deaths: list[str] = []

        def supervise() -> None:
            ended = replace_dead(worker_pool)
            for line in ended:
                log(f"worker died, restarted: {line}")
            deaths.extend(ended)

        down_until = time.monotonic() + THREADS_DOWN_S
        while time.monotonic() < down_until:
            supervise()
            time.sleep(0.5)
        server.start()
        restarted_at = time.time()
        log(f"redis-server started again, empty, after {restarted_at - killed_at:.1f} s")

        redispatches: list[tuple[float, str]] = []
        next_reconcile = time.monotonic() + RECONCILE_EVERY_S

        def tick(done: int) -> None:
            nonlocal next_reconcile
            supervise()
            if time.monotonic() >= next_reconcile:
                at = time.time()
                ids = reconcile(env, RECONCILE_IDLE_S)
                redispatches.extend((at, run_id) for run_id in ids)
                log(f"{done}/{THREADS_RUNS} terminal; reconcile re-dispatched {len(ids)}")
                next_reconcile = time.monotonic() + RECONCILE_EVERY_S

        done, all_done_at = wait_for(engine, THREADS_RUNS, time.monotonic() + DEADLINE_S,
                                     tick=tick)
        log(f"{done}/{THREADS_RUNS} terminal {time.time() - restarted_at:.1f} s after the "
            "restart")
        time.sleep(3)  # duplicates still in flight land before the verdict
        supervise()
        reconnected = [w.nodename for w in (threads, prefork) if w.alive and
                       w.log_path.read_text().count("Connected to redis://") > 1]
        gave_up = [w.nodename for w in (threads, prefork)
                   if "Retry limit exceeded" in w.log_path.read_text(errors="replace")]
    finally:
        worker_pool.stop_all()
        server.stop()

    scenario = Scenario(outages=[Outage("broker", killed_at, restarted_at)],
                        redispatches=redispatches)
    verdict = analyse(engine, counters, run_ids, scenario=scenario)
    verdict.figures.update({
        "broker held at the kill (lost)": held,
        "broker down (s)": round(restarted_at - killed_at, 1),
        "runs terminal before the kill": done_before,
        "workers that reconnected to the new broker": f"{len(reconnected)} of 2",
        "workers whose result backend gave up (Retry limit exceeded)": gave_up,
        "workers that died instead (restarted by the supervisor)": deaths,
        "time to recover: all terminal after the broker restart (s)": (
            round(all_done_at - restarted_at, 1) if all_done_at else None),
    })
    verdict.print("scenario 2b: Redis down with a threads worker")
    dump_evidence(engine, verdict, worker_pool.log_dir / "evidence.txt")
    problems = list(verdict.violations)
    if deaths:
        problems.append(f"workers exited when the broker died: {deaths}")
    if gave_up:
        problems.append(f"result backend gave up (Retry limit exceeded) in {gave_up}")
    assert sum(held.values()) > 0, "the broker held nothing when it died: nothing to judge"
    assert not problems, "\n".join(problems)
