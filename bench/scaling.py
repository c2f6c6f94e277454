"""Runs/s of 4-step workflows with 1, 2 and 4 worker processes, and what one run costs.

    python bench/scaling.py [--runs 2000] [--samples 2] [--single-samples 1] [--single-runs 500]
                            [--workers 1,2,4] [--databases postgresql,sqlite]
                            [--extras support,stream-off] [--quick] [--json FILE]

Each configuration (results DB x workflow x stream on/off) runs in a child process of its
own (the engine reads ``ORCH_*`` once). For each worker count N it starts N separate
``celery worker -P prefork -c 1`` processes consuming the same queue(s) (helpers of
``bench/overhead.py``: own session, ready when it answers ``control.ping``, SIGTERM then
SIGKILL of the session), then:

1. warm-up: ``--warmup`` runs;
2. **counted phase**: the workers stop consuming (``control.cancel_consumer``), the client
   submits ``--runs`` runs with one ``submit_many`` (the client's costs), the workers
   consume again (``add_consumer``) and drain them (the workers' costs);
3. **timed samples**: ``--samples`` x ``submit_many`` of ``--runs`` runs while the workers
   consume, runs/s from the first submit until the client sees every run done (the
   results DB polled every 20 ms, as in ``bench/perf.py``), then ``--single-samples`` x
   ``--single-runs`` single ``submit`` calls in a loop, timed the same way.

Counted per run, per phase: Redis commands by command (``INFO commandstats`` deltas on a
``redis-server`` the bench starts on a free port, so no other client pollutes them) and
the Redis server's CPU; SQL statements (by verb) and commits/rollbacks (a SQLAlchemy
listener, ``bench/sql_counter.py``, in the client and in every worker process); the
workers' CPU (their sessions, /proc); the client's CPU; on PostgreSQL the CPU of the
backends connected to the bench's database (``pg_stat_activity`` pids, /proc; the client's
polling connection left out). PostgreSQL runs in a database of the bench's own
(``orch_scaling_<pid>``, dropped at the end), so ``pg_stat_database``'s ``xact_commit``
over each configuration cross-checks the listener's commit count. SQLite: a file in a
temp dir.

``--extras``: ``support`` runs the support workflow's shape (``scale_support`` in
``bench/scaling_workflows.py``: 4 steps on 3 queues) and ``stream-off`` the linear
workflow with ``ORCH_STREAM=off``, both on PostgreSQL with the middle worker count.
The report (``bench/scaling_report.py``) prints the tables and the capacity model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import scaling_costs as costs  # noqa: E402 - needs the sys.path fix
from bench.overhead import (  # noqa: E402
    PYTHON,
    RunFailed,
    _revision,
    child_env,
    make_ping,
    run_child_json,
    session_cpu,
    start_worker,
    stop_worker,
)

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
IMPORTS = "bench.sql_counter,bench.scaling_workflows"
POLL = 0.02
DEADLINE = 300.0
REDIS_START_TIMEOUT = 15.0


# -- the bench's own redis-server and PostgreSQL database ---------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def own_redis(tmp: Path) -> Iterator[tuple[str, int]]:
    """A ``redis-server`` on a free loopback port, no persistence; (URL of DB 0, its pid)."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: the bench counts commands on its own")
    port = free_port()
    with open(tmp / "redis.log", "wb") as log:
        process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server on {port} did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", process.pid
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def own_database(admin_url: str) -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL database of the bench (URL, name), dropped at the end."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"orch_scaling_{os.getpid()}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False), name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- counters around a phase (child process) ----------------------------------------------------


class Probe:
    """Reads every counter of one configuration; ``snapshot()`` then ``delta()``."""

    def __init__(self, spec: dict[str, Any], sql_dir: Path, sessions: list[int],
                 exclude_pids: set[int]) -> None:
        import redis

        self.spec = spec
        self.sql_dir = sql_dir
        self.sessions = sessions
        self.exclude = exclude_pids
        self.redis = redis.Redis.from_url(spec["redis_url"])
        self.admin = _admin(spec)

    def close(self) -> None:
        self.redis.close()
        if self.admin is not None:
            self.admin.dispose()

    def snapshot(self, *, settle: bool = False) -> dict[str, Any]:
        from bench import sql_counter

        snap: dict[str, Any] = {
            "at": time.perf_counter(),
            "client_cpu": time.process_time(),
            "worker_cpu": sum(session_cpu(s) for s in self.sessions),
            "redis_cpu": costs.pids_cpu([self.spec["redis_pid"]]).get(self.spec["redis_pid"],
                                                                        0.0),
            "client_sql": sql_counter.counts(),
            "worker_sql": costs.sql_counts(self.sql_dir,
                                           after=time.time() + 0.25 if settle else None),
            "redis": costs.command_calls(self.redis.info("commandstats")),
        }
        if self.admin is not None:
            pids = [p for p in costs.pg_backends(self.admin, self.spec["pg_name"])
                    if p not in self.exclude]
            snap["db_cpu"] = costs.pids_cpu(pids)
        return snap

    @staticmethod
    def delta(after: dict[str, Any], before: dict[str, Any], runs: int) -> dict[str, Any]:
        out: dict[str, Any] = {"wall": after["at"] - before["at"], "runs": runs}
        for key in ("client_cpu", "worker_cpu", "redis_cpu"):
            out[key] = (after[key] - before[key]) / runs
        for key in ("client_sql", "worker_sql", "redis"):
            out[key] = costs.per_run(costs.delta(after[key], before[key]), runs)
        out["redis"].pop("info", None)  # the probe's own INFO
        if "db_cpu" in after:
            used, gone = costs.cpu_delta(after["db_cpu"], before["db_cpu"])
            out["db_cpu"], out["db_backends_gone"] = used / runs, gone
        return out


def _admin(spec: dict[str, Any]) -> Any:
    if not spec.get("pg_name"):
        return None
    from sqlalchemy import create_engine

    return create_engine(spec["admin_url"], isolation_level="AUTOCOMMIT", pool_size=1)


# -- one configuration (child process) ----------------------------------------------------------


def _control(app: Any, names: list[str], queues: tuple[str, ...], action: str) -> None:
    for queue in queues:
        replies = getattr(app.control, action)(queue, destination=names, reply=True, timeout=5)
        if len(replies or ()) != len(names):
            raise RunFailed(f"{action} {queue}: {len(replies or ())} of {len(names)} replied")


def submit_batch(shape: str, runs: int, base: int, *, single: bool) -> tuple[list[str], float]:
    """Submit ``runs`` runs (one ``submit_many``, or ``submit`` in a loop); ids, seconds."""
    from bench.scaling_workflows import WORKFLOWS

    workflow = WORKFLOWS[shape]
    began = time.perf_counter()
    if single:
        ids = [workflow.submit(x=base + i).run_id for i in range(runs)]
    else:
        ids = [h.run_id for h in workflow.submit_many([{"x": base + i} for i in range(runs)])]
    return ids, time.perf_counter() - began


def wait_done(reader: Any, shape: str, ids: list[str]) -> None:
    from bench.perf import _statuses, _unfinished
    from bench.scaling_workflows import WORKFLOWS

    name = WORKFLOWS[shape].name
    deadline = time.monotonic() + DEADLINE
    while _unfinished(reader, name):
        if time.monotonic() > deadline:
            raise RunFailed(f"{name}: runs still open after {DEADLINE:g} s")
        time.sleep(POLL)
    counts = _statuses(reader, ids)
    if counts.get("succeeded", 0) != len(ids):
        raise RunFailed(f"{name}: {dict(counts)} of {len(ids)} runs")


def wait_no_backends(admin: Any, name: str) -> None:
    deadline = time.monotonic() + 30
    while costs.pg_backends(admin, name) and time.monotonic() < deadline:
        time.sleep(0.05)


def measure_config(spec: dict[str, Any], count: int, reader: Any, reader_pid: int | None,
                   tmp: Path) -> dict[str, Any]:
    """One worker count of one configuration: the counted phase and the timed samples."""
    from bench import sql_counter
    from bench.scaling_workflows import QUEUES
    from orchestration import default_orchestrator

    orchestrator = default_orchestrator()
    app = orchestrator.celery
    shape, runs = spec["shape"], spec["runs"]
    queues = QUEUES[shape]
    sql_dir = tmp / f"sql-{spec['label']}-{count}"
    sql_dir.mkdir()
    env = {**spec["env"], sql_counter.DIR_ENV: str(sql_dir)}
    out: dict[str, Any] = {"workers": count, "load_start": os.getloadavg()[0]}
    admin = _admin(spec)
    pg_before: dict[str, float] = {}
    if admin is not None:  # every connection closed: their stats are flushed
        orchestrator.reset_store()
        reader.dispose()
        wait_no_backends(admin, spec["pg_name"])
        pg_before = costs.pg_xact(admin, spec["pg_name"])
    client_before = sql_counter.counts()
    ping = make_ping(app)
    workers = []
    base = 1_000_000 * count
    try:
        for index in range(count):
            workers.append(start_worker(f"scale{count}w{index}", "orchestration",
                                        ",".join(queues), spec["pool"], spec["concurrency"],
                                        env, tmp, ping))
        names = [w.nodename for w in workers]
        probe = Probe(spec, sql_dir, [w.process.pid for w in workers],
                      {reader_pid} if reader_pid else set())
        try:
            ids, _ = submit_batch(shape, spec["warmup"], base, single=False)
            wait_done(reader, shape, ids)
            # Counted phase: the client submits with no worker consuming, then the workers drain.
            _control(app, names, queues, "cancel_consumer")
            s0 = probe.snapshot(settle=True)
            ids, _ = submit_batch(shape, runs, base + 10_000, single=False)
            s1 = probe.snapshot()
            out["started_early"] = sum(v for k, v in _status_counts(reader, ids).items()
                                       if k != "pending")
            _control(app, names, queues, "add_consumer")
            s2 = probe.snapshot()
            wait_done(reader, shape, ids)
            s3 = probe.snapshot(settle=True)
            out["client"] = Probe.delta(s1, s0, runs)
            out["drain"] = Probe.delta(s3, s2, runs)
            out["samples"], out["single"] = [], []
            for number in range(spec["samples"] + spec["single_samples"]):
                single = number >= spec["samples"]
                before = probe.snapshot()
                size = spec["single_runs"] if single else runs
                ids, submit_s = submit_batch(shape, size, base + 100_000 * (number + 1),
                                             single=single)
                wait_done(reader, shape, ids)
                sample = Probe.delta(probe.snapshot(settle=True), before, size)
                sample["submit_s"] = submit_s
                out["single" if single else "samples"].append(sample)
        finally:
            probe.close()
    finally:
        for worker in workers:
            stop_worker(worker)
    out["load_end"] = os.getloadavg()[0]
    out["workers_sql_total"] = costs.sql_counts(sql_dir)
    out["client_sql_total"] = costs.delta(sql_counter.counts(), client_before)
    if admin is not None:
        orchestrator.reset_store()
        reader.dispose()
        wait_no_backends(admin, spec["pg_name"])
        out["pg_xact"] = costs.delta(costs.pg_xact(admin, spec["pg_name"]), pg_before)
        out["runs_total"] = (spec["warmup"] + runs * (1 + spec["samples"])
                             + spec["single_runs"] * spec["single_samples"])
        admin.dispose()
    return out


def _status_counts(reader: Any, ids: list[str]) -> dict[str, int]:
    from bench.perf import _statuses

    return dict(_statuses(reader, ids))


def child_main(spec_path: Path, out_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    os.environ.update(spec["env"])
    from bench import sql_counter

    sql_counter.install()  # the client's own counts (no writer: no DIR in this process)
    from sqlalchemy import create_engine, text

    import bench.scaling_workflows  # noqa: F401 - registers the workflows (ORCH_* set)
    from orchestration import default_orchestrator

    default_orchestrator().store.ensure_schema()  # migrate once, before any worker starts
    tmp = Path(spec["tmp"])
    reader = create_engine(os.environ["ORCH_DATABASE_URL"], pool_size=1, max_overflow=0)
    results = []
    try:
        for count in spec["workers"]:
            reader_pid = None
            if spec.get("pg_name"):
                with reader.connect() as conn:
                    reader_pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            print(f"{spec['label']}: {count} worker(s) ...", file=sys.stderr, flush=True)
            results.append(measure_config(spec, count, reader, reader_pid, tmp))
    finally:
        reader.dispose()
        default_orchestrator().reset_store()
    out_path.write_text(json.dumps({"spec": spec, "configs": results}))
    return 0


# -- the parent: configurations, report ---------------------------------------------------------


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The configurations to run, in order (label, database, shape, stream, worker counts)."""
    middle = [sorted(args.workers)[len(args.workers) // 2]]
    out = [{"label": f"{db}-linear", "database": db, "shape": "linear", "stream": True,
            "workers": args.workers} for db in args.databases]
    if "support" in args.extras and "postgresql" in args.databases:
        out.append({"label": "postgresql-support", "database": "postgresql",
                    "shape": "support", "stream": True, "workers": middle})
    if "stream-off" in args.extras and "postgresql" in args.databases:
        out.append({"label": "postgresql-linear-stream-off", "database": "postgresql",
                    "shape": "linear", "stream": False, "workers": middle})
    return out


def run_configuration(args: argparse.Namespace, config: dict[str, Any], tmp: Path,
                      redis_url: str, redis_pid: int, pg: tuple[str, str] | None) -> Any:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushall()  # the bench's own server: queues and streams of the last config
    finally:
        client.close()
    if config["database"] == "postgresql":
        assert pg is not None
        database, pg_name = pg
    else:
        database, pg_name = f"sqlite:///{tmp / (config['label'] + '.db')}", ""
    env = {"ORCH_BROKER_URL": redis_url, "ORCH_RESULT_BACKEND": redis_url,
           "ORCH_DATABASE_URL": database, "ORCH_IMPORTS": IMPORTS,
           "ORCH_STREAM": "on" if config["stream"] else "off", "ORCH_LOG_LEVEL": "WARNING"}
    worker_env = {k: v for k, v in child_env().items() if not k.startswith("ORCH_")}
    worker_env.update(env)
    spec = {**config, "env": worker_env, "redis_url": redis_url, "redis_pid": redis_pid,
            "pg_name": pg_name, "admin_url": args.admin_url, "runs": args.runs,
            "samples": args.samples, "single_samples": args.single_samples,
            "single_runs": args.single_runs,
            "warmup": args.warmup, "pool": args.pool, "concurrency": args.concurrency,
            "tmp": str(tmp)}
    spec_path, out_path = tmp / f"{config['label']}.spec.json", tmp / f"{config['label']}.json"
    spec_path.write_text(json.dumps(spec))
    command = [PYTHON, str(Path(__file__).resolve()), "--child", str(spec_path),
               "--out", str(out_path)]
    return run_child_json(command, worker_env, tmp / f"{config['label']}.log", out_path,
                          timeout=DEADLINE * 20, what=config["label"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def csv(text: str) -> list[str]:
        return [part for part in text.split(",") if part]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs per batch")
    parser.add_argument("--samples", type=int, default=2, help="timed submit_many batches")
    parser.add_argument("--single-samples", type=int, default=1,
                        help="timed batches of single submits")
    parser.add_argument("--single-runs", type=int, default=500,
                        help="runs per batch of single submits (one thread: slow)")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--workers", type=lambda t: [int(p) for p in csv(t)], default=[1, 2, 4])
    parser.add_argument("--databases", type=csv, default=["postgresql", "sqlite"])
    parser.add_argument("--extras", type=csv, default=["support", "stream-off"])
    parser.add_argument("--pool", default="prefork")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--admin-url", default=ADMIN_URL,
                        help="PostgreSQL URL the bench creates its own database from")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 200 runs, 1 sample, 1 and 2 workers")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.samples, args.single_samples, args.warmup = 200, 1, 1, 20
        args.single_runs = 100
        args.workers = [1, 2]
    bad = set(args.databases) - {"postgresql", "sqlite"} or set(args.extras) - {
        "support", "stream-off"}
    if bad:
        parser.error(f"unknown: {sorted(bad)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (like Ctrl-C) unwinds through the finally blocks that stop the workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.child:
        return child_main(args.child, args.out)
    from bench.scaling_report import report

    began = time.monotonic()
    info: dict[str, Any] = {"load_start": os.getloadavg()[0],
                            "revision": os.environ.get("BENCH_REVISION") or _revision()}
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-scaling-"))
    results = []
    try:
        with ExitStack() as stack:
            redis_url, redis_pid = stack.enter_context(own_redis(tmp))
            pg = (stack.enter_context(own_database(args.admin_url))
                  if "postgresql" in args.databases else None)
            for config in plan(args):
                results.append(run_configuration(args, config, tmp, redis_url, redis_pid, pg))
        if "support" in args.extras:
            info["support_models"] = costs.support_models_cpu()
        info["load_end"], info["elapsed"] = os.getloadavg()[0], time.monotonic() - began
        if args.json:
            args.json.write_text(json.dumps({"info": info, "results": results}, indent=1))
        report(args, info, results)
        return 0
    except RunFailed as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep_logs:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
