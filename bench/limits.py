"""The cost of ``max_parallel`` permits, against the same workflow without them, in one run.

    python bench/limits.py [--runs 100] [--rounds 3] [--pool prefork] [--concurrency 2]
                           [--rows base,split,wf,step,bind] [--wait-for-db 600] [--keep-logs]

Each row is a 3-step linear workflow of no-op steps (``bench/limits_workflows.py``):

- ``base``: no limits (the compiler fuses a -> b -> c into one message);
- ``split``: no limits, ``b`` on a second queue, so 3 messages: like-for-like for ``step``
  (a step with its own ``max_parallel`` is never fused);
- ``wf``: workflow ``max_parallel=10_000`` (never binds): a permit taken at submit, re-taken
  at the delivery, renewed while it runs, released at the end (one message, as ``base``);
- ``step``: workflow and step ``b`` ``max_parallel=10_000`` (never binds): 3 messages;
- ``bind``: workflow ``max_parallel=2`` with the worker at ``-c 2``: the limit binds, so
  runs park in ``permit_waits`` at submit and each release wakes the next; against
  ``base``, which the worker's 2 slots bound alone.

A row is ``--runs`` runs sent with ``submit_many``, then waited for one by one
(``handle.wait``): client wall time around both. One worker per round (``-P prefork -c 2``,
both queues) runs every row; rows take turns in an order that reverses every round, each
after an untimed warm-up. The report prints min/median/max per row, the ratios
``wf/base``, ``step/split``, ``step/base`` and ``bind/base``, and per run: Redis commands
(``INFO commandstats`` deltas: server-wide, so other clients of the server add noise; the
report prints how many there were), the worker's SQL statements (counted in the worker by
``bench/limits_workflows.py``; those on ``permit_waits`` apart) and worker CPU.

Redis DB 7 only (tests lease 15, 11, 10, 9, 8; other benches use 14, 13, 12): the bench
waits until no other process is connected to it, flushes it at start and at the end
(unless another process connected meanwhile) and stops if someone flushes it mid-bench.
Results DB: SQLite in a temp dir. Workers as in ``bench/overhead.py`` (own session, ping
readiness with a deadline, SIGTERM then SIGKILL of the session). Exits 0 when every run
succeeded with its expected output.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.maps import FlushWatch, finish_bench, wait_for_free_db  # noqa: E402
from bench.overhead import (  # noqa: E402 - needs the sys.path fix
    FORBIDDEN_REDIS_DB,
    WAIT_POLL,
    RunFailed,
    _dispose_default_store,
    _redact,
    _revision,
    child_env,
    flush_bench_db,
    machine_lines,
    make_ping,
    ms,
    running_worker,
    session_cpu,
)
from orchestration.errors import WaitTimeout  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/7"
ROWS = ("base", "split", "wf", "step", "bind")
LABEL = {"base": "base: no limits (1 message)",
         "split": "split: no limits, 3 messages",
         "wf": "wf: workflow max_parallel=10k",
         "step": "step: wf + step b 10k (3 msgs)",
         "bind": "bind: workflow max_parallel=2"}
RATIOS = (("wf", "base"), ("step", "split"), ("step", "base"), ("bind", "base"))
PERMIT_COMMANDS = ("evalsha", "zrem", "zremrangebyscore", "zscore", "zcard", "zadd", "pexpire",
                   "time")
WARMUP = 20
RUN_TIMEOUT = 120.0
SETTLE_AFTER = 0.25  # s: the workers' statement counts written at least this long after a row
SETTLE_TIMEOUT = 10.0
STMT_POLL = 0.05
STMT_DIR_ENV = "BENCH_LIMITS_STMT_DIR"  # = bench.limits_workflows.STMT_DIR_ENV (not imported
# here: importing that module builds the default orchestrator before ORCH_* are set)


@dataclass
class Row:
    """One row's figures across rounds (seconds; counts per run)."""

    wall: list[float] = field(default_factory=list)
    worker_cpu: list[float] = field(default_factory=list)
    commands: list[dict[str, float]] = field(default_factory=list)
    statements: list[float] = field(default_factory=list)
    permit_statements: list[float] = field(default_factory=list)
    others: list[int] = field(default_factory=list)  # other clients of the Redis server


# -- counters ---------------------------------------------------------------------------------


def command_calls(client: Any) -> dict[str, int]:
    """``INFO commandstats`` calls by command (server-wide)."""
    stats = client.info("commandstats")
    return {key.removeprefix("cmdstat_"): int(value["calls"]) for key, value in stats.items()}


def server_clients(client: Any) -> int:
    """Clients of the Redis server not in the bench's DB (their commands add noise)."""
    db = int(urlparse(REDIS_URL).path.lstrip("/"))
    return sum(1 for c in client.client_list() if int(c.get("db", -1)) != db)


def statement_counts(directory: Path, *, after: float | None = None) -> tuple[int, int]:
    """Sum of the workers' statement counts (total, permit_waits); with ``after``, first
    poll until every live worker process wrote its counts at least that late."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        files = [json.loads(path.read_text()) for path in directory.glob("*.json")]
        live = [f for f in files if _alive(int(f["pid"]))]
        if after is None or all(f["at"] >= after for f in live):
            return sum(f["total"] for f in files), sum(f["permit_waits"] for f in files)
        if time.monotonic() >= deadline:
            raise RunFailed(f"worker statement counts not written within {SETTLE_TIMEOUT:g} s")
        time.sleep(STMT_POLL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- one row ----------------------------------------------------------------------------------


def run_batch(row: str, count: int, offset: int) -> float:
    """Submit ``count`` runs with submit_many, wait for each; client wall seconds."""
    from bench.limits_workflows import WORKFLOWS, final_output
    from orchestration import RunStatus

    workflow = WORKFLOWS[row]
    xs = list(range(offset, offset + count))
    began = time.perf_counter()
    handles = workflow.submit_many([{"x": x} for x in xs])
    results = [handle.wait(timeout=RUN_TIMEOUT, poll=WAIT_POLL) for handle in handles]
    wall = time.perf_counter() - began
    for x, result in zip(xs, results, strict=True):
        value = result.outputs.get(final_output())
        if result.status is not RunStatus.SUCCEEDED or value != x:
            raise RunFailed(f"{row} run {result.run_id}: {result.status.value}, output "
                            f"{value!r} (expected {x}); error: {result.error}")
    return wall


def measure_row(row: str, count: int, offset: int, session: int, redis_client: Any,
                stmt_dir: Path, into: Row) -> None:
    into.others.append(server_clients(redis_client))
    stmts0, permit0 = statement_counts(stmt_dir)
    calls0 = command_calls(redis_client)
    cpu0 = session_cpu(session)
    wall = run_batch(row, count, offset)
    stmts1, permit1 = statement_counts(stmt_dir, after=time.time() + SETTLE_AFTER)
    calls1 = command_calls(redis_client)
    into.worker_cpu.append((session_cpu(session) - cpu0) / count)
    into.wall.append(wall)
    into.statements.append((stmts1 - stmts0) / count)
    into.permit_statements.append((permit1 - permit0) / count)
    into.commands.append({name: (calls1.get(name, 0) - calls0.get(name, 0)) / count
                          for name in set(calls0) | set(calls1)})


def measure_rounds(args: argparse.Namespace, env: dict[str, str], tmp: Path,
                   stmt_dir: Path) -> dict[str, Row]:
    import redis

    import bench.limits_workflows  # noqa: F401 - registers the workflows (ORCH_* set)
    from bench.limits_workflows import QUEUE, SIDE_QUEUE
    from orchestration import default_orchestrator

    orchestrator = default_orchestrator()
    orchestrator.store.ensure_schema()  # migrate once, before any worker starts
    ping = make_ping(orchestrator.celery)
    rows: tuple[str, ...] = tuple(args.rows)
    results = {row: Row() for row in rows}
    client = redis.Redis.from_url(REDIS_URL)
    offset = 0
    try:
        for number in range(args.rounds):
            order = rows if number % 2 == 0 else rows[::-1]
            print(f"round {number + 1}/{args.rounds}: {' '.join(order)} x {args.runs} runs ...",
                  file=sys.stderr, flush=True)
            with running_worker("limits", "orchestration", f"{QUEUE},{SIDE_QUEUE}", args.pool,
                                args.concurrency, env, tmp, ping) as worker:
                for row in order:  # warm-up: pool children, connections, scripts loaded
                    run_batch(row, WARMUP, 50_000_000 + offset)
                    offset += WARMUP
                for row in order:
                    measure_row(row, args.runs, offset, worker.process.pid, client, stmt_dir,
                                results[row])
                    offset += args.runs
    finally:
        client.close()
    return results


# -- report -----------------------------------------------------------------------------------


def report(args: argparse.Namespace, results: dict[str, Row], env_info: dict[str, str],
           elapsed: float) -> None:
    import celery

    print()
    print(f"max_parallel permits: {args.runs} runs of a 3-step no-op chain per row, sent with "
          "submit_many and waited for (client wall time)")
    print(*machine_lines(env_info), sep="\n")
    print(f"  python  : {sys.version.split()[0]}  celery {celery.__version__}")
    print(f"  broker  : {REDIS_URL} (result backend and permits the same); results DB "
          f"{env_info['database']}")
    print(f"  worker  : -P {args.pool} -c {args.concurrency}, one per round, every row; "
          f"{args.rounds} rounds, row order reversed every round, {WARMUP}-run warm-up each")
    print()
    header = (f"{'row':<32}{'median':>9}{'min-max':>17}{'per run':>9}{'worker CPU':>12}"
              f"{'Redis cmds':>12}{'permit cmds':>13}{'SQL stmts':>11}{'permit_waits':>14}")
    print(header + "   (ms; counts per run)")
    print("-" * len(header))
    for row, r in results.items():
        med = statistics.median(r.wall)
        commands = _median_commands(r.commands)
        total = sum(commands.values())
        permit = sum(commands.get(name, 0.0) for name in PERMIT_COMMANDS)
        print(f"{LABEL[row]:<32}{ms(med):>9}{ms(min(r.wall)) + '-' + ms(max(r.wall)):>17}"
              f"{med / args.runs * 1e3:>9.2f}{statistics.median(r.worker_cpu) * 1e3:>12.2f}"
              f"{total:>12.1f}{permit:>13.1f}{statistics.median(r.statements):>11.1f}"
              f"{statistics.median(r.permit_statements):>14.1f}")
    print()
    for top, bottom in RATIOS:
        if top in results and bottom in results:
            a, b = results[top].wall, results[bottom].wall
            ratio = statistics.median(a) / statistics.median(b)
            print(f"ratio {top}/{bottom:<6}: median {ratio:.2f}x, min {min(a) / min(b):.2f}x"
                  "  (worker CPU/run "
                  f"{statistics.median(results[top].worker_cpu) * 1e3:.2f} vs "
                  f"{statistics.median(results[bottom].worker_cpu) * 1e3:.2f} ms)")
    print()
    print("Redis commands per run that differ from the row's baseline by >= 0.5 (medians; "
          "script-internal calls counted too):")
    for top, bottom in RATIOS:
        if top in results and bottom in results:
            mine, theirs = (_median_commands(results[top].commands),
                            _median_commands(results[bottom].commands))
            diff = {name: mine.get(name, 0.0) - theirs.get(name, 0.0)
                    for name in set(mine) | set(theirs)}
            shown = ", ".join(f"{name} {value:+.1f}" for name, value in
                              sorted(diff.items(), key=lambda kv: -abs(kv[1]))
                              if abs(value) >= 0.5)
            print(f"  {top} vs {bottom}: {shown or 'none'}")
    others = [n for r in results.values() for n in r.others]
    print(f"\nother clients of the Redis server during rows: {min(others)}-{max(others)} "
          "(their commands are in the counts)")
    print(f"whole bench: {elapsed:.1f} s")


def _median_commands(samples: list[dict[str, float]]) -> dict[str, float]:
    names = {name for sample in samples for name in sample}
    return {name: statistics.median(sample.get(name, 0.0) for sample in samples)
            for name in names}


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="runs per row per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool", choices=("prefork", "threads", "solo"), default="prefork")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rows", type=lambda s: s.split(","), default=list(ROWS),
                        help=f"comma-separated, of {','.join(ROWS)}")
    parser.add_argument("--wait-for-db", type=float, default=600.0, metavar="SECONDS",
                        help="how long to wait for other clients of the bench's Redis DB")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir (worker logs)")
    args = parser.parse_args(argv)
    unknown = [row for row in args.rows if row not in ROWS]
    if unknown or args.runs < 1 or args.rounds < 1:
        parser.error(f"rows must be of {','.join(ROWS)} (got {unknown}); --runs, --rounds >= 1")
    return args


def set_environment(database: str, stmt_dir: Path) -> dict[str, str]:
    """Point this process and the workers (environment returned) at the bench's services.

    Before ``bench.limits_workflows`` is imported: it binds to the default orchestrator,
    which reads ORCH_* once.
    """
    os.environ.update({"ORCH_BROKER_URL": REDIS_URL, "ORCH_RESULT_BACKEND": REDIS_URL,
                       "ORCH_REDIS_URL": REDIS_URL, "ORCH_DATABASE_URL": database,
                       "ORCH_IMPORTS": "bench.limits_workflows"})
    os.environ.pop(STMT_DIR_ENV, None)  # counted in the workers only
    return {**child_env(), STMT_DIR_ENV: str(stmt_dir)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if int(urlparse(REDIS_URL).path.lstrip("/")) == FORBIDDEN_REDIS_DB:
        raise SystemExit("refusing to use Redis DB 15 (the tests' database)")
    wait_for_free_db(REDIS_URL, args.wait_for_db)
    began = time.monotonic()
    load_start = f"{os.getloadavg()[0]:.2f}"
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-limits-"))
    stmt_dir = tmp / "statements"
    stmt_dir.mkdir()
    flush_bench_db(REDIS_URL)
    watch = FlushWatch(REDIS_URL)
    watch.start()
    try:
        database = f"sqlite:///{tmp / 'bench.db'}"
        env = set_environment(database, stmt_dir)
        results = measure_rounds(args, env, tmp, stmt_dir)
        env_info = {"database": _redact(database), "load_start": load_start,
                    "revision": _revision()}
        report(args, results, env_info, time.monotonic() - began)
        return 0
    except (RunFailed, WaitTimeout) as exc:
        print(f"bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if not watch.flushed:
            raise
        print(f"bench stopped: Redis {REDIS_URL} was flushed by another process.",
              file=sys.stderr)
        return 1
    finally:
        watch.stop()
        _dispose_default_store()
        finish_bench(REDIS_URL, tmp, args.keep_logs)


if __name__ == "__main__":
    sys.exit(main())
