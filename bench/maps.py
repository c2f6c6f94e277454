"""Map steps against raw Celery: 1,000 no-op elements, measured in one run on the same broker.

    python bench/maps.py [--elements 1000] [--rounds 5] [--pool prefork|threads]
                         [--concurrency 2] [--big 10000] [--wait-for-db 600] [--keep-logs]

Three systems, each timed as client wall time (``time.perf_counter()``) around submit and
wait of one whole fan-out of ``--elements`` no-op elements:

- engine: ``bench_map.submit(items=[...])`` then ``handle.wait()`` (the workflow of
  ``bench/map_workflows.py``: one step ``@wf.task(map="items")`` returning its element).
  The step's message is replaced by a chord over at most 64 chunks
  (``orchestration.execute.maps.chunk_ranges``), collected by ``orchestration.map_collect``;
- raw group: ``group(noop.s(i) for i in items).apply_async().get()``: one message and
  one result per element;
- raw chord: ``chord(group, merge.s())``: the like-for-like shape (the engine's map ends
  with a collector).

Raw Celery is ``bench/raw_celery.py`` (the engine's Celery config dict, same Redis DB 14
broker and result backend; the report prints any setting that differs). Each round starts
one raw worker (group and chord, in alternating order) and one engine worker with the same
``-P``/``-c``; rounds alternate which system goes first, so machine noise hits both.
Every phase starts with an untimed warm-up fan-out. The report prints medians and
min-max per system, the ratios engine/raw group and engine/raw chord, and CPU per
fan-out of this client and of the worker's processes.

Then one ``--big``-element map (default 10,000; 0 skips it) runs on a fresh engine worker
with the publish log of ``bench/map_workflows.py`` on: every task message the client and
the worker published for that run (``before_task_publish``: task, queue, JSON size of
body and headers), against the chunks ``chunk_ranges`` plans. That shows the chunking:
64 chunk messages of ~157 elements, not 10,000 messages.

Redis DB 14 only (never 15, the tests'): the bench waits until no other process is
connected to DB 14 (another bench flushing it would corrupt both), then flushes it at
start and at the end (unless another process connected meanwhile); if someone else
flushes it mid-bench, the bench stops at once and says so. Results DB: SQLite in a temp dir.
Workers as in ``bench/overhead.py`` (its helpers are reused): own session, readiness by
``control.ping`` polled until a deadline, SIGTERM then SIGKILL of the session, also on
Ctrl-C/SIGTERM of the bench.
Exits 0 when every fan-out returned the expected results.
"""

from __future__ import annotations

import _thread
import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from celery.exceptions import TimeoutError as CeleryTimeout  # noqa: E402

from bench.overhead import (  # noqa: E402 - needs the sys.path fix
    FORBIDDEN_REDIS_DB,
    REDIS_URL,
    WAIT_POLL,
    RunFailed,
    _dispose_default_store,
    _redact,
    _revision,
    conf_diff,
    flush_bench_db,
    machine_lines,
    make_ping,
    ms,
    running_worker,
    session_cpu,
    set_environment,
    summary,
)
from orchestration.errors import WaitTimeout  # noqa: E402

SYSTEMS = ("engine", "group", "chord")
LABEL = {"engine": "engine map", "group": "raw group", "chord": "raw chord"}
WARMUP_ELEMENTS = 64
RUN_TIMEOUT = 120.0  # one 1,000-element fan-out
BIG_TIMEOUT = 600.0  # the 10,000-element map
DB_FREE_POLL = 2.0


@dataclass
class Samples:
    """Per fan-out figures of one system, across rounds (seconds)."""

    wall: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)  # engine: DB created -> finished
    client_cpu: list[float] = field(default_factory=list)
    worker_cpu: list[float] = field(default_factory=list)


# -- one fan-out ------------------------------------------------------------------------------


def run_engine(items: list[int]) -> tuple[float, float | None, str | None]:
    """One map run: (client wall seconds, DB created->finished seconds, run id)."""
    from bench.map_workflows import bench_map, final_output
    from orchestration import RunStatus

    began = time.perf_counter()
    handle = bench_map.submit(items=items)
    result = handle.wait(timeout=RUN_TIMEOUT if len(items) <= 1000 else BIG_TIMEOUT,
                         poll=WAIT_POLL)
    wall = time.perf_counter() - began
    output = result.outputs.get(final_output())
    if result.status is not RunStatus.SUCCEEDED or output != items:
        shown = output if not isinstance(output, list) else f"a list of {len(output)}"
        raise RunFailed(f"engine map run {result.run_id}: {result.status.value}, output "
                        f"{shown} (expected the {len(items)} items); error: {result.error}")
    return wall, result.duration_s, result.run_id


def run_group(items: list[int]) -> tuple[float, float | None, str | None]:
    from celery import group

    from bench.raw_celery import noop

    began = time.perf_counter()
    result = group(noop.s(i) for i in items).apply_async()
    values = result.get(timeout=RUN_TIMEOUT)
    wall = time.perf_counter() - began
    if values != items:
        raise RunFailed(f"raw group of {len(items)}: wrong results")
    result.forget()
    return wall, None, None


def run_chord(items: list[int]) -> tuple[float, float | None, str | None]:
    from celery import chord

    from bench.raw_celery import merge, noop

    began = time.perf_counter()
    result = chord([noop.s(i) for i in items], merge.s()).apply_async()
    value = result.get(timeout=RUN_TIMEOUT)
    wall = time.perf_counter() - began
    if value != sum(items):
        raise RunFailed(f"raw chord of {len(items)}: got {value!r}, expected {sum(items)}")
    return wall, None, None


RUN: dict[str, Callable[[list[int]], tuple[float, float | None, str | None]]] = {
    "engine": run_engine, "group": run_group, "chord": run_chord}


def timed(system: str, items: list[int], session: int, into: Samples) -> None:
    client0, worker0 = time.process_time(), session_cpu(session)
    wall, server, _ = RUN[system](items)
    into.client_cpu.append(time.process_time() - client0)
    into.worker_cpu.append(session_cpu(session) - worker0)
    into.wall.append(wall)
    if server is not None:
        into.server.append(server)


# -- rounds -----------------------------------------------------------------------------------


def measure_rounds(args: argparse.Namespace, env: dict[str, str], tmp: Path,
                   workers: dict[str, tuple[str, str, Callable[[str], bool]]]
                   ) -> dict[str, Samples]:
    results = {system: Samples() for system in SYSTEMS}
    phases = {"raw": ("group", "chord"), "engine": ("engine",)}
    for number in range(args.rounds):
        order = ("raw", "engine") if number % 2 == 0 else ("engine", "raw")
        for phase in order:
            module, queue, ping = workers[phase]
            systems = phases[phase] if number % 2 == 0 else phases[phase][::-1]
            print(f"round {number + 1}/{args.rounds}: {phase:<6} "
                  f"{' + '.join(systems)} of {args.elements} ...", file=sys.stderr, flush=True)
            with running_worker(phase, module, queue, args.pool, args.concurrency, env, tmp,
                                ping) as worker:
                for system in systems:  # warm-up: pool children, connections, imports
                    RUN[system](list(range(WARMUP_ELEMENTS)))
                for system in systems:
                    base = (number + 1) * 1_000_000
                    timed(system, list(range(base, base + args.elements)),
                          worker.process.pid, results[system])
    return results


# -- the big map, with its publish log --------------------------------------------------------


@dataclass
class BigRun:
    elements: int
    wall: float
    server: float | None
    worker_cpu: float
    planned: list[tuple[int, int]]
    published: list[dict[str, Any]]
    client_pid: int


def measure_big(args: argparse.Namespace, env: dict[str, str], tmp: Path,
                engine: tuple[str, str, Callable[[str], bool]]) -> BigRun:
    import redis

    from bench.map_workflows import PUBLISH_LOG_ENV, bench_map
    from orchestration.execute.maps import chunk_ranges

    key = f"bench.maps.published.{os.getpid()}"
    module, queue, ping = engine
    print(f"big map: {args.big} elements, publish log on ...", file=sys.stderr, flush=True)
    client = redis.Redis.from_url(REDIS_URL)
    os.environ[PUBLISH_LOG_ENV] = key
    try:
        with running_worker("engine-big", module, queue, args.pool, args.concurrency,
                            {**env, PUBLISH_LOG_ENV: key}, tmp, ping) as worker:
            run_engine(list(range(WARMUP_ELEMENTS)))  # warm-up (its entries are filtered out)
            cpu0 = session_cpu(worker.process.pid)
            wall, server, run_id = run_engine(list(range(args.big)))
            worker_cpu = session_cpu(worker.process.pid) - cpu0
        # The run is finished once its collector has written it: nothing is published after.
        published = [entry for entry in map(json.loads, client.lrange(key, 0, -1))
                     if entry["run"] == run_id]
    finally:
        os.environ.pop(PUBLISH_LOG_ENV, None)
        client.delete(key)
        client.close()
    spec = bench_map.validate().steps["noop"].spec
    return BigRun(args.big, wall, server, worker_cpu, chunk_ranges(args.big, spec.chunk_size),
                  published, os.getpid())


# -- report -----------------------------------------------------------------------------------


def report(args: argparse.Namespace, results: dict[str, Samples], big: BigRun | None,
           env_info: dict[str, str], elapsed: float) -> None:
    import celery
    import kombu

    from orchestration.execute.maps import DEFAULT_CHUNKS, chunk_ranges

    chunks = chunk_ranges(args.elements, None)
    print()
    print(f"Map of {args.elements} no-op elements: engine vs raw Celery (wall time of one "
          "whole fan-out, client side)")
    print(*machine_lines(env_info), sep="\n")
    print(f"  python  : {platform.python_version()}  celery {celery.__version__}  "
          f"kombu {kombu.__version__}")
    print(f"  broker  : {env_info['broker']} (result backend the same); config.celery "
          "settings for both")
    print(f"  settings: raw vs engine Celery conf differ only in: {env_info['conf_diff']}")
    print(f"  workers : -P {args.pool} -c {args.concurrency}, a fresh one per phase; "
          f"{args.rounds} alternating rounds, one timed fan-out per system per round, "
          f"after a {WARMUP_ELEMENTS}-element warm-up")
    print(f"  results : DB {env_info['database']}; engine waits with "
          f"handle.wait(poll={WAIT_POLL}) (DB polling, up to every 50 ms after 0.1 s); "
          "raw with .get() (Redis pub/sub)")
    print(f"  engine  : 1 message from the client, then a chord of {len(chunks)} chunk "
          f"messages (<= {DEFAULT_CHUNKS}; {chunks[0][1] - chunks[0][0]} elements each) "
          "+ 1 collector")
    print(f"  raw     : group = {args.elements} messages and results; chord = the same + "
          "1 callback (merge)")
    print()
    header = (f"{'system':<14}{'n':>3}{'median':>10}{'min-max':>19}{'per element':>14}"
              f"{'DB created->finished':>22}{'CPU/fan-out client+worker':>28}")
    print(header + "   (ms)")
    print("-" * len(header))
    for system in SYSTEMS:
        samples = results[system]
        s = summary(samples.wall)
        server = (ms(statistics.median(samples.server)) + " (median)"
                  if samples.server else "-")
        cpu = (f"{ms(statistics.median(samples.client_cpu))} + "
               f"{ms(statistics.median(samples.worker_cpu))}")
        print(f"{LABEL[system]:<14}{s['n']:>3}{ms(s['median']):>10}"
              f"{ms(s['min']) + '-' + ms(s['max']):>19}"
              f"{s['median'] / args.elements * 1e6:>11.0f} us{server:>22}{cpu:>28}")
    engine = summary(results["engine"].wall)
    for raw in ("group", "chord"):
        other = summary(results[raw].wall)
        print(f"ratio engine/{LABEL[raw]:<10}: median {engine['median'] / other['median']:.2f}x,"
              f" min {engine['min'] / other['min']:.2f}x")
    if big is not None:
        report_big(big)
    print(f"\nwhole bench: {elapsed:.1f} s")


def report_big(big: BigRun) -> None:
    mine = big.published
    sizes = [end - start for start, end in big.planned]
    print()
    print(f"Map of {big.elements} elements (one run, fresh worker, publish log on): wall "
          f"{big.wall:.2f} s, DB created->finished "
          f"{big.server:.2f} s, worker CPU {big.worker_cpu:.2f} s"
          if big.server is not None else f"Map of {big.elements}: wall {big.wall:.2f} s")
    print(f"  planned by chunk_ranges: {len(big.planned)} chunks of "
          f"{min(sizes)}-{max(sizes)} elements")
    print(f"  task messages published for the run: {len(mine)}")
    by_task: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in mine:
        side = "client" if entry["pid"] == big.client_pid else "worker"
        by_task.setdefault((str(entry["task"]), side), []).append(entry)
    header = (f"    {'task':<28}{'from':<8}{'count':>6}{'body bytes min/median/max':>28}"
              f"{'of which embed':>16}{'body total':>12}{'headers':>9}")
    print(header)
    for (task, side), entries in sorted(by_task.items(), key=lambda kv: -len(kv[1])):
        body = sorted(e["body"] for e in entries)
        headers = statistics.median(e["headers"] for e in entries)
        embed = statistics.median(e["embed"] for e in entries)
        spread = f"{body[0]}/{int(statistics.median(body))}/{body[-1]}"
        print(f"    {task:<28}{side:<8}{len(entries):>6}{spread:>28}{embed:>16.0f}"
              f"{_size(sum(body)):>12}{headers:>9.0f}")
    chunk_messages = [e for e in mine
                      if e["task"] == "bench_map.noop" and e["pid"] != big.client_pid]
    verdict = ("matches" if len(chunk_messages) == len(big.planned) else "DIFFERS from")
    print(f"  chunk messages from the worker: {len(chunk_messages)} ({verdict} the plan); "
          f"a raw group would publish {big.elements} messages")
    print("  body = JSON of (args, kwargs, embed) as before_task_publish sees it (embed: "
          "callbacks, chain and the chord body,\n  i.e. the collector's signature, which "
          "Celery copies into every header message); headers median; on the wire\n  kombu's "
          "Redis transport adds headers and properties and base64-encodes the body (x4/3)")


def _size(count: int) -> str:
    return f"{count / 1024:.1f} KiB" if count >= 1024 else f"{count} B"


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elements", type=int, default=1000, help="elements per fan-out")
    parser.add_argument("--rounds", type=int, default=5, help="alternating raw/engine rounds")
    parser.add_argument("--pool", choices=("prefork", "threads", "solo"), default="prefork")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--big", type=int, default=10_000,
                        help="elements of the instrumented map run at the end (0: skip it)")
    parser.add_argument("--wait-for-db", type=float, default=600.0, metavar="SECONDS",
                        help="how long to wait for other clients of Redis DB 14 to go")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir (worker logs)")
    args = parser.parse_args(argv)
    if args.elements < 1 or args.rounds < 1 or args.big < 0:
        parser.error("--elements and --rounds must be >= 1, --big >= 0")
    args.experiment = None  # bench.overhead.set_environment reads it: no engine patches here
    return args


def _own_ports() -> set[int]:
    """Local TCP ports of this process's sockets (from /proc), to tell our Redis clients."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        with suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def finish_bench(url: str, tmp: str | Path, keep_logs: bool) -> None:
    """A bench's end: flush its Redis DB unless another client uses it (a bench started
    meanwhile, which a flush would break), then keep or remove its logs."""
    others = other_clients(url)
    if others:
        print(f"not flushing {url}: {others} other client(s) connected", file=sys.stderr)
    else:
        flush_bench_db(url)
    if keep_logs:
        print(f"logs kept in {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def other_clients(url: str) -> int:
    """Clients of the bench's Redis DB that are not this process (e.g. another bench)."""
    import redis

    db = int((urlparse(url).path or "/0").lstrip("/") or 0)
    client = redis.Redis.from_url(url)
    try:
        listed = client.client_list()
        mine = _own_ports()
    finally:
        client.close()
    return sum(1 for c in listed if int(c.get("db", -1)) == db
               and int(c.get("addr", ":0").rsplit(":", 1)[1]) not in mine)


def wait_for_free_db(url: str, timeout: float) -> None:
    """Wait until no other process is connected to the bench's Redis DB.

    Every bench flushes DB 14: another one running would lose its queues to our flush,
    and we to its. Polls ``CLIENT LIST`` until a deadline (a client idle forever shows
    there too: then this gives up, naming the count).
    """
    deadline = time.monotonic() + timeout
    told = False
    while True:
        others = other_clients(url)
        if not others:
            return
        if time.monotonic() >= deadline:
            raise SystemExit(f"Redis {url} still has {others} other client(s) after "
                             f"{timeout:g} s (another bench?); not flushing it")
        if not told:
            print(f"waiting for {others} other client(s) of Redis {url} to go "
                  f"(another bench?), up to {timeout:g} s ...", file=sys.stderr, flush=True)
            told = True
        time.sleep(DB_FREE_POLL)


class FlushWatch:
    """Notices another process flushing the bench's Redis DB (and so our queued messages).

    A key only a flush removes is checked every second from a daemon thread; when it is
    gone the main thread gets a KeyboardInterrupt, which stops the workers on its way out,
    instead of waiting for a fan-out whose messages no longer exist.
    """

    def __init__(self, url: str) -> None:
        import redis

        self.key = f"bench.maps.sentinel.{os.getpid()}"
        self.client = redis.Redis.from_url(url)
        self.flushed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="flush-watch", daemon=True)

    def start(self) -> None:
        self.client.set(self.key, "1")
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            try:
                present = self.client.exists(self.key)
            except Exception:  # Redis hiccup: look again
                continue
            if not present:
                self.flushed = True
                _thread.interrupt_main()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (like Ctrl-C) unwinds through the finally blocks that stop the workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if int((urlparse(REDIS_URL).path or "/0").lstrip("/") or 0) == FORBIDDEN_REDIS_DB:
        raise SystemExit("refusing to use Redis DB 15 (the tests' database)")
    wait_for_free_db(REDIS_URL, args.wait_for_db)
    began = time.monotonic()
    load_start = f"{os.getloadavg()[0]:.2f}"
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-maps-"))
    flush_bench_db(REDIS_URL)
    watch = FlushWatch(REDIS_URL)
    watch.start()
    try:
        database = f"sqlite:///{tmp / 'bench.db'}"
        env = set_environment(args, database)
        os.environ["ORCH_IMPORTS"] = env["ORCH_IMPORTS"] = "bench.map_workflows"

        import bench.map_workflows  # noqa: F401 - registers the workflow (ORCH_* set above)
        from bench.map_workflows import QUEUE as ENGINE_QUEUE
        from bench.raw_celery import QUEUE as RAW_QUEUE
        from bench.raw_celery import raw
        from orchestration import default_orchestrator

        orchestrator = default_orchestrator()
        orchestrator.store.ensure_schema()  # migrate once, before any worker starts
        workers = {"raw": ("bench.raw_celery", RAW_QUEUE, make_ping(raw)),
                   "engine": ("orchestration", ENGINE_QUEUE, make_ping(orchestrator.celery))}
        results = measure_rounds(args, env, tmp, workers)
        big = measure_big(args, env, tmp, workers["engine"]) if args.big else None
        env_info = {"broker": REDIS_URL, "database": _redact(database),
                    "load_start": load_start, "revision": _revision(),
                    "conf_diff": conf_diff()}
        report(args, results, big, env_info, time.monotonic() - began)
        return 0
    except (RunFailed, CeleryTimeout, WaitTimeout) as exc:
        print(f"bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if not watch.flushed:
            raise
        print(f"bench stopped: Redis {REDIS_URL} was flushed by another process (another "
              "bench?), and our queued messages with it. Run again when it is free.",
              file=sys.stderr)
        return 1
    finally:
        watch.stop()
        _dispose_default_store()
        finish_bench(REDIS_URL, tmp, args.keep_logs)


if __name__ == "__main__":
    sys.exit(main())
