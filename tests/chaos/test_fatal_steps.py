"""Scenario 5: steps that raise past ``Exception`` or end their process, in both pools.

Redis DB 12 of the shared server is broker, result backend and instrumentation; a fresh
PostgreSQL database holds the results. Workflows of two steps, ``blow`` (does what its
``kind`` input says after its work) then ``after``:

- ``chaos_fatal_prefork`` on a prefork worker (-c 2): 2 runs each of a bare
  ``BaseException``, ``SystemExit``, ``KeyboardInterrupt`` and ``os._exit`` (the pool
  process dies), interleaved with 8 runs that succeed;
- ``chaos_fatal_threads`` on a threads worker (-c 4): 3 runs each of ``BaseException``,
  ``SystemExit`` and ``KeyboardInterrupt`` (more than its 4 threads, so a thread that
  is not given back stalls the worker), then 8 runs that succeed;
- ``chaos_exit_threads`` on a threads worker of its own (-c 2): 1 run whose step calls
  ``os._exit`` (the whole worker dies; a supervisor restarts it, as
  ``restart: unless-stopped`` does).

``orchestrate reconcile --idle 20`` runs every 10 s, and the visibility timeout is 10 s.
What must hold: a step's ``BaseException`` is a step failure (its retry policy applies,
then the run fails), the pool slot comes back, and the prefork and first threads worker
never exit; a step that ends its process fails as a poison step after
``MAX_CRASHES`` deaths, whoever re-delivers it; every other run succeeds; nothing is
recorded twice.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
import redis
from sqlalchemy import Engine, text

from tests.chaos.harness import (
    MAX_CRASHES,
    chaos_env,
    log,
    reconcile,
    replace_dead,
    run_cli,
    submit,
)
from tests.chaos.verdict import (
    Scenario,
    analyse,
    dump_evidence,
    install_audit,
    terminal_count,
    wait_for,
)
from tests.chaos.workflows import EXIT_THREADS_QUEUE, FATAL_PREFORK_QUEUE, FATAL_THREADS_QUEUE
from tests.support.workers import Workers

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

VISIBILITY_TIMEOUT_S = 10
RECONCILE_IDLE_S = 20
RECONCILE_EVERY_S = 10
DEADLINE_S = 240  # from submission
RAISING = ("base", "systemexit", "keyboard")
ERROR_TYPES = {"base": "BaseException", "systemexit": "SystemExit",
               "keyboard": "KeyboardInterrupt"}


def _submit_all(env: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Submit every run; {run id: (workflow, kind)}."""
    runs: dict[str, tuple[str, str]] = {}

    def batch(count: int, workflow: str, *kinds: str) -> None:
        ids = submit(env, count, *(f"{workflow}:{kind}" for kind in kinds))
        runs.update({run_id: (workflow, kinds[n % len(kinds)]) for n, run_id in enumerate(ids)})

    batch(16, "chaos_fatal_prefork", "ok", "base", "ok", "systemexit", "ok", "keyboard", "ok",
          "exit")
    batch(9, "chaos_fatal_threads", *RAISING)
    batch(8, "chaos_fatal_threads", "ok")
    batch(1, "chaos_exit_threads", "exit")
    return runs


def _check_failures(engine: Engine, runs: dict[str, tuple[str, str]]) -> list[str]:
    """The runs expected to fail failed the right way."""
    with engine.connect() as conn:
        steps = {(r.run_id, r.name): r for r in conn.execute(text(
            "SELECT run_id, name, status, error_type, error, attempts, crashes FROM steps"))}
    problems = []
    for run_id, (workflow, kind) in runs.items():
        blow = steps.get((run_id, "blow"))
        if kind == "ok" or blow is None:
            continue
        if blow.status != "failed":
            problems.append(f"{workflow}:{kind} run {run_id}: step blow is {blow.status}")
        elif kind == "exit" and blow.error_type != "PoisonStep":
            problems.append(f"{workflow}:exit run {run_id}: blow failed as {blow.error_type} "
                            f"({blow.error}), not as a poison step")
        elif kind in RAISING and ERROR_TYPES[kind] not in f"{blow.error_type} {blow.error}":
            problems.append(f"{workflow}:{kind} run {run_id}: blow failed as "
                            f"{blow.error_type}: {blow.error}")
        after = steps.get((run_id, "after"))
        if after is not None and after.status == "succeeded":
            problems.append(f"{workflow}:{kind} run {run_id}: step after ran on a failed blow")
    return problems


def test_base_exceptions_and_exits_fail_their_step_not_the_worker(
        counters: redis.Redis, results_db: tuple[str, Engine], worker_pool: Workers) -> None:
    database_url, engine = results_db
    kwargs = counters.connection_pool.connection_kwargs
    redis_url = f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs['db']}"
    env = chaos_env(ORCH_BROKER_URL=redis_url, ORCH_RESULT_BACKEND=redis_url,
                    ORCH_REDIS_URL=redis_url, ORCH_CHAOS_COUNTER_URL=redis_url,
                    ORCH_DATABASE_URL=database_url,
                    ORCH_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT_S))
    worker_pool.env = env
    run_cli(env, "db", "upgrade")
    install_audit(engine)
    started = [worker_pool.start("fatal-prefork", (FATAL_PREFORK_QUEUE,), pool="prefork",
                                 concurrency=2, wait=False),
               worker_pool.start("fatal-threads", (FATAL_THREADS_QUEUE,), pool="threads",
                                 concurrency=4, wait=False),
               worker_pool.start("exit-threads", (EXIT_THREADS_QUEUE,), pool="threads",
                                 concurrency=2, wait=False)]
    for worker in started:
        worker_pool.wait_ready(worker)
    log(f"workers ready; logs in {worker_pool.log_dir}")

    runs = _submit_all(env)
    run_ids = list(runs)
    submitted, submitted_at = time.monotonic(), time.time()
    log(f"submitted {len(runs)} runs: {dict(Counter(runs.values()))}")
    deaths: list[str] = []
    redispatches: list[tuple[float, str]] = []
    next_reconcile = time.monotonic() + RECONCILE_EVERY_S

    def tick(done: int) -> None:
        nonlocal next_reconcile
        ended = replace_dead(worker_pool)
        for line in ended:
            log(f"worker died, restarted: {line}")
        deaths.extend(ended)
        if time.monotonic() >= next_reconcile:
            at = time.time()
            ids = reconcile(env, RECONCILE_IDLE_S)
            redispatches.extend((at, run_id) for run_id in ids)
            log(f"{done}/{len(runs)} terminal; reconcile re-dispatched {len(ids)}")
            next_reconcile = time.monotonic() + RECONCILE_EVERY_S

    done, all_done_at = wait_for(engine, len(runs), submitted + DEADLINE_S, tick=tick)
    elapsed = time.monotonic() - submitted
    log(f"{done}/{len(runs)} terminal after {elapsed:.1f} s")
    time.sleep(3)  # re-deliveries still in flight land before the verdict
    tick(done)
    worker_pool.stop_all()

    scenario = Scenario(
        redispatches=redispatches,
        expected={run_id: "succeeded" if kind == "ok" else "failed"
                  for run_id, (_, kind) in runs.items()},
        deadly={(run_id, "blow") for run_id, (_, kind) in runs.items() if kind == "exit"})
    verdict = analyse(engine, counters, run_ids, scenario=scenario)
    by_worker = Counter(line.split("-r")[0].split(" ")[0] for line in deaths)
    verdict.figures.update({
        "runs by workflow and kind": dict(Counter(f"{w}:{k}" for w, k in runs.values())),
        "worker exits by worker": dict(by_worker),
        "time to all terminal since submit (s)": (
            round(all_done_at - submitted_at, 1) if all_done_at else None),
        "terminal runs at the end": terminal_count(engine),
    })
    verdict.print("scenario 5: BaseException, SystemExit, KeyboardInterrupt, os._exit")
    dump_evidence(engine, verdict, worker_pool.log_dir / "evidence.txt")
    problems = list(verdict.violations) + _check_failures(engine, runs)
    for label in ("fatal-prefork", "fatal-threads"):
        if by_worker[label]:
            problems.append(f"worker {label} exited {by_worker[label]} time(s): {deaths}")
    if by_worker["exit-threads"] > MAX_CRASHES:
        problems.append(f"the os._exit step took its threads worker down "
                        f"{by_worker['exit-threads']} times (at most {MAX_CRASHES})")
    assert not problems, "\n".join(problems)
