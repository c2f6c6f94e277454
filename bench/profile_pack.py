"""Where a one-call run's worker time goes: cProfile and SQL timings of packed runs.

    python bench/profile_pack.py [--runs 1000] [--workflow llm_one|llm_aone]
                                 [--latency-ms 0] [--database URL] [--top 30]

The 1,000 one-call runs row of ``bench/perf.py`` is bound by the worker's CPU per run.
This drives the same workflow (``bench/perf_workflows.py``, ``submit_many``: runs packed
16 to a message) through a ``-P solo`` worker with ``ORCH_PACK_CONCURRENCY=1``, so that
every run of every pack executes in the task's own thread, one after another, and one
cProfile (``bench/profile_hook.py``) sees its whole path: claim, call, record. The fake
LLM server answers at once unless ``--latency-ms``. Prints the wall time, the profile's
time per run in the engine's main parts, the top functions by own time, and every SQL
statement the worker sent with its count per run and its mean time, measured from
SQLAlchemy's ``before_cursor_execute`` to ``after_cursor_execute``.

cProfile adds its own overhead (about 1.5-2x here), so read shares, not absolute times.
Then ``--gil-convoy`` shows why a statement costs more inside a busy worker than alone:
the same SQLite transaction timed alone and beside one thread that keeps the GIL busy
(the sqlite3 module releases the GIL around each call into SQLite, and getting it back
waits for the busy thread's switch interval).

Redis DB 14 (the bench's), flushed at start and end; a temporary SQLite results DB
unless ``--database`` (PostgreSQL: a fresh schema, dropped at the end).
"""

from __future__ import annotations

import argparse
import json
import pstats
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import perf  # noqa: E402 - after the sys.path fix
from bench.overhead import make_ping, running_worker  # noqa: E402
from bench.profile_hook import KEY, OUT_ENV  # noqa: E402
from bench.providers import start_fake_server, stop_fake_server, write_catalogue  # noqa: E402

# (label, (file suffix, function)): inclusive time per run
PARTS = [
    ("run_step (one run of a pack)", ("orchestration/execute/runtime.py", "run_step")),
    ("  Store.claim_step", ("orchestration/store/repository.py", "claim_step")),
    ("  the step's attempts (incl. the model call)",
     ("orchestration/execute/attempts.py", "run_attempts")),
    ("    LLMClient._call (breaker, retries, HTTP)", ("orchestration/llm/client.py", "_call")),
    ("  record_and_pass (record + what follows)",
     ("orchestration/execute/runtime.py", "record_and_pass")),
    ("    Store.record_step", ("orchestration/store/repository.py", "record_step")),
    ("GroupCommit.run (every claim and record)",
     ("orchestration/store/group_commit.py", "run")),
    ("sqlite3 execute (C)", ("~", "<method 'execute' of 'sqlite3.Cursor' objects>")),
    ("sqlite3 commit (C)", ("~", "<method 'commit' of 'sqlite3.Connection' objects>")),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--workflow", choices=("llm_one", "llm_aone"), default="llm_one")
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--database", default=None)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--gil-convoy", action="store_true",
                        help="also time a SQLite transaction alone and beside a busy thread")
    return parser.parse_args()


def parts(stats: pstats.Stats, runs: int) -> list[tuple[str, float]]:
    found = dict.fromkeys((label for label, _ in PARTS), 0.0)
    raw = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, function), (_cc, _calls, _tt, cum, _callers) in raw.items():
        for label, (suffix, name) in PARTS:
            if function == name and filename.endswith(suffix):
                found[label] += cum
    return [(label, seconds / runs * 1000) for label, seconds in found.items()]


def report(out: str, runs: int, wall: float, top: int) -> None:
    stats = pstats.Stats(f"{out}.prof")
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"\n{runs} runs in {wall:.2f} s unprofiled wall (pack concurrency 1, -P solo); "
          f"profiled task time {total / runs * 1000:.2f} ms per run")
    print(f"{'inclusive, ms per run (under cProfile)':<52}{'ms':>8}")
    for label, ms in parts(stats, runs):
        print(f"  {label:<50}{ms:>8.3f}")
    print(f"-- top {top} functions by own time --")
    stats.sort_stats("tottime").print_stats(top)
    sql = json.loads(Path(f"{out}.sql.json").read_text())
    print(f"{'SQL statements of the profiled runs':<72}{'per run':>8}{'mean us':>9}"
          f"{'ms/run':>8}")
    for text, entry in sorted(sql.items(), key=lambda item: -item[1]["seconds"]):
        print(f"  {text[:70]:<70}{entry['count'] / runs:>8.2f}"
              f"{entry['seconds'] / max(entry['count'], 1) * 1e6:>9.1f}"
              f"{entry['seconds'] / runs * 1000:>8.3f}")


def gil_convoy(tmp: Path, repeats: int = 300) -> None:
    """One BEGIN IMMEDIATE + UPDATE + COMMIT on a pooled WAL connection, alone and beside
    a thread that only computes."""
    path = tmp / "convoy.db"
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, status TEXT)")
    conn.execute("CREATE INDEX ix_status ON runs (status)")
    conn.executemany("INSERT INTO runs VALUES (?, 'pending')", [(i,) for i in range(10_000)])

    def transaction(i: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE runs SET status = 'running' WHERE id = ?", (i,))
        conn.execute("COMMIT")

    def timed(label: str, offset: int) -> None:
        began = time.perf_counter()
        for i in range(repeats):
            transaction(offset + i)
        print(f"  {label:<58}{(time.perf_counter() - began) / repeats * 1e6:>10.1f} us")

    print(f"\nA SQLite write transaction, {repeats} times (switch interval "
          f"{sys.getswitchinterval() * 1000:g} ms):")
    timed("alone", 0)
    stop = threading.Event()

    def busy() -> None:
        count = 0
        while not stop.is_set():
            count += 1

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    try:
        timed("beside one thread that keeps the GIL busy", repeats)
    finally:
        stop.set()
        thread.join()
    conn.close()


def main() -> int:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="orch-profile-pack-"))
    cleanups = []
    server = start_fake_server(1024)
    try:
        from tests.fakes.llm_server import FakeLLMClient

        with FakeLLMClient(server.url) as fake:
            fake.configure("sim", latency_ms=args.latency_ms)
            catalogue = tmp / "models.yaml"
            write_catalogue(catalogue, server.url, fallback=False)
            database = args.database or f"sqlite:///{tmp / 'profile.db'}"
            if database.startswith("postgresql"):
                from bench.overhead import isolated_postgres

                database, drop = isolated_postgres(database)
                cleanups.append(drop)
            env = perf.environment(tmp, catalogue, database, server.url)
            out = str(tmp / "worker")
            env.update({"ORCH_IMPORTS": f"{perf.ENGINE_IMPORTS},bench.profile_hook",
                        "ORCH_PACK_CONCURRENCY": "1", OUT_ENV: out})
            perf.flush_bench_db(perf.REDIS_URL)
            import redis

            from bench.perf_workflows import LLM_ONE_QUEUE
            from orchestration import default_orchestrator

            orchestrator = default_orchestrator()
            orchestrator.store.ensure_schema()
            reader = perf._reader()
            client = redis.Redis.from_url(perf.REDIS_URL)
            with running_worker("profile-pack", "orchestration", LLM_ONE_QUEUE, "solo", 1,
                                env, tmp, make_ping(orchestrator.celery)):
                perf.engine_calls_runs(reader, 100, args.workflow)  # warm-up
                wall = perf.engine_calls_runs(reader, args.runs, args.workflow)
                pack = orchestrator.settings.pack_size  # messages: the runs in packs
                client.set(KEY, -(-args.runs // pack))
                time.sleep(0.2)  # the worker's watcher polls every 20 ms
                perf.engine_calls_runs(reader, args.runs, args.workflow)
                deadline = time.monotonic() + 30
                while not Path(f"{out}.sql.json").exists():
                    if time.monotonic() > deadline:
                        raise SystemExit("the worker wrote no profile")
                    time.sleep(0.05)
            reader.dispose()
            report(out, args.runs, wall, args.top)
            if args.gil_convoy:
                gil_convoy(tmp)
        return 0
    finally:
        stop_fake_server(server)
        for cleanup in cleanups:
            cleanup()
        perf.flush_bench_db(perf.REDIS_URL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
