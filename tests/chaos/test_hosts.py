"""Scenario: workers on several hosts; one host partitioned for 30 s, one lost for good.

Each "host" is a network namespace on a bridge (``tests/support/netns.py``) with its own
``celery -A orchestration worker -P prefork -c 3`` on the four queues of ``chaos_hosts``
(the ticket chain, 0.3-0.6 s per step, a broker hop between steps). ONE ``redis-server``
(broker, result backend and, in DB 1, the instrumentation) and ONE PostgreSQL cluster
(the results DB) of the test's own listen on the bridge's address; the shared services
on 127.0.0.1 are never used. Submitter, reconciler and verdict run in the root namespace.

The engine's recovery is set short: heartbeats every ``HEARTBEAT_S``, a worker silent for
``DEAD_AFTER_S`` is dead (the other host's next beat releases the steps it held and
re-dispatches their runs), ``orchestrate reconcile --idle RECONCILE_IDLE_S`` every
``RECONCILE_EVERY_S`` (what ``celery beat`` does every minute in production).

- ``test_partitioned_host_rejoins``: host A's link is cut for ``PARTITION_S`` mid-batch
  (its bridge port down: packets dropped, connections hang rather than fail). The steps
  it was running are re-executed on host B; every run succeeds; no step is recorded
  twice (the audit trigger's terminal transitions, one succeeded attempt row per step);
  after the heal A's worker, still the same process, executes steps again.
- ``test_lost_host_leaves_nothing_stuck``: host A's processes are SIGKILLed and its
  namespace deleted mid-batch; every run succeeds on host B (heartbeat sweep, then the
  reconciler for the messages A had prefetched and never started).

Skipped with the reason where ``ip netns`` is not permitted (not root, no
CAP_NET_ADMIN). Figures print with ``-s`` (``make chaos``); README "Several hosts".
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, create_engine, text

from tests.chaos.harness import Kill, chaos_env, log, reconcile, run_cli, submit
from tests.chaos.verdict import (
    Outage,
    Scenario,
    analyse,
    dump_evidence,
    install_audit,
    terminal_count,
    wait_for,
)
from tests.chaos.workflows import BUSY_PREFIX, EXECUTIONS_KEY, HOSTS_QUEUE, queues
from tests.support.netns import Host, Network, network
from tests.support.own_postgres import own_postgres
from tests.support.own_redis import OwnRedis
from tests.support.workers import Worker, Workers

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

QUEUES = queues(HOSTS_QUEUE, hops=True)
CONCURRENCY = 3
HEARTBEAT_S = 1
DEAD_AFTER_S = 5
VISIBILITY_TIMEOUT_S = 20
RECONCILE_IDLE_S = 10
RECONCILE_EVERY_S = 5
PARTITION_S = 30
DEADLINE_S = 150  # from submission to all runs terminal
RESUME_DEADLINE_S = 90  # from the heal to host A's first new execution
SWEPT = "re-dispatching a run whose worker died"  # the heartbeat sweep's log line


@dataclass
class Cluster:
    """The network, the two hosts, the servers, and what the processes get."""

    net: Network
    hosts: dict[str, Host]
    env: dict[str, str]
    engine: Engine
    counters: redis.Redis
    pool: Workers

    def start_worker(self, host: str) -> Worker:
        self.pool.env = {**self.env, "ORCH_CHAOS_HOST": host}
        return self.pool.start(f"hosts-{host}", QUEUES, concurrency=CONCURRENCY, wait=False,
                               prefix=self.hosts[host].prefix)

    def executions(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.counters.lrange(EXECUTIONS_KEY, 0, -1)]

    def busy(self, host: str) -> list[dict[str, Any]]:
        """The (run, step) each process of ``host`` is running now (its busy marks)."""
        keys = [f"{BUSY_PREFIX}{pid}" for pid in self.hosts[host].pids()]
        return [json.loads(v) for v in (self.counters.mget(keys) if keys else []) if v]

    def steps_done(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM steps WHERE finished_at IS NOT NULL")).scalar() or 0)


@contextlib.contextmanager
def cluster(pool: Workers) -> Iterator[Cluster]:
    """Two hosts on a bridge, one redis-server and one PostgreSQL on the bridge's address,
    a worker on each host; everything stopped and removed at the end, on failure too."""
    with network() as net, own_postgres(listen=("127.0.0.1", net.gateway),
                                        trust=str(net.subnet)) as postgres:
        hosts = {name: net.add_host(name) for name in ("a", "b")}
        server = OwnRedis(Path(tempfile.mkdtemp(prefix="orch-hosts-redis-", dir=pool.log_dir)),
                          bind=(net.gateway, "127.0.0.1"))
        server.start()
        engine = create_engine(postgres.url)
        counters = redis.Redis(host=net.gateway, port=server.port, db=1, socket_timeout=10)
        try:
            broker = f"redis://{net.gateway}:{server.port}/0"
            env = chaos_env(ORCH_BROKER_URL=broker, ORCH_RESULT_BACKEND=broker,
                            ORCH_CHAOS_COUNTER_URL=f"redis://{net.gateway}:{server.port}/1",
                            ORCH_DATABASE_URL=postgres.url_at(net.gateway),
                            ORCH_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT_S),
                            ORCH_HEARTBEAT_INTERVAL=str(HEARTBEAT_S),
                            ORCH_WORKER_DEAD_AFTER=str(DEAD_AFTER_S))
            run_cli(env, "db", "upgrade")
            install_audit(engine)
            found = Cluster(net, hosts, env, engine, counters, pool)
            workers = [found.start_worker(name) for name in hosts]
            for worker in workers:
                pool.wait_ready(worker)
            log(f"hosts {[(h.name, h.address) for h in hosts.values()]}, servers on "
                f"{net.gateway} (redis {server.port}, postgres {postgres.port}); "
                f"logs in {pool.log_dir}")
            yield found
        finally:
            pool.stop_all()
            counters.close()
            engine.dispose()
            server.stop()


def _reconciling(env: dict[str, str], total: int,
                 redispatches: list[tuple[float, str]]) -> Any:
    """A ``wait_for`` tick running ``orchestrate reconcile`` every ``RECONCILE_EVERY_S``."""
    next_at = time.monotonic() + RECONCILE_EVERY_S

    def tick(done: int) -> None:
        nonlocal next_at
        if time.monotonic() < next_at:
            return
        at = time.time()
        ids = reconcile(env, RECONCILE_IDLE_S)
        redispatches.extend((at, run_id) for run_id in ids)
        log(f"{done}/{total} terminal; reconcile re-dispatched {len(ids)}")
        next_at = time.monotonic() + RECONCILE_EVERY_S

    return tick


def _wait_steps(found: Cluster, steps: int, deadline: float) -> None:
    while found.steps_done() < steps and time.monotonic() < deadline:
        time.sleep(0.2)


def _sweeps(worker: Worker) -> list[tuple[float, str]]:
    """(wall time, run id) of each run ``worker``'s heartbeat re-dispatched because a dead
    worker held one of its steps."""
    swept = []
    for line in worker.log_path.read_text(errors="replace").splitlines():
        if SWEPT in line:
            entry = json.loads(line)
            stamp = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
            swept.append((stamp.timestamp(), str(entry["run_id"])))
    return swept


def _counted(found: Cluster) -> tuple[int, int]:
    """(step executions, steps recorded succeeded)."""
    with found.engine.connect() as conn:
        recorded = int(conn.execute(text(
            "SELECT count(*) FROM steps WHERE status = 'succeeded'")).scalar() or 0)
    return len(found.executions()), recorded


def _wait_resumed(found: Cluster, host: str, since: float, runs: int,
                  extra: list[str]) -> float | None:
    """When ``host`` first executed a step after ``since`` (None: not within the deadline).

    Submits a few more runs (their ids go to ``extra``) whenever everything is done and
    ``host`` has not come back yet, so it always has work to resume on.
    """
    deadline = time.monotonic() + RESUME_DEADLINE_S
    while time.monotonic() < deadline:
        resumed = [e["t"] for e in found.executions() if e.get("host") == host and e["t"] > since]
        if resumed:
            return float(min(resumed))
        if terminal_count(found.engine) >= runs + len(extra):
            extra += submit(found.env, 6, "chaos_hosts")
        time.sleep(0.5)
    return None


RUNS = 50  # host b alone drains them during the partition, the re-dispatched steps too
AFTER_RUNS = 20  # submitted after the heal


def test_partitioned_host_rejoins(worker_pool: Workers) -> None:
    with cluster(worker_pool) as found:
        worker_a = next(w for w in worker_pool.started if w.label == "hosts-a")
        run_ids = submit(found.env, RUNS, "chaos_hosts")
        submitted = time.monotonic()
        _wait_steps(found, int(0.2 * RUNS * 4), submitted + DEADLINE_S)
        busy_at_cut = found.busy("a")
        done_before = terminal_count(found.engine)
        cut = found.net.cut(found.hosts["a"])
        log(f"host a cut at {done_before}/{RUNS} terminal; it was running "
            f"{[(str(b['run'])[:8], b['step']) for b in busy_at_cut]}")
        redispatches: list[tuple[float, str]] = []
        tick = _reconciling(found.env, RUNS, redispatches)
        while (left := cut + PARTITION_S - time.time()) > 0:
            if left > RECONCILE_EVERY_S:  # a pass takes seconds: never past the heal
                tick(terminal_count(found.engine))
            time.sleep(min(0.5, left))
        done_in_partition = terminal_count(found.engine)
        healed = found.net.heal(found.hosts["a"])
        log(f"host a back after {healed - cut:.1f} s; {done_in_partition}/{RUNS} terminal")

        # A second batch after the heal: work for both hosts, A included once it is back.
        extra = submit(found.env, AFTER_RUNS, "chaos_hosts")
        resumed_at = _wait_resumed(found, "a", healed, RUNS, extra)
        total = RUNS + len(extra)
        done, all_done_at = wait_for(found.engine, total, submitted + DEADLINE_S + 60,
                                     tick=_reconciling(found.env, total, redispatches))
        time.sleep(3)  # duplicates still in flight land before the verdict
        a_alive = worker_a.alive
        worker_b = next(w for w in worker_pool.started if w.label == "hosts-b")
        swept = [round(t - cut, 1) for t, _ in _sweeps(worker_b) if cut <= t <= healed]
        a_log = worker_a.log_path.read_text(errors="replace")
        worker_pool.stop_all()

        executions = found.executions()
        scenario = Scenario(outages=[Outage("host a partitioned", cut, healed)],
                            redispatches=redispatches)
        verdict = analyse(found.engine, found.counters, run_ids + extra, scenario=scenario)
        redelivered = []  # (run, step, seconds from the cut to its start on host b)
        for mark in busy_at_cut:
            on_b = [e["t"] for e in executions if (e["run"], e["step"]) == (
                mark["run"], mark["step"]) and e.get("host") == "b" and e["t"] > cut]
            if on_b:
                redelivered.append((mark["run"], mark["step"], round(min(on_b) - cut, 1)))
        executed, recorded = _counted(found)
        verdict.figures.update({
            "partition (s)": round(healed - cut, 1),
            "steps host a was running at the cut": len(busy_at_cut),
            "  their runs re-dispatched by host b's heartbeat sweep (s after the cut)": swept,
            "  re-executed on host b during the partition": len(
                [r for r in redelivered if r[2] <= healed - cut]),
            "  seconds from the cut to their start on host b": [r[2] for r in redelivered],
            "runs terminal: before the cut / at the heal": f"{done_before} / "
                                                           f"{done_in_partition}",
            "step executions / steps recorded succeeded": f"{executed} / {recorded}",
            "host a's worker: same process alive at the end": a_alive,
            "host a's first new execution after the heal (s)": (
                round(resumed_at - healed, 1) if resumed_at else None),
            "host a: step executions before the cut / after the heal": (
                f"{sum(1 for e in executions if e.get('host') == 'a' and e['t'] < cut)} / "
                f"{sum(1 for e in executions if e.get('host') == 'a' and e['t'] > healed)}"),
            "host a's worker log: broker reconnections": a_log.count("Connected to redis://")
                                                           - 1,
            "runs submitted after the heal": len(extra),
            "time to all terminal since submit (s)": round(time.monotonic() - submitted, 1),
            "time to all terminal after the heal (s)": (
                round(all_done_at - healed, 1) if all_done_at else None),
        })
        verdict.print("several hosts: host a partitioned")
        dump_evidence(found.engine, verdict, worker_pool.log_dir / "evidence.txt")
    problems = list(verdict.violations)
    if done < total:
        problems.append(f"only {done}/{total} runs terminal")
    if not busy_at_cut:
        problems.append("host a ran no step at the cut: nothing to judge")
    elif not swept:
        problems.append(f"host b's sweep re-dispatched none of the runs of the "
                        f"{len(busy_at_cut)} steps host a was running at the cut")
    elif not redelivered and done_in_partition >= RUNS:
        # Every run finished during the partition, so host b recorded the steps host a was
        # running: they ran on b. (On a slow machine b may not reach the re-dispatched
        # messages before the heal; then a may record its own steps, which is fine.)
        problems.append(f"none of the {len(busy_at_cut)} steps host a was running at the cut "
                        "ran on host b, yet every run finished during the partition")
    if not a_alive:
        problems.append("host a's worker exited instead of reconnecting")
    if resumed_at is None:
        problems.append(f"host a executed no step within {RESUME_DEADLINE_S} s of the heal")
    assert not problems, "\n".join(problems)


LOST_RUNS = 50


def test_lost_host_leaves_nothing_stuck(worker_pool: Workers) -> None:
    with cluster(worker_pool) as found:
        run_ids = submit(found.env, LOST_RUNS, "chaos_hosts")
        submitted = time.monotonic()
        _wait_steps(found, int(0.25 * LOST_RUNS * 4), submitted + DEADLINE_S)
        host = found.hosts["a"]
        pids = host.pids()
        busy = found.busy("a")
        done_before = terminal_count(found.engine)
        removed_at = time.time()
        killed = found.net.remove(host)
        log(f"host a removed ({killed} processes SIGKILLed, namespace deleted) at "
            f"{done_before}/{LOST_RUNS} terminal; it was running "
            f"{[(str(b['run'])[:8], b['step']) for b in busy]}")
        redispatches: list[tuple[float, str]] = []
        done, all_done_at = wait_for(found.engine, LOST_RUNS, submitted + DEADLINE_S,
                                     tick=_reconciling(found.env, LOST_RUNS, redispatches))
        time.sleep(3)
        worker_b = next(w for w in worker_pool.started if w.label == "hosts-b")
        sweeps = [(t, run) for t, run in _sweeps(worker_b) if t >= removed_at]
        swept = [round(t - removed_at, 1) for t, _ in sweeps]
        worker_pool.stop_all()

        # The kill hit every run whose step A held: those its processes marked busy, and
        # those a claim of A's held without a mark yet (claimed, body not started), which
        # only host b's sweep names.
        hit = busy + [{"run": run, "step": None} for _, run in sweeps
                      if run not in {b["run"] for b in busy}]
        kill = Kill(removed_at, "main", "hosts-a", min(pids) if pids else 0, hit)
        verdict = analyse(found.engine, found.counters, run_ids, kills=[kill],
                          redispatches=redispatches)
        executed, recorded = _counted(found)
        verdict.figures.update({
            "processes killed with the host": killed,
            "steps host a was running when it went": len(busy),
            "runs terminal when it went": done_before,
            "runs re-dispatched by host b's heartbeat sweep (s after the loss)": swept,
            "step executions / steps recorded succeeded": f"{executed} / {recorded}",
            "time to all terminal after the loss (s)": (
                round(all_done_at - removed_at, 1) if all_done_at else None),
        })
        verdict.print("several hosts: host a lost for good")
        dump_evidence(found.engine, verdict, worker_pool.log_dir / "evidence.txt")
    problems = list(verdict.violations)
    if done < LOST_RUNS:
        problems.append(f"only {done}/{LOST_RUNS} runs terminal after the reconciler")
    if not busy:
        problems.append("host a ran no step when it went: nothing to judge")
    assert not problems, "\n".join(problems)
