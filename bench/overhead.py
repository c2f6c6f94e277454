"""Engine overhead against raw Celery, measured in one run on the same broker and pool.

    python bench/overhead.py [--runs 200] [--pool prefork|threads] [--concurrency 2]
                             [--database URL] [--rounds 3] [--shapes linear,diamond]

For each shape (a 4-step linear chain; a diamond a -> (b, c) -> d) it measures N
sequential end-to-end latencies, client-side wall time with ``time.perf_counter()``:

- raw Celery: build the canvas, ``apply_async()``, ``AsyncResult.get()`` (Redis pub/sub);
- the engine: ``workflow.submit(x=i)``, ``handle.wait(poll=0.002)`` (DB polling; the default
  poll of 10 ms would add up to one poll interval to every run).

Raw and engine each get their own worker process (same ``-P``/``-c``), started, warmed up,
measured and stopped in turn, over several alternating rounds so machine noise hits both.
Both use ``config.celery.celery_config`` (Redis DB 14, flushed at start and end; the
report lists any setting that differs). Then the engine's embedded default (no broker,
in-process worker) runs in a subprocess, for reference only.

Besides latency, the report gives for the engine the median DB duration of a run
(``finished_at - created_at``: wall minus that is submit before the run row, the wait's
polling granularity and the final read) and, for both systems, CPU per run of this client
and of the worker's processes (from /proc), which matters on a 2-core machine.

Results DB: SQLite in a temp dir, or ``--database postgresql+psycopg://...`` (migrated into
a fresh schema ``orch_bench_<pid>``, dropped at the end, so a shared database is not
touched). ``--experiment pooled-sqlite`` measures a proposed engine change patched in by
``bench/experiments.py`` (labelled in the output); ``--dump FILE`` writes every sample.
Exits 0 when every run succeeded with the expected output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.experiments import EXPERIMENTS  # noqa: E402 - needs the sys.path fix

PYTHON = sys.executable
REDIS_URL = "redis://127.0.0.1:6379/14"
FORBIDDEN_REDIS_DB = 15  # the test suite's
WAIT_POLL = 0.002
RUN_TIMEOUT = 30.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
SHAPES = ("linear", "diamond")
SHAPE_LABEL = {"linear": "linear 4-step chain", "diamond": "diamond a->(b,c)->d"}


# -- samples and statistics -----------------------------------------------------------------


@dataclass
class Samples:
    """Latencies (seconds) of one system on one shape, across rounds."""

    wall: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)  # engine: finished_at - created_at
    client_cpu: float = 0.0  # CPU seconds of this process over the measured runs
    worker_cpu: float = 0.0  # CPU seconds of the worker's processes over the measured runs

    def extend(self, other: Samples) -> None:
        self.wall += other.wall
        self.server += other.server
        self.client_cpu += other.client_cpu
        self.worker_cpu += other.worker_cpu


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def machine_lines(env_info: dict[str, Any]) -> list[str]:
    """Report lines: the machine, its load at the start and end, the engine's revision."""
    return [f"  machine : {machine()}",
            f"  load    : 1-min load average {env_info['load_start']} at start, "
            f"{os.getloadavg()[0]:.2f} at end (other processes on the machine add noise)",
            f"  engine  : {env_info['revision']}"]


def machine() -> str:
    """Cores, architecture, OS and release of this machine."""
    return (f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
            f"{platform.release()}")


def load_figures(load_start: Any) -> str:
    """The 1-min load at the start (given) and now, for a one-line report header."""
    return (f"1-min load {load_start} at start, {os.getloadavg()[0]:.2f} at end (shared "
            "machine: other processes add noise)")


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "p95": percentile(values, 95),
            "min": min(values), "max": max(values), "n": len(values)}


# -- worker processes -----------------------------------------------------------------------


@dataclass
class Worker:
    """A ``celery worker`` subprocess in its own session (so its pool children go with it)."""

    label: str
    nodename: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_worker(label: str, app_module: str, queue: str, pool: str, concurrency: int,
                 env: dict[str, str], logdir: Path, ping: Callable[[str], bool]) -> Worker:
    """Start a worker and return once it answers a ping (poll with a deadline)."""
    nodename = f"{label}.{os.getpid()}@{socket.gethostname()}"
    log_path = logdir / f"{label}-{time.monotonic_ns()}.log"
    command = [PYTHON, "-m", "celery", "-A", app_module, "worker", "-Q", queue, "-P", pool,
               "-c", str(concurrency), "-n", nodename, "--loglevel", "INFO"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    worker = Worker(label, nodename, process, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{label} worker exited with {process.returncode} before "
                                   f"it was ready:\n{worker.log_tail()}")
            if ping(nodename):
                return worker
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{label} worker not ready after {START_TIMEOUT:g} s:\n"
                                   f"{worker.log_tail()}")
    except BaseException:
        stop_worker(worker)
        raise


def stop_worker(worker: Worker) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL of its whole session after a deadline."""
    process = worker.process
    if process.poll() is None:
        try:
            process.send_signal(signal.SIGTERM)
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"  {worker.label} worker ignored SIGTERM for {STOP_TIMEOUT:g} s: SIGKILL",
                  file=sys.stderr)
    # Pool children of a killed (or crashed) parent would outlive it: end the session we made.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(STOP_TIMEOUT)


@contextmanager
def running_worker(*args: Any, **kwargs: Any) -> Iterator[Worker]:
    worker = start_worker(*args, **kwargs)
    try:
        yield worker
    finally:
        stop_worker(worker)


def make_ping(app: Any) -> Callable[[str], bool]:
    def ping(nodename: str) -> bool:
        try:
            replies = app.control.ping(destination=[nodename], timeout=0.5)
        except Exception:  # broker hiccup while the worker starts: just poll again
            return False
        return any(nodename in reply for reply in replies or ())
    return ping


# -- one measured phase ---------------------------------------------------------------------


class RunFailed(RuntimeError):
    """A run did not finish with the expected output."""


def measure_raw(shape: str, count: int, start: int) -> Samples:
    from bench.raw_celery import CANVASES
    from bench.workflows import expected

    build = CANVASES[shape]
    samples = Samples()
    for i in range(start, start + count):
        began = time.perf_counter()
        result = build(i).apply_async()
        value = result.get(timeout=RUN_TIMEOUT)
        samples.wall.append(time.perf_counter() - began)
        if value != expected(shape, i):
            raise RunFailed(f"raw {shape} run {i}: got {value!r}, expected {expected(shape, i)}")
    return samples


def measure_engine(shape: str, count: int, start: int) -> Samples:
    from bench.workflows import WORKFLOWS, expected, final_output
    from orchestration import RunStatus

    workflow = WORKFLOWS[shape]
    samples = Samples()
    for i in range(start, start + count):
        began = time.perf_counter()
        handle = workflow.submit(x=i)
        result = handle.wait(timeout=RUN_TIMEOUT, poll=WAIT_POLL)
        samples.wall.append(time.perf_counter() - began)
        value = result.outputs.get(final_output(shape))
        if result.status is not RunStatus.SUCCEEDED or value != expected(shape, i):
            raise RunFailed(f"engine {shape} run {result.run_id}: {result.status.value}, "
                            f"output {value!r} (expected {expected(shape, i)}); "
                            f"error: {result.error}")
        if result.duration_s is not None:
            samples.server.append(result.duration_s)
    return samples


MEASURE = {"raw": measure_raw, "engine": measure_engine}


def session_cpu(session: int | None) -> float:
    """CPU seconds (user + system) used so far by the live processes of a session."""
    if session is None:
        return 0.0
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session:  # fields[0] is the state; [3] the session id
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def run_phase(system: str, shapes: tuple[str, ...], count: int, warmup: int, offset: int,
              session: int | None = None) -> dict[str, Samples]:
    measure = MEASURE[system]
    for shape in shapes:  # warm-up: imports, pool children, connections, compiled canvases
        measure(shape, warmup, 10_000_000 + offset)
    out: dict[str, Samples] = {}
    for shape in shapes:
        client0, worker0 = time.process_time(), session_cpu(session)
        samples = measure(shape, count, offset)
        samples.client_cpu = time.process_time() - client0
        samples.worker_cpu = session_cpu(session) - worker0
        out[shape] = samples
    return out


# -- embedded default -----------------------------------------------------------------------


def embedded_child(args: argparse.Namespace) -> int:
    """In a subprocess with no ORCH_BROKER_URL: the in-process worker; writes JSON samples."""
    from bench import experiments

    experiments.apply()  # BENCH_EXPERIMENT, if set, before the store opens
    import bench.workflows  # noqa: F401 - registers the workflows on the default orchestrator
    from orchestration import default_orchestrator

    shapes = tuple(args.shapes)
    try:
        out = run_phase("engine", shapes, args.runs, args.warmup, 0)
    finally:
        default_orchestrator().shutdown()
    data = {shape: {"wall": s.wall, "server": s.server, "client_cpu": s.client_cpu}
            for shape, s in out.items()}
    Path(args.embedded_child).write_text(json.dumps(data))
    return 0


def run_child_json(command: list[str], env: dict[str, str], log_path: Path, out_path: Path,
                   *, timeout: float, what: str) -> Any:
    """Run a bench child process to its end; the JSON it wrote to ``out_path``.

    The child has a process group of its own and logs to ``log_path``; the group is killed
    if the wait fails (timeout, Ctrl-C). A non-zero exit raises RunFailed with the log's tail.
    """
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except BaseException:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    if process.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RunFailed(f"{what} exited with {process.returncode}:\n{tail}")
    return json.loads(out_path.read_text())


def run_embedded(args: argparse.Namespace, tmp: Path) -> dict[str, Samples]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["ORCH_DATABASE_URL"] = f"sqlite:///{tmp / 'embedded.db'}"
    out_path = tmp / "embedded.json"
    command = [PYTHON, str(Path(__file__).resolve()), "--embedded-child", str(out_path),
               "--runs", str(args.runs), "--warmup", str(args.warmup),
               "--shapes", ",".join(args.shapes)]
    data = run_child_json(command, env, tmp / "embedded.log", out_path,
                          timeout=RUN_TIMEOUT * 4 + args.runs * 2, what="embedded run")
    return {shape: Samples(v["wall"], v["server"], client_cpu=v["client_cpu"])
            for shape, v in data.items()}


# -- report ---------------------------------------------------------------------------------


def report(args: argparse.Namespace, results: dict[str, dict[str, Samples]],
           embedded: dict[str, Samples] | None, env_info: dict[str, str],
           elapsed: float) -> None:
    import celery
    import kombu
    import sqlalchemy

    print()
    print("Engine overhead vs raw Celery (end-to-end latency of one run, sequential runs)")
    if args.experiment:
        print(f"  !! EXPERIMENT {args.experiment}: the engine is patched by bench/experiments.py "
              "in every process; NOT the engine as shipped")
    print(*machine_lines(env_info), sep="\n")
    print(f"  python  : {platform.python_version()}  celery {celery.__version__}  "
          f"kombu {kombu.__version__}  sqlalchemy {sqlalchemy.__version__}")
    print(f"  broker  : {env_info['broker']} (result backend the same); config.celery settings "
          "for both (json, acks_late, prefetch 1, events on, ...)")
    print(f"  settings: raw vs engine Celery conf differ only in: {env_info['conf_diff']}")
    print(f"  workers : -P {args.pool} -c {args.concurrency}, one at a time; "
          f"{args.rounds} alternating rounds x {args.runs // args.rounds}+ runs, "
          f"{args.warmup} warm-up runs per shape per phase")
    print(f"  results : DB {env_info['database']}; "
          f"handle.wait(poll={WAIT_POLL}) (the default: flat for 0.1 s, then growing to 0.05 s)")
    print("  raw     : canvas.apply_async() + AsyncResult.get() (Redis pub/sub)")
    print("  timing  : client wall time (perf_counter) around submit+wait, both systems")
    print()
    header = (f"{'shape':<22}{'system':<16}{'n':>5}{'median':>9}{'p95':>9}"
              f"{'min-max':>17}{'DB created->finished':>22}{'CPU/run client+worker':>24}")
    print(header + "   (ms)")
    print("-" * len(header))
    for shape in args.shapes:
        rows = [("raw celery", results["raw"][shape]), ("engine", results["engine"][shape])]
        if embedded is not None:
            rows.append(("engine embedded", embedded[shape]))
        for index, (name, samples) in enumerate(rows):
            s = summary(samples.wall)
            server = (ms(statistics.median(samples.server)) + " (median)"
                      if samples.server else "-")
            runs = len(samples.wall)
            cpu = f"{ms(samples.client_cpu / runs)} + {ms(samples.worker_cpu / runs)}"
            if name.endswith("embedded"):
                cpu = f"{ms(samples.client_cpu / runs)} (in-process)"
            print(f"{SHAPE_LABEL[shape] if index == 0 else '':<22}{name:<16}{s['n']:>5}"
                  f"{ms(s['median']):>9}{ms(s['p95']):>9}"
                  f"{ms(s['min']) + '-' + ms(s['max']):>17}{server:>22}{cpu:>24}")
        raw = summary(results["raw"][shape].wall)
        eng = summary(results["engine"][shape].wall)
        target = " (target: median <= 1.5x)" if shape == "linear" else ""
        print(f"{'':<22}ratio engine/raw: median {eng['median'] / raw['median']:.2f}x, "
              f"p95 {eng['p95'] / raw['p95']:.2f}x, min {eng['min'] / raw['min']:.2f}x{target}")
        print()
    print("DB created->finished: median run duration recorded by the engine; wall minus it is "
          "submit before the run row,\n  the wait's polling granularity and the "
          "final get_run.")
    if embedded is not None:
        print("engine embedded: no broker, in-process threads worker, SQLite; for reference, "
              "not a ratio target.")
    print(f"whole bench: {elapsed:.1f} s")


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="measured runs per shape and system")
    parser.add_argument("--pool", choices=("prefork", "threads", "solo"), default="prefork")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--database", default=None,
                        help="results DB URL (default: SQLite in a temp dir), e.g. "
                             "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw/engine rounds")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per shape per phase")
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        type=lambda text: [s for s in text.split(",") if s])
    parser.add_argument("--no-embedded", action="store_true",
                        help="skip the embedded-default reference row")
    parser.add_argument("--experiment", choices=EXPERIMENTS, default=None,
                        help="what-if: patch the engine (client, workers, embedded) with "
                             "bench/experiments.py; results are labelled, not the shipped engine")
    parser.add_argument("--dump", type=Path, default=None,
                        help="write every sample (seconds) to this JSON file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir (worker logs)")
    parser.add_argument("--embedded-child", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    if args.runs < args.rounds or args.rounds < 1:
        parser.error("--runs must be >= --rounds >= 1")
    return args


def isolated_postgres(url: str) -> tuple[str, Callable[[], None]]:
    """A PostgreSQL URL whose tables live in a fresh schema of this bench, and its cleanup.

    The given database may be shared (e.g. the tests' ``test``): the bench migrates into
    ``orch_bench_<pid>`` (via ``search_path``) and drops that schema, and only it, at the end.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    schema = f"orch_bench_{os.getpid()}"
    base = make_url(url)
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    isolated = base.update_query_dict({"options": f"-csearch_path={schema}"})

    def drop() -> None:
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        finally:
            admin.dispose()

    return isolated.render_as_string(hide_password=False), drop


BENCH_LOCK_ENV = "ORCH_BENCH_REDIS_LOCK_HELD"  # set in a holder's env: its children pass
_bench_lock: Any = None


def hold_bench_lock() -> None:
    """Take (once per process, until it exits) the lock every bench flushing DB 14 holds.

    Two benches on one Redis DB flush each other's queues: the other's runs then wait for
    messages that no longer exist. A second bench waits here for the first to finish. A
    child process of the holder (it inherits ``ORCH_BENCH_REDIS_LOCK_HELD``) passes.
    """
    global _bench_lock
    if _bench_lock is not None or os.environ.get(BENCH_LOCK_ENV):
        return
    import fcntl

    handle = open(  # noqa: SIM115 - held open until the process exits
        Path(tempfile.gettempdir()) / "orchestration-bench-redis.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("waiting for another bench using the bench Redis DB to finish ...",
              file=sys.stderr, flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
    _bench_lock = handle
    os.environ[BENCH_LOCK_ENV] = str(os.getpid())


def flush_bench_db(url: str) -> None:
    import redis

    hold_bench_lock()
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def child_env() -> dict[str, str]:
    """This process's environment for a worker or child process: the repository root first
    on ``PYTHONPATH``, so ``bench.*`` workflow modules import by name."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def set_environment(args: argparse.Namespace, database: str) -> dict[str, str]:
    """Point this process (and the workers' environment, returned) at the bench's services.

    The engine reads ORCH_* once, when the default orchestrator is first built.
    """
    os.environ.update({
        "ORCH_BROKER_URL": REDIS_URL,
        "ORCH_RESULT_BACKEND": REDIS_URL,
        "ORCH_DATABASE_URL": database,
        "ORCH_IMPORTS": "bench.workflows",
    })
    if args.experiment:
        os.environ["BENCH_EXPERIMENT"] = args.experiment
        os.environ["ORCH_IMPORTS"] = "bench.experiments,bench.workflows"
    else:
        os.environ.pop("BENCH_EXPERIMENT", None)
    return child_env()


def measure_rounds(args: argparse.Namespace, env: dict[str, str],
                   tmp: Path) -> dict[str, dict[str, Samples]]:
    """Alternate raw and engine phases (one worker each, started and stopped per phase)."""
    from bench import experiments

    experiments.apply()  # BENCH_EXPERIMENT, if set (set_environment), before the store opens
    import bench.workflows  # noqa: F401 - registers the workflows
    from bench.raw_celery import QUEUE as RAW_QUEUE
    from bench.raw_celery import raw
    from bench.workflows import QUEUE as ENGINE_QUEUE
    from orchestration import default_orchestrator

    orchestrator = default_orchestrator()
    orchestrator.store.ensure_schema()  # migrate once, before any worker starts
    workers = {
        "raw": ("bench.raw_celery", RAW_QUEUE, make_ping(raw)),
        "engine": ("orchestration", ENGINE_QUEUE, make_ping(orchestrator.celery)),
    }
    shapes = tuple(args.shapes)
    results = {system: {shape: Samples() for shape in shapes} for system in workers}
    per_round = [args.runs // args.rounds + (1 if r < args.runs % args.rounds else 0)
                 for r in range(args.rounds)]
    offset = 0
    for number, count in enumerate(per_round):
        order = ("raw", "engine") if number % 2 == 0 else ("engine", "raw")
        for system in order:
            module, queue, ping = workers[system]
            print(f"round {number + 1}/{args.rounds}: {system:<6} {count} runs x "
                  f"{len(shapes)} shape(s) ...", file=sys.stderr, flush=True)
            with running_worker(system, module, queue, args.pool, args.concurrency, env,
                                tmp, ping) as worker:
                phase = run_phase(system, shapes, count, args.warmup, offset,
                                  session=worker.process.pid)
            for shape, samples in phase.items():
                results[system][shape].extend(samples)
        offset += count
    return results


def conf_diff() -> str:
    """Celery settings (from config.celery) that differ between the raw and engine apps."""
    from bench.raw_celery import raw
    from config.celery import celery_config
    from orchestration import default_orchestrator
    from orchestration.core.settings import Settings

    engine_conf = default_orchestrator().celery.conf
    keys = celery_config(Settings(broker_url=REDIS_URL)).keys()
    differ = [key for key in keys if raw.conf.get(key) != engine_conf.get(key)]
    return ", ".join(differ) or "nothing"


def dump(path: Path, args: argparse.Namespace, env_info: dict[str, str],
         results: dict[str, dict[str, Samples]]) -> None:
    path.write_text(json.dumps({
        "args": {key: str(value) for key, value in vars(args).items()}, "env": env_info,
        "samples": {system: {shape: vars(samples) for shape, samples in by_shape.items()}
                    for system, by_shape in results.items()},
    }, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.embedded_child:
        return embedded_child(args)
    # SIGTERM (like Ctrl-C) unwinds through the finally blocks that stop the workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    began = time.monotonic()
    load_start = f"{os.getloadavg()[0]:.2f}"
    if int((urlparse(REDIS_URL).path or "/0").lstrip("/") or 0) == FORBIDDEN_REDIS_DB:
        raise SystemExit("refusing to use Redis DB 15 (the tests' database)")
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    cleanups: list[Callable[[], None]] = []
    flush_bench_db(REDIS_URL)
    try:
        database = args.database or f"sqlite:///{tmp / 'bench.db'}"
        if database.startswith("postgresql"):
            database, drop_schema = isolated_postgres(database)
            cleanups.append(drop_schema)
        env = set_environment(args, database)
        results = measure_rounds(args, env, tmp)
        if not args.no_embedded:
            print(f"embedded default: {args.runs} runs x {len(args.shapes)} shape(s) ...",
                  file=sys.stderr, flush=True)
            results["embedded"] = run_embedded(args, tmp)
        env_info = {"broker": REDIS_URL, "database": _redact(database),
                    "load_start": load_start, "revision": _revision(),
                    "conf_diff": conf_diff()}
        report(args, results, results.get("embedded"), env_info, time.monotonic() - began)
        if args.dump:
            dump(args.dump, args, env_info, results)
        return 0
    except RunFailed as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        flush_bench_db(REDIS_URL)
        _dispose_default_store()
        for cleanup in cleanups:
            cleanup()
        if args.keep_logs:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _dispose_default_store() -> None:
    import orchestration.app

    if orchestration.app._default() is not None:
        orchestration.app.default_orchestrator().reset_store()


def _revision() -> str:
    """The engine's git commit, and whether its tree has uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "orchestration", "config"],
                               cwd=ROOT, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"git {sha}" + (" + uncommitted changes in orchestration/ or config/" if dirty else "")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    sys.exit(main())
