"""Where a real worker's time goes: py-spy on a raw Celery worker and on an engine worker.

    python bench/profile_worker.py [--runs 300] [--pool prefork] [--concurrency 2]
                                   [--system engine|raw|both] [--experiment pooled-sqlite]

Needs py-spy in the venv (``.venv/bin/pip install py-spy``; profiling only, not a project
dependency). Starts the worker exactly as ``bench/overhead.py`` does (Redis DB 14, flushed
before and after; SQLite results DB in a temp dir), warms it up, attaches
``py-spy record --subprocesses --nonblocking`` to it, drives N sequential runs of the
4-step linear shape, then stops both. Prints the CPU samples per run and their split
into named buckets (inclusive: a sample counts in every bucket whose frame is on its
stack), and the top self-time functions.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.experiments import EXPERIMENTS  # noqa: E402
from bench.overhead import (  # noqa: E402 - after the sys.path fix for `python bench/...`
    REDIS_URL,
    child_env,
    flush_bench_db,
    make_ping,
    run_phase,
    running_worker,
)

PY_SPY = Path(sys.executable).parent / "py-spy"
RATE = 500  # samples per second per thread (py-spy shares the 2 cores)

# Where a sample is (exclusive, first match wins), by frames on its stack.
WHERE: list[tuple[str, str]] = [
    ("engine step runtime (run_step)", r"^run_step \(orchestration/runtime"),
    ("engine finalize task", r"^_register_finalize.<locals>.finalize \("),
    ("celery task trace: store result, send next, events",
     r"^(build_tracer.<locals>.trace_task|trace_task) \(celery/app/trace"),
    ("celery/kombu/billiard: consumer loop, pool IPC, acks", r"."),
]
# Inside the engine (inclusive: a sample counts in every part whose frame is on its stack).
PARTS: list[tuple[str, str]] = [
    ("Store.claim_step", r"(^|\.)claim_step \(orchestration/store"),
    ("Store.record_step", r"(^|\.)record_step \(orchestration/store"),
    ("finalize_run -> Store.finish_run", r"(^|\.)finish_run \(orchestration/store"),
    ("_execute (tenacity, StepContext, call, JSON check)", r"^_execute \(orchestration/runtime"),
]
# Inside the engine, by leaf frame (exclusive): what the time is actually spent on.
LEAVES: list[tuple[str, str]] = [
    ("sqlite3 COMMIT (C)", r"(^|\.)do_commit \(sqlalchemy/"),
    ("sqlite3 close (C; WAL checkpoint + fsync if last conn)", r"(^|\.)do_close \(sqlalchemy/"),
    ("sqlite3 connect + 4 PRAGMAs (NullPool, per tx)",
     r"(_on_connect \(orchestration/store/engine|(^|\.)connect \(sqlalchemy/engine/default)"),
    ("sqlite3 statement execute (C)", r"(^|\.)do_execute \(sqlalchemy/"),
    ("SQLAlchemy Python (statements, cache keys, pool, rows)", r"\(sqlalchemy/"),
    ("other Python (engine, tenacity, json, stdlib)", r"."),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--pool", choices=("prefork", "threads", "solo"), default="prefork")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--system", choices=("engine", "raw", "both"), default="both")
    parser.add_argument("--experiment", choices=EXPERIMENTS, default=None)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--save", type=Path, default=None,
                        help="copy py-spy's raw (collapsed-stack) files to this directory")
    return parser.parse_args()


def read_stacks(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def analyse(label: str, stacks: list[tuple[list[str], int]], runs: int, top: int) -> None:
    total = sum(count for _, count in stacks)

    def per_run(count: int) -> str:
        return f"{count / RATE * 1000 / runs:>8.2f}{count / max(total, 1) * 100:>7.1f}%"

    print(f"\n== {label}: {total} samples at {RATE}/s = {total / RATE * 1000 / runs:.2f} ms of "
          f"sampled non-idle thread time per 4-step run, all processes ==")
    print("   (py-spy counts threads blocked in I/O syscalls such as fsync as non-idle: this is "
          "time, not CPU)")
    where = [(name, re.compile(regex)) for name, regex in WHERE]
    parts = [(name, re.compile(regex)) for name, regex in PARTS]
    by_where: collections.Counter[str] = collections.Counter()
    by_part: collections.Counter[str] = collections.Counter()
    by_leaf: collections.Counter[str] = collections.Counter()
    leaves = [(name, re.compile(regex)) for name, regex in LEAVES]
    self_time: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        name = next(n for n, pattern in where if any(pattern.search(f) for f in frames))
        by_where[name] += count
        if name.startswith("engine"):
            for part, pattern in parts:
                if any(pattern.search(f) for f in frames):
                    by_part[part] += count
            by_leaf[next(n for n, pattern in leaves if pattern.search(frames[-1]))] += count
        if frames:
            self_time[re.sub(r":\d+\)$", ")", frames[-1])] += count
    print(f"{'where (exclusive)':<56}{'ms/run':>8}{'share':>8}")
    for name, _ in WHERE:
        print(f"{name:<56}{per_run(by_where[name])}")
    if any(by_part.values()):
        print(f"{'inside the engine tasks (inclusive)':<56}{'ms/run':>8}{'share':>8}")
        for name, _ in PARTS:
            print(f"  {name:<54}{per_run(by_part[name])}")
        print(f"{'inside the engine tasks, by leaf frame (exclusive)':<56}")
        for name, _ in LEAVES:
            print(f"  {name:<54}{per_run(by_leaf[name])}")
    print(f"-- top {top} self-time frames --")
    for frame, count in self_time.most_common(top):
        print(f"  {count / max(total, 1) * 100:5.1f}%  {frame[:110]}")


def profile(system: str, args: argparse.Namespace, env: dict[str, str], tmp: Path,
            pings: dict[str, object]) -> None:
    module, queue = {"raw": ("bench.raw_celery", "bench.raw"),
                     "engine": ("orchestration", "bench.engine")}[system]
    out = tmp / f"{system}.pyspy.txt"
    with running_worker(system, module, queue, args.pool, args.concurrency, env, tmp,
                        pings[system]) as worker:
        run_phase(system, ("linear",), 0, 20, 0)  # warm-up only
        spy = subprocess.Popen(
            [str(PY_SPY), "record", "--pid", str(worker.process.pid), "--subprocesses",
             "--nonblocking", "--rate", str(RATE), "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            # py-spy attaches within milliseconds; samples it misses at the very start are
            # a negligible part of N runs, so no wait here.
            began = time.perf_counter()
            samples = run_phase(system, ("linear",), args.runs, 0, 0,
                                session=worker.process.pid)["linear"]
            elapsed = time.perf_counter() - began
        finally:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                _, err = spy.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(spy.pid, signal.SIGKILL)
                _, err = spy.communicate()
    if not out.exists():
        raise SystemExit(f"py-spy wrote nothing:\n{err.decode(errors='replace')}")
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, args.save / out.name)
    median = sorted(samples.wall)[len(samples.wall) // 2]
    print(f"\n{system}: {args.runs} runs in {elapsed:.1f} s, median {median * 1000:.1f} ms, "
          f"worker CPU {samples.worker_cpu / args.runs * 1000:.2f} ms/run, "
          f"client CPU {samples.client_cpu / args.runs * 1000:.2f} ms/run")
    analyse(f"{system} worker (-P {args.pool} -c {args.concurrency})", read_stacks(out),
            args.runs, args.top)


def main() -> int:
    args = parse_args()
    if not PY_SPY.exists():
        raise SystemExit(f"py-spy not found at {PY_SPY}: .venv/bin/pip install py-spy")
    tmp = Path(tempfile.mkdtemp(prefix="orch-pyspy-"))
    os.environ.update({
        "ORCH_BROKER_URL": REDIS_URL, "ORCH_RESULT_BACKEND": REDIS_URL,
        "ORCH_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}", "ORCH_IMPORTS": "bench.workflows",
    })
    if args.experiment:
        os.environ["BENCH_EXPERIMENT"] = args.experiment
        os.environ["ORCH_IMPORTS"] = "bench.experiments,bench.workflows"
        print(f"EXPERIMENT {args.experiment}: engine patched by bench/experiments.py")
    env = child_env()
    flush_bench_db(REDIS_URL)
    try:
        from bench import experiments

        experiments.apply()  # BENCH_EXPERIMENT, set above, before the store opens
        import bench.workflows  # noqa: F401 - registers the workflows
        from bench.raw_celery import raw
        from orchestration import default_orchestrator

        orchestrator = default_orchestrator()
        orchestrator.store.ensure_schema()
        pings = {"raw": make_ping(raw), "engine": make_ping(orchestrator.celery)}
        systems = ("raw", "engine") if args.system == "both" else (args.system,)
        for system in systems:
            profile(system, args, env, tmp, pings)
        return 0
    finally:
        flush_bench_db(REDIS_URL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
