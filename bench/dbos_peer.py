"""A 4-step linear workflow against DBOS 3.4, submit -> result in the caller, PostgreSQL.

    python bench/dbos_peer.py [--runs 100] [--rounds 3] [--warmup 20]
                              [--variants dbos,embedded,celery] [--json FILE]

The same four no-op steps (``s1 -> s2 -> s3 -> s4``, each returning its input) as:

- ``dbos``: a DBOS workflow of four ``@DBOS.step()`` functions, in-process
  (``DBOS.start_workflow(...).get_result()``), its system database a fresh PostgreSQL
  database ``dbos_peer_<pid>`` made by this bench and dropped at its end;
- ``embedded``: the engine's embedded default (in-process worker, in-memory broker) with
  its results DB on the same PostgreSQL server (schema ``orch_bench_<pid>`` of the same
  fresh database), ``bench.workflows.linear`` (one queue: one fused message per run);
- ``celery``: the same workflow on a real Celery worker (``-P prefork -c 2``, Redis DB 13
  as broker and result backend, the same PostgreSQL results DB), the caller in another
  process (``workflow.submit(x=i)`` then ``handle.wait()``).

Client wall time with ``time.perf_counter()`` from start/submit until the result is in the
caller, N sequential runs per phase. Each phase is a fresh process (the Celery variant also
a fresh worker, ``bench/overhead.py``'s helpers); phases alternate over ``--rounds`` in a
rotating order so machine noise hits all three. Besides the wall time, each sample splits
into the submit call and the wait, and the engine's run duration in the DB (created ->
finished); CPU per run covers every process of the variant (the in-process ones: the whole
process; Celery: the caller plus the worker's session), not PostgreSQL's. PostgreSQL's own
counters for the fresh database (``pg_stat_database``, read before and after each phase
once its processes have ended) give transactions (read-only ones included) and rows
written per run, the phase's start-up shared out over its runs.
Without ``dbos`` installed (``pip install -e '.[bench]'``) the row says so and is skipped.
Redis DB 13 only: the bench waits until no other client uses it, flushes it at start and
end. Exits 0 when every run returned its input.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.overhead import (  # noqa: E402 - needs the sys.path fix
    PYTHON,
    RunFailed,
    _revision,
    child_env,
    flush_bench_db,
    isolated_postgres,
    load_figures,
    machine,
    make_ping,
    percentile,
    run_child_json,
    running_worker,
    session_cpu,
)

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/13"
VARIANTS = ("dbos", "embedded", "celery")
TARGET = 1.0  # engine / DBOS, median wall
LABEL = {"dbos": "DBOS 3.4, in-process",
         "embedded": "engine, embedded default (in-process)",
         "celery": "engine, Celery worker -P prefork -c 2"}


# -- the children: one phase each, JSON out ---------------------------------------------------


def timed_runs(call: Callable[[int], tuple[Any, float, float | None]], runs: int,
               warmup: int) -> dict[str, Any]:
    """``call(x)`` -> (value, submit seconds, DB duration or None); must return ``x``."""
    for i in range(warmup):
        call(1_000_000 + i)
    out: dict[str, Any] = {"wall": [], "submit": [], "db": []}
    cpu0 = time.process_time()
    for i in range(runs):
        began = time.perf_counter()
        value, submit, db = call(i)
        out["wall"].append(time.perf_counter() - began)
        if value != i:
            raise RunFailed(f"run {i} returned {value!r}")
        out["submit"].append(submit)
        if db is not None:
            out["db"].append(db)
    out["cpu"] = (time.process_time() - cpu0) / runs
    return out


def child_dbos(args: argparse.Namespace) -> dict[str, Any]:
    from dbos import DBOS

    DBOS(config={"name": "bench_dbos_peer", "system_database_url": os.environ["DBOS_PEER_URL"],
                 "log_level": "WARNING"})

    @DBOS.step()
    def s1(x: int) -> int:
        return x

    @DBOS.step()
    def s2(x: int) -> int:
        return x

    @DBOS.step()
    def s3(x: int) -> int:
        return x

    @DBOS.step()
    def s4(x: int) -> int:
        return x

    @DBOS.workflow()
    def linear(x: int) -> int:
        return s4(s3(s2(s1(x))))

    DBOS.launch()

    def call(x: int) -> tuple[Any, float, None]:
        began = time.perf_counter()
        handle = DBOS.start_workflow(linear, x)
        submitted = time.perf_counter() - began
        return handle.get_result(), submitted, None

    try:
        return timed_runs(call, args.runs, args.warmup)
    finally:
        DBOS.destroy()


def child_engine(args: argparse.Namespace) -> dict[str, Any]:
    from bench.workflows import linear
    from orchestration import RunStatus, default_orchestrator

    def call(x: int) -> tuple[Any, float, float | None]:
        began = time.perf_counter()
        handle = linear.submit(x=x)
        submitted = time.perf_counter() - began
        result = handle.wait(timeout=30)
        if result.status is not RunStatus.SUCCEEDED:
            raise RunFailed(f"run {result.run_id}: {result.status.value}; {result.error}")
        return result.outputs.get("s4"), submitted, result.duration_s

    try:
        return timed_runs(call, args.runs, args.warmup)
    finally:
        default_orchestrator().shutdown()


# -- the parent --------------------------------------------------------------------------------


def fresh_database(url: str) -> tuple[str, Callable[[], None]]:
    """A new PostgreSQL database ``dbos_peer_<pid>`` and its drop (only that one)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"dbos_peer_{os.getpid()}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()

    return make_url(url).set(database=name).render_as_string(hide_password=False), drop


PG_COUNTERS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted")


def pg_counters(url: str) -> dict[str, int]:
    """This database's transaction and row counters (pg_stat_database)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    time.sleep(0.5)  # backends of processes that just ended flush their counters on exit
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(text(f"SELECT {', '.join(PG_COUNTERS)} FROM pg_stat_database "
                                    "WHERE datname = :name"),
                               {"name": make_url(url).database}).one()
    finally:
        engine.dispose()
    return dict(zip(PG_COUNTERS, (int(value) for value in row), strict=True))


def run_phase(variant: str, env: dict[str, str], tmp: Path, args: argparse.Namespace,
              round_: int) -> dict[str, Any]:
    out = tmp / f"{variant}-{round_}.json"
    command = [PYTHON, str(Path(__file__).resolve()), "--child", variant, "--out", str(out),
               "--runs", str(args.runs), "--warmup", str(args.warmup)]
    return dict(run_child_json(command, env, tmp / f"{variant}-{round_}.log", out,
                               timeout=300, what=f"{variant} phase"))


def measure(args: argparse.Namespace, envs: dict[str, dict[str, str]], tmp: Path,
            database: str) -> dict[str, dict[str, list[float]]]:
    from bench.workflows import QUEUE
    from orchestration import default_orchestrator

    ping = make_ping(default_orchestrator().celery)
    results: dict[str, dict[str, list[float]]] = {v: {} for v in args.variants}
    for number in range(args.rounds):
        shift = number % len(args.variants)
        for variant in args.variants[shift:] + args.variants[:shift]:
            print(f"round {number + 1}/{args.rounds}: {variant} ...", file=sys.stderr,
                  flush=True)
            before = pg_counters(database)
            if variant == "celery":
                with running_worker("dbos-peer", "orchestration", QUEUE, "prefork", 2,
                                    envs["celery"], tmp, ping) as worker:
                    # Read around the whole phase (warm-up included): shared out per run.
                    cpu0 = session_cpu(worker.process.pid)
                    data = run_phase(variant, envs[variant], tmp, args, number)
                    worker_cpu = session_cpu(worker.process.pid) - cpu0
                data["worker_cpu"] = worker_cpu / (args.runs + args.warmup)
            else:
                data = run_phase(variant, envs[variant], tmp, args, number)
            after, target = pg_counters(database), results[variant]
            runs = args.runs + args.warmup
            target.setdefault("xacts", []).append(
                (after["xact_commit"] + after["xact_rollback"] - before["xact_commit"]
                 - before["xact_rollback"]) / runs)
            target.setdefault("rows", []).append(
                sum(after[key] - before[key] for key in PG_COUNTERS[2:]) / runs)
            for key in ("wall", "submit", "db"):
                target.setdefault(key, []).extend(data[key])
            target.setdefault("cpu", []).append(data["cpu"] + data.get("worker_cpu", 0.0))
    return results


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"{statistics.median(values) * 1000:.1f} ({min(values) * 1000:.1f}-"
            f"{max(values) * 1000:.1f})")


def report(args: argparse.Namespace, results: dict[str, dict[str, list[float]]],
           info: dict[str, str]) -> dict[str, Any]:
    print("\n4-step linear workflow, submit -> result in the caller, PostgreSQL: the engine "
          "vs DBOS (one invocation)")
    print(f"  machine : {machine()}; {load_figures(info['load_start'])}")
    print(f"  engine  : {info['revision']}; python {platform.python_version()}; "
          f"dbos {info.get('dbos', '-')}")
    print(f"  runs    : {args.runs} sequential per phase (+{args.warmup} warm-up), "
          f"{args.rounds} rounds, order rotating; a fresh process per phase")
    print(f"\n{'system':<40}{'wall ms, median (min-max)':>28}{'p95':>7}{'submit ms':>11}"
          f"{'DB run ms':>11}{'CPU ms/run':>12}{'PG xacts':>10}{'PG rows':>9}{'engine/DBOS':>13}"
          "  verdict")
    dbos = results.get("dbos", {}).get("wall")
    summary: dict[str, Any] = {"info": info, "rows": {}}
    for variant in args.variants:
        row = results[variant]
        wall = row.get("wall", [])
        if not wall:
            continue
        median = statistics.median(wall)
        ratio, verdict = "-", ""
        if variant != "dbos" and dbos:
            value = median / statistics.median(dbos)
            ratio = f"{value:.2f}x"
            verdict = "PASS" if value <= TARGET else f"MISS ({value / TARGET - 1:.0%} over)"
        db = f"{statistics.median(row['db']) * 1000:.1f}" if row.get("db") else "-"
        print(f"{LABEL[variant]:<40}{_ms(wall):>28}{percentile(wall, 95) * 1000:>7.1f}"
              f"{statistics.median(row['submit']) * 1000:>11.2f}{db:>11}"
              f"{statistics.median(row['cpu']) * 1000:>12.1f}"
              f"{statistics.median(row['xacts']):>10.1f}{statistics.median(row['rows']):>9.1f}"
              f"{ratio:>13}  {verdict}")
        summary["rows"][variant] = {"median": median, "min": min(wall), "max": max(wall),
                                    "ratio": ratio, "verdict": verdict}
    print(f"\nTarget: engine <= {TARGET:.1f}x DBOS (median wall). submit = the start/submit "
          "call alone; DB run = the engine's created -> finished; CPU = every process of the "
          "variant\n(in-process: the whole process; Celery: caller + worker), PostgreSQL's "
          "own CPU not counted; PG xacts / rows = transactions (read-only included) and rows "
          "written\nper run in the fresh database (pg_stat_database).")
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="measured runs per phase")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        type=lambda text: [part for part in text.split(",") if part])
    parser.add_argument("--postgres", default=POSTGRES_URL, help="server to make the DB on")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    parser.add_argument("--wait-for-db", type=float, default=600.0, metavar="SECONDS")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--child", choices=("dbos", "embedded", "celery"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    return args


def environments(engine_url: str, dbos_url: str) -> dict[str, dict[str, str]]:
    """Each variant's environment; this process takes the Celery variant's (for its ping)."""
    base = {k: v for k, v in child_env().items() if not k.startswith("ORCH_")}
    base["ORCH_LOG_LEVEL"] = "WARNING"
    celery = {**base, "ORCH_BROKER_URL": REDIS_URL, "ORCH_RESULT_BACKEND": REDIS_URL,
              "ORCH_DATABASE_URL": engine_url, "ORCH_IMPORTS": "bench.workflows"}
    os.environ.update({k: v for k, v in celery.items() if k.startswith("ORCH_")})
    return {"dbos": {**base, "DBOS_PEER_URL": dbos_url},
            "embedded": {**base, "ORCH_DATABASE_URL": engine_url},
            "celery": celery}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        data = child_dbos(args) if args.child == "dbos" else child_engine(args)
        Path(args.out).write_text(json.dumps(data))
        return 0
    info = {"load_start": f"{os.getloadavg()[0]:.2f}", "revision": _revision()}
    if importlib.util.find_spec("dbos") is None:
        print("\nDBOS peer row: skipped, dbos is not installed (pip install -e '.[bench]')")
        if args.json:
            args.json.write_text(json.dumps({"skipped": "dbos not installed"}))
        return 0
    from importlib.metadata import version

    from bench.maps import finish_bench, wait_for_free_db

    info["dbos"] = version("dbos")
    wait_for_free_db(REDIS_URL, args.wait_for_db)
    flush_bench_db(REDIS_URL)
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-dbos-"))
    cleanups: list[Callable[[], None]] = []
    try:
        database, drop_database = fresh_database(args.postgres)
        cleanups.append(drop_database)
        engine_url, drop_schema = isolated_postgres(database.replace(
            "postgresql://", "postgresql+psycopg://"))
        cleanups.insert(0, drop_schema)
        envs = environments(engine_url, database.replace("+psycopg", ""))
        from orchestration import default_orchestrator

        default_orchestrator().store.ensure_schema()  # migrate once, before any phase
        results = measure(args, envs, tmp, database)
        summary = report(args, results, info)
        if args.json:
            args.json.write_text(json.dumps(summary))
        return 0
    except RunFailed as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        import orchestration.app

        if orchestration.app._default() is not None:
            orchestration.app.default_orchestrator().reset_store()
        for cleanup in cleanups:
            try:
                cleanup()
            except Exception as exc:  # report, and go on with the others
                print(f"cleanup failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        finish_bench(REDIS_URL, tmp, args.keep_logs)


if __name__ == "__main__":
    sys.exit(main())
