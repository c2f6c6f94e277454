"""The issue's performance targets beyond one run's latency: engine vs raw Celery, one run.

    python bench/perf.py [--rounds 2] [--quick] [--overhead-json FILE] [--no-postgres]
                         [--sections dag,calls,submit,embedded] [--no-embedded]
                         [--profile auto|off] [--diagnose] [--keep-logs]

Every row runs raw Celery and the engine side by side, with the same broker and result
backend (Redis DB 14, ``config.celery.celery_config`` for both), the same pool and
concurrency, on a fresh worker per phase (helpers of ``bench/overhead.py``: own session,
ready when it answers ``control.ping``, SIGTERM then SIGKILL of its session). Raw and
engine phases alternate over ``--rounds`` so machine noise hits both. Results DB: SQLite
in a temp dir (submit rates also on PostgreSQL, in a schema of their own).

Rows (targets from the issue; ratios engine / raw Celery):

- fan-out 100 + join, wall time of one fan-out (prefork -c 2): the engine as a map
  (``perf_fanout``: chunked, then a join step) and as 100 declared branch steps + a join
  (``perf_fanout_static``); raw ``chord([noop] * 100, merge)``. Target ratio <= 1.0.
- throughput: 500 4-step runs submitted at once (engine ``submit_many``; raw 500 chains
  through one producer), runs/s from the first submit until the client sees all done
  (both polled every 20 ms: the engine the results DB, raw the result keys). >= 1.0.
- 1,000 model calls of 100 ms against the fake LLM server (``tests/fakes/llm_server.py``
  in its own process): one run with a map (``chunk_size=250, concurrency=50``, ``-P
  threads -c 4``: 200 in flight) and 1,000 one-call runs (``-P threads -c 200``), each
  call ``ctx.llm.complete``; raw: 1,000 tasks each making the httpx call on ``-P threads
  -c 200`` (a group, and 1,000 single ``apply_async``). Targets (the issue's): the map
  >= 80% of the ideal ``1000 x 0.1 s / 200 = 0.5 s``, i.e. wall <= 0.625 s; the one-call
  runs <= 1.0 s. Each row runs twice on the engine: plain steps calling
  ``ctx.llm.complete``, and ``async def`` steps awaiting ``ctx.llm.acomplete``. A floor
  row makes the same 1,000 calls from one event loop in the bench process (the engine's
  async HTTP client, no engine, no Celery): the best this fake server and machine allow.
- submit rate with the run row written (no worker running; queues purged after):
  1,000 single ``submit`` (target >= 1,000/s) and ``submit_many`` of 5,000 inline and
  ``defer=True`` (target >= 5,000 runs/s), SQLite and PostgreSQL; raw: the same number
  of ``chain.apply_async()`` (single: each on its own; bulk: one producer).
- memory: the producer's RSS (``/proc/self/status`` VmRSS, after a warm-up and
  ``gc.collect()``) over 10,000 single submits and 10,000 runs by ``submit_many``
  (target < 5% growth); the worker's RSS (sum over its session, prefork parent and
  children) over 10,000 steps = 2,500 4-step runs, after the throughput rows warmed it
  (target < 10%). Raw Celery alongside for reference.

- 10,000 concurrent ``async def`` steps waiting 1 s on one worker process
  (``bench/async_workflows.py``): one run, a map of 10,000 elements over ``async def
  wait(x): await asyncio.sleep(1)``, 4 chunks of 2,500 with as much ``concurrency`` on
  ``-P threads -c 4``: every element waits at once, as a task on the process's event loop.
  Wall time from submit to result, and the worker session's peak VmRSS (sampled every
  20 ms). Targets: <= 1.5 s and < 500 MB. Raw Celery for reference: ``time.sleep(1)``
  tasks on ``-P threads -c 200`` (a thread per waiting task), 1,000 of them, the wall
  scaled x10 to 10,000 (about 50 s unscaled).

The embedded default (no broker; in-process worker, 8 threads) runs the same shapes in a
subprocess, for reference (not targeted), and one targeted row of its own: the
stateful-agent shape (``perf_agent``: three parallel steps, a ``when=`` branch, a join)
against a diamond (``perf_diamond``), both on the embedded default in that subprocess,
runs alternating (target: agent <= 2.0x the diamond). ``--overhead-json`` folds in the linear and
diamond latency rows of ``bench/overhead.py --dump`` so the summary covers every row.
With ``--profile auto`` (the default, if py-spy is in the venv) each engine worker of a
targeted row is sampled once more (py-spy ``--gil``, an extra, untimed pass) and the
profile is printed for the rows that miss their target; submit rates get a cProfile.
``--diagnose`` adds engine rows whose steps make the HTTP call with plain httpx, or with
``http.client`` (one connection per thread), instead of ``ctx.llm``. Redis DB 14 only:
the bench waits until no other client uses it, flushes it at start and end, and stops if
another process flushes it meanwhile.
Exits 0 when every run finished as expected (a missed target is reported, not an error).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.fake_llm_call import FAKE_URL_ENV, KEY_ENV, http_call  # noqa: E402
from bench.maps import FlushWatch, finish_bench, wait_for_free_db  # noqa: E402
from bench.overhead import (  # noqa: E402 - needs the sys.path fix
    FORBIDDEN_REDIS_DB,
    PYTHON,
    REDIS_URL,
    WAIT_POLL,
    RunFailed,
    _dispose_default_store,
    _revision,
    child_env,
    flush_bench_db,
    isolated_postgres,
    load_figures,
    machine,
    make_ping,
    run_child_json,
    running_worker,
    session_cpu,
)
from bench.providers import (  # noqa: E402
    KEY,
    PY_SPY,
    print_profile,
    start_fake_server,
    stop_fake_server,
    write_catalogue,
)

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ENGINE_IMPORTS = "bench.perf_workflows"
RAW_LLM_QUEUE = "bench.perf.raw_llm"
RAW_LLM_TASK = "bench.perf.raw_llm.ask"
LATENCY_MS = 100.0
CALLS = 1000
CONCURRENCY = 200
IDEAL = CALLS * LATENCY_MS / 1000 / CONCURRENCY  # 0.5 s
FANOUT = 100
TP_RUNS = 500
SUBMIT_SINGLE = 1000
SUBMIT_BULK = 5000
MEMORY_SUBMITS = 10_000
MEMORY_STEPS = 10_000
POLL = 0.02  # the throughput and one-call rows: both systems polled this often
FANOUT_MAX_POLL = 0.005
DEADLINE = 180.0
SPY_RATE = 250
SPY_FANOUTS = 10  # fan-outs per profiled pass
AGENT_SAMPLES, AGENT_BATCH = 10, 6  # embedded agent vs diamond: samples x runs per sample
# dag: fan-out, throughput, worker memory; async: 10,000 async def steps on one process
SECTIONS = ("dag", "calls", "submit", "embedded", "async")


# -- the raw Celery reference for model calls (its worker: -A bench.perf:raw_llm) ------------


def _raw_app(name: str, queue: str) -> Any:
    from celery import Celery

    from config.celery import celery_config
    from orchestration.core.settings import Settings

    broker = os.environ.get("ORCH_BROKER_URL") or REDIS_URL
    settings = Settings(broker_url=broker, imports=[],
                        result_backend=os.environ.get("ORCH_RESULT_BACKEND") or None)
    config = celery_config(settings)  # the engine's settings: json, acks_late, prefetch 1, ...
    config["imports"] = []
    config["task_default_queue"] = queue
    app = Celery(name, set_as_current=False)
    app.conf.update(config)
    return app


raw_llm = _raw_app("raw_perf_llm", RAW_LLM_QUEUE)


@raw_llm.task(name=RAW_LLM_TASK, queue=RAW_LLM_QUEUE, acks_late=True)
def raw_ask(prompt: str) -> str:
    """One chat completion, as a plain Celery task makes it (bench/fake_llm_call.py)."""
    return http_call(prompt)


# -- measurements -------------------------------------------------------------------------------


@dataclass
class Series:
    """Samples of one system on one row, plus what was seen around them."""

    values: list[float] = field(default_factory=list)
    worker_cpu: list[float] = field(default_factory=list)  # seconds per sample
    in_flight: list[int] = field(default_factory=list)  # peak calls at the fake
    extra: dict[str, Any] = field(default_factory=dict)

    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")


Results = dict[str, dict[str, Series]]  # row key -> system -> series


def series(results: Results, row: str, system: str) -> Series:
    return results.setdefault(row, {}).setdefault(system, Series())


def _reader() -> Any:
    from sqlalchemy import create_engine

    return create_engine(os.environ["ORCH_DATABASE_URL"])


def _unfinished(reader: Any, workflow: str) -> int:
    from sqlalchemy import func, select

    from orchestration.core.status import TERMINAL_RUN_STATUSES, RunStatus
    from orchestration.store.models import RunRow

    open_statuses = [s.value for s in RunStatus if s not in TERMINAL_RUN_STATUSES]
    query = select(func.count()).select_from(RunRow).where(
        RunRow.status.in_(open_statuses), RunRow.workflow == workflow)
    with reader.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _statuses(reader: Any, run_ids: list[str]) -> collections.Counter[str]:
    from sqlalchemy import select

    from orchestration.store.models import RunRow

    counts: collections.Counter[str] = collections.Counter()
    with reader.connect() as conn:
        for start in range(0, len(run_ids), 500):
            part = run_ids[start:start + 500]
            for (status,) in conn.execute(select(RunRow.status).where(RunRow.id.in_(part))):
                counts[status] += 1
    return counts


def wait_engine_runs(reader: Any, workflow: str, run_ids: list[str]) -> None:
    """Poll (every POLL s) until no run of ``workflow`` is open; check all succeeded."""
    deadline = time.monotonic() + DEADLINE
    while _unfinished(reader, workflow):
        if time.monotonic() > deadline:
            raise RunFailed(f"{workflow}: runs still open after {DEADLINE:g} s")
        time.sleep(POLL)
    counts = _statuses(reader, run_ids)
    if counts.get("succeeded", 0) != len(run_ids):
        raise RunFailed(f"{workflow}: {dict(counts)} of {len(run_ids)} runs")


def wait_raw_results(app: Any, task_ids: list[str], expected: Callable[[int], Any]) -> None:
    """Poll the result keys (MGET every POLL s) until all are stored; check the values."""
    backend = app.backend
    client = backend.client
    remaining = dict(enumerate(task_ids))
    deadline = time.monotonic() + DEADLINE
    while remaining:
        indexes = list(remaining)
        values = client.mget([backend.get_key_for_task(remaining[i]) for i in indexes])
        for index, raw in zip(indexes, values, strict=True):
            if raw is None:
                continue
            meta = backend.decode_result(raw)
            if meta["status"] != "SUCCESS" or meta["result"] != expected(index):
                raise RunFailed(f"raw task {remaining[index]}: {meta['status']} "
                                f"{meta['result']!r}, expected {expected(index)!r}")
            del remaining[index]
        if remaining:
            if time.monotonic() > deadline:
                raise RunFailed(f"raw: {len(remaining)} results missing after {DEADLINE:g} s")
            time.sleep(POLL)


def purge_queues() -> None:
    """Drop every queued bench message (no worker is running when this is called)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [key for pattern in ("bench.perf*", "bench.raw*")
                for key in client.scan_iter(match=pattern, count=1000)]
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def session_rss(session: int) -> int:
    """Resident set size (bytes) summed over the live processes of a session."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != session:
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def self_rss() -> dict[str, int]:
    """VmRSS and RssAnon of this process (bytes)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


# -- py-spy ---------------------------------------------------------------------------------


@contextmanager
def spied(pid: int, tmp: Path, label: str, enabled: bool, subprocesses: bool,
          into: dict[str, Any]) -> Iterator[None]:
    """py-spy ``--gil`` on a worker for the body; the stacks land in ``into[label]``."""
    if not enabled:
        yield
        return
    out = tmp / f"{label}.pyspy.txt"
    command = [str(PY_SPY), "record", "--pid", str(pid), "--nonblocking", "--gil", "--rate",
               str(SPY_RATE), "--format", "raw", "--output", str(out)]
    if subprocesses:
        command.append("--subprocesses")
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=True)
    time.sleep(0.3)  # py-spy attaches
    try:
        yield
    finally:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(spy.pid, signal.SIGKILL)
            _, err = spy.communicate()
        stacks = []
        if out.exists():
            for line in out.read_text(errors="replace").splitlines():
                stack, _, count = line.rpartition(" ")
                if stack and count.isdigit():
                    stacks.append((stack.split(";"), int(count)))
        else:
            print(f"  py-spy wrote nothing for {label}: "
                  f"{err.decode(errors='replace')[-300:]}", file=sys.stderr)
        into[label] = stacks


# -- section A: fan-out, throughput, worker memory (prefork -c 2, no-op steps) ----------------


def raw_fanout() -> float:
    from celery import chord

    from bench.raw_celery import merge, noop

    began = time.perf_counter()
    value = chord([noop.s(i) for i in range(FANOUT)], merge.s()).apply_async().get(timeout=60)
    wall = time.perf_counter() - began
    if value != sum(range(FANOUT)):
        raise RunFailed(f"raw chord: got {value!r}")
    return wall


def engine_fanout(shape: str, x: int = 0, db: list[float] | None = None) -> float:
    """One fan-out; its DB duration (created -> finished) is appended to ``db``."""
    from bench import perf_workflows as pw
    from orchestration import RunStatus

    began = time.perf_counter()
    if shape == "map":
        handle = pw.perf_fanout.submit(items=list(range(FANOUT)))
        output, expected = "join", sum(range(FANOUT))
    else:
        handle = pw.perf_fanout_static.submit(x=x)
        output, expected = "join_all", pw.fanout_static_expected(x)
    # Polled every 2-5 ms (RunHandle.wait's default grows to 50 ms after 0.1 s, which
    # would add up to 50 ms to a 300 ms fan-out; raw's .get() is told by pub/sub).
    result = handle.wait(timeout=60, poll=WAIT_POLL, max_poll=FANOUT_MAX_POLL)
    wall = time.perf_counter() - began
    if db is not None and result.duration_s is not None:
        db.append(result.duration_s)
    if result.status is not RunStatus.SUCCEEDED or result.outputs.get(output) != expected:
        raise RunFailed(f"engine fan-out {shape} run {result.run_id}: {result.status.value}, "
                        f"{result.outputs.get(output)!r}; {result.error}")
    return wall


def raw_throughput(runs: int, base: int) -> float:
    from bench.raw_celery import linear_canvas, raw

    began = time.perf_counter()
    with raw.producer_or_acquire() as producer:
        ids = [linear_canvas(base + i).apply_async(producer=producer).id for i in range(runs)]
    wait_raw_results(raw, ids, lambda i: base + i)
    return time.perf_counter() - began


def engine_throughput(reader: Any, runs: int, base: int) -> float:
    from bench import perf_workflows as pw

    began = time.perf_counter()
    handles = pw.perf_linear.submit_many([{"x": base + i} for i in range(runs)])
    wait_engine_runs(reader, pw.perf_linear.name, [h.run_id for h in handles])
    return time.perf_counter() - began


def measure_dag(args: argparse.Namespace, env: dict[str, str], tmp: Path,
                results: Results, profiles: dict[str, Any]) -> None:
    from bench.perf_workflows import QUEUE as ENGINE_QUEUE
    from bench.raw_celery import QUEUE as RAW_QUEUE
    from bench.raw_celery import raw
    from orchestration import default_orchestrator

    reader = _reader()
    apps = {"raw": ("bench.raw_celery", RAW_QUEUE, make_ping(raw)),
            "engine": ("orchestration", ENGINE_QUEUE, make_ping(default_orchestrator().celery))}
    try:
        for number in range(args.rounds):
            last = number == args.rounds - 1
            order = ("raw", "engine") if number % 2 == 0 else ("engine", "raw")
            for system in order:
                module, queue, ping = apps[system]
                print(f"fan-out/throughput round {number + 1}/{args.rounds}: {system} ...",
                      file=sys.stderr, flush=True)
                with running_worker(f"perf-{system}", module, queue, "prefork", 2, env, tmp,
                                    ping) as worker:
                    session = worker.process.pid
                    _dag_phase(args, system, session, reader, results, number)
                    if last:
                        _worker_memory(system, session, reader, results)
                        if args.spy and system == "engine":
                            with spied(session, tmp, "throughput", True, True, profiles):
                                engine_throughput(reader, TP_RUNS, 9_000_000)
                            for shape, row in (("map", "fanout"), ("static", "fanout_static")):
                                with spied(session, tmp, row, True, True, profiles):
                                    for index in range(SPY_FANOUTS):
                                        engine_fanout(shape, index)
    finally:
        reader.dispose()


def _dag_phase(args: argparse.Namespace, system: str, session: int, reader: Any,
               results: Results, number: int) -> None:
    # Warm-up: pool children, connections, imports, compiled canvases.
    if system == "raw":
        for _ in range(2):
            raw_fanout()
        raw_throughput(50, 5_000_000)
    else:
        for shape in ("map", "static"):
            for _ in range(2):
                engine_fanout(shape, 5_000_000)
        engine_throughput(reader, 50, 5_000_000)
    shapes = ("raw",) if system == "raw" else ("map", "static")
    for index in range(args.fanouts):
        for shape in shapes if index % 2 == 0 else shapes[::-1]:
            row = "fanout" if shape in ("raw", "map") else "fanout_static"
            cpu0 = session_cpu(session)
            target = series(results, row, system)
            wall = raw_fanout() if shape == "raw" else engine_fanout(
                shape, index, target.extra.setdefault("db", []))
            target.values.append(wall)
            target.worker_cpu.append(session_cpu(session) - cpu0)
            if shape == "raw":  # the same raw chord is the baseline of both fan-out rows
                series(results, "fanout_static", "raw").values.append(wall)
                series(results, "fanout_static", "raw").worker_cpu.append(
                    target.worker_cpu[-1])
    for index in range(args.tp_samples):
        base = (number * args.tp_samples + index) * 10_000
        cpu0 = session_cpu(session)
        wall = (raw_throughput(TP_RUNS, base) if system == "raw"
                else engine_throughput(reader, TP_RUNS, base))
        target = series(results, "throughput", system)
        target.values.append(TP_RUNS / wall)
        target.worker_cpu.append(session_cpu(session) - cpu0)


def _worker_memory(system: str, session: int, reader: Any, results: Results) -> None:
    """Worker RSS over 10,000 steps (2,500 4-step runs, two halves), after the rows above."""
    from bench import perf_workflows as pw
    from bench.raw_celery import linear_canvas, raw

    runs = MEMORY_STEPS // 4
    readings = [session_rss(session)]
    print(f"  worker memory ({system}): {MEMORY_STEPS} steps ...", file=sys.stderr, flush=True)
    for half in range(2):
        base = 20_000_000 + half * runs // 2
        if system == "raw":
            with raw.producer_or_acquire() as producer:
                ids = [linear_canvas(base + i).apply_async(producer=producer).id
                       for i in range(runs // 2)]
            wait_raw_results(raw, ids, lambda i, b=base: b + i)
        else:
            handles = []
            for start in range(0, runs // 2, 500):
                handles += pw.perf_linear.submit_many(
                    [{"x": base + i} for i in range(start, min(runs // 2, start + 500))])
            wait_engine_runs(reader, pw.perf_linear.name, [h.run_id for h in handles])
        readings.append(session_rss(session))
    target = series(results, "memory_worker", system)
    target.values.append((readings[-1] / readings[0] - 1) * 100)
    target.extra["rss"] = readings


# -- section B: model calls against the fake LLM server ----------------------------------------


def _peak_in_flight(stats: dict[str, Any], latency_s: float) -> int:
    times = sorted(t for model in stats.values() for t in model.get("timestamps", []))
    peak, start = 0, 0
    for end, arrived in enumerate(times):
        while times[start] <= arrived - latency_s:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


def _calls_sample(fake: Any, session: int | None, into: Series,
                  run: Callable[[], float]) -> None:
    fake.reset_stats()
    cpu0 = session_cpu(session)
    began = time.time()
    wall = run()
    if session is not None:
        into.worker_cpu.append(session_cpu(session) - cpu0)
    stats = fake.stats()
    requests = sum(model["requests"] for model in stats.values())
    if requests != CALLS:
        raise RunFailed(f"expected {CALLS} requests at the fake, saw {requests}")
    into.values.append(wall)
    into.in_flight.append(_peak_in_flight(stats, LATENCY_MS / 1000))
    arrivals = [t for model in stats.values() for t in model.get("timestamps", [])]
    if arrivals:  # before the first call arrived; after the last one was answered
        into.extra.setdefault("lead", []).append(min(arrivals) - began)
        into.extra.setdefault("tail", []).append(began + wall - max(arrivals) - LATENCY_MS / 1000)


def raw_calls_group(count: int) -> float:
    from celery import group

    began = time.perf_counter()
    values = group(raw_ask.s(f"p{i}") for i in range(count)).apply_async().get(timeout=DEADLINE)
    wall = time.perf_counter() - began
    if values != ["sim"] * count:
        raise RunFailed("raw group of model calls: wrong results")
    return wall


def raw_calls_single(count: int) -> float:
    began = time.perf_counter()
    with raw_llm.producer_or_acquire() as producer:
        ids = [raw_ask.apply_async((f"p{i}",), producer=producer).id for i in range(count)]
    wait_raw_results(raw_llm, ids, lambda _: "sim")
    return time.perf_counter() - began


def floor_calls(count: int) -> float:
    """``count`` POSTs to the fake, ``CONCURRENCY`` at a time, from one event loop in this
    process: no engine, no Celery, the engine's own async HTTP client. What the fake server
    and this machine allow, against which the rows above are judged."""
    import asyncio

    from bench.fake_llm_call import MODEL
    from orchestration.llm.providers.async_http import AsyncKeepAliveClient

    url = f"{os.environ[FAKE_URL_ENV]}/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}"}

    async def calls() -> float:
        client = AsyncKeepAliveClient()
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int) -> int:
            async with slots:
                body = {"model": MODEL, "messages": [{"role": "user", "content": f"p{i}"}]}
                return (await client.post_json(url, body, headers, 60.0)).status

        try:
            began = time.perf_counter()
            statuses = await asyncio.gather(*(one(i) for i in range(count)))
            wall = time.perf_counter() - began
        finally:
            client.close()
        if set(statuses) != {200}:
            raise RunFailed(f"floor calls: statuses {sorted(set(statuses))}")
        return wall

    return asyncio.run(calls())


def engine_calls_map(count: int, workflow: str = "llm_map") -> float:
    from bench import perf_workflows as pw
    from orchestration import RunStatus

    flow = pw.WORKFLOWS[workflow]
    output = next(iter(flow.steps.values())).output
    began = time.perf_counter()
    result = flow.submit(prompts=[f"p{i}" for i in range(count)]).wait(timeout=DEADLINE,
                                                                        poll=WAIT_POLL)
    wall = time.perf_counter() - began
    if result.status is not RunStatus.SUCCEEDED or result.outputs[output] != ["sim"] * count:
        raise RunFailed(f"engine map of model calls {result.run_id}: {result.status.value}; "
                        f"{result.error}")
    return wall


def engine_calls_runs(reader: Any, count: int, workflow: str = "llm_one") -> float:
    from bench import perf_workflows as pw

    flow = pw.WORKFLOWS[workflow]
    began = time.perf_counter()
    handles = flow.submit_many([{"prompt": f"p{i}"} for i in range(count)])
    wait_engine_runs(reader, flow.name, [h.run_id for h in handles])
    return time.perf_counter() - began


MAP_ROWS = {"llm_map": "calls_map", "llm_amap": "calls_map_async",
            "http_map": "calls_map_http", "lean_map": "calls_map_lean"}
RUN_ROWS = {"llm_one": "calls_runs", "llm_aone": "calls_runs_async",
            "http_one": "calls_runs_http", "lean_one": "calls_runs_lean"}


def measure_calls(args: argparse.Namespace, env: dict[str, str], tmp: Path, fake: Any,
                  results: Results, profiles: dict[str, Any]) -> None:
    reader = _reader()
    try:
        for number in range(args.rounds):
            last = number == args.rounds - 1
            order = ("raw", "engine") if number % 2 == 0 else ("engine", "raw")
            for system in order:
                print(f"model calls round {number + 1}/{args.rounds}: {system} ...",
                      file=sys.stderr, flush=True)
                if system == "raw":
                    _raw_calls(args, env, tmp, fake, results)
                    floor_calls(CONCURRENCY)  # warm-up
                    for _ in range(args.call_samples):
                        _calls_sample(fake, None, series(results, "calls_floor", "raw"),
                                      lambda: floor_calls(CALLS))
                else:
                    _engine_calls(args, env, tmp, fake, results, profiles, reader, last)
    finally:
        reader.dispose()


def _raw_calls(args: argparse.Namespace, env: dict[str, str], tmp: Path, fake: Any,
               results: Results) -> None:
    with running_worker("perf-raw-llm", "bench.perf:raw_llm", RAW_LLM_QUEUE, "threads",
                        CONCURRENCY, env, tmp, make_ping(raw_llm)) as worker:
        raw_calls_group(CONCURRENCY)  # warm-up: threads, connections
        raw_calls_single(CONCURRENCY)
        for _ in range(args.call_samples):
            _calls_sample(fake, worker.process.pid, series(results, "calls_map", "raw"),
                          lambda: raw_calls_group(CALLS))
            _calls_sample(fake, worker.process.pid, series(results, "calls_runs", "raw"),
                          lambda: raw_calls_single(CALLS))


def _engine_calls(args: argparse.Namespace, env: dict[str, str], tmp: Path, fake: Any,
                  results: Results, profiles: dict[str, Any], reader: Any,
                  last: bool) -> None:
    from bench.perf_workflows import LLM_MAP_QUEUE, LLM_ONE_QUEUE
    from orchestration import default_orchestrator

    engine_ping = make_ping(default_orchestrator().celery)
    diagnose = args.diagnose
    phases: list[tuple[str, str, int, dict[str, str], Callable[[str], float]]] = [
        ("perf-engine-llm-map", LLM_MAP_QUEUE, 4, MAP_ROWS,
         lambda w: engine_calls_map(CALLS, w)),
        ("perf-engine-llm-one", LLM_ONE_QUEUE, CONCURRENCY, RUN_ROWS,
         lambda w: engine_calls_runs(reader, CALLS, w))]
    for name, queue, concurrency, rows, run in phases:
        with running_worker(name, "orchestration", queue, "threads", concurrency, env, tmp,
                            engine_ping) as worker:
            first = next(iter(rows))
            if rows is MAP_ROWS:  # warm-up
                engine_calls_map(CONCURRENCY)
            else:
                engine_calls_runs(reader, CONCURRENCY)
            workflows = [w for w in rows if diagnose or w.startswith("llm_")]
            for workflow in workflows:
                for _ in range(args.call_samples):
                    _calls_sample(fake, worker.process.pid,
                                  series(results, rows[workflow], "engine"),
                                  lambda w=workflow, r=run: r(w))
            if last:  # the targeted rows, once more under py-spy
                for workflow in (first, *(w for w in rows if w.startswith("llm_a"))):
                    with spied(worker.process.pid, tmp, rows[workflow], args.spy, False,
                               profiles):
                        run(workflow)


# -- section C/D/E: children (submit rates, producer memory, embedded default) ----------------


def child_main(args: argparse.Namespace) -> int:
    """Run in a subprocess whose ORCH_* the parent set; write JSON to ``--out``."""
    if args.child == "submit":
        data = child_submit(args)
    elif args.child == "memory":
        data = child_memory(args)
    else:
        data = child_embedded(args)
    Path(args.out).write_text(json.dumps(data))
    return 0


SUBMIT_PARTS = {  # label -> (file fragment, function) of what one submit spends time in
    "Store.create_run / create_runs (rows + commit)": ("orchestration/store/repository.py",
                                                       ("create_run", "create_runs")),
    "  of which the commit": ("sqlalchemy/engine/base.py", ("_commit_impl",)),
    "Workflow.canvas (envelope + build_canvas)": ("orchestration/workflow.py", ("canvas",)),
    "Celery send_task (serialise, publish, sent event)": ("celery/app/base.py",
                                                          ("send_task",)),
    "Workflow.check_inputs (JSON size check)": ("orchestration/workflow.py",
                                                ("check_inputs",)),
}


def _profiled(fn: Callable[[], Any], runs: int, top: int = 8) -> str:
    """Where ``fn`` (``runs`` submits) spends its time: the parts above, then top functions."""
    profile = cProfile.Profile()
    began = time.perf_counter()
    profile.enable()
    fn()
    profile.disable()
    wall = time.perf_counter() - began
    table = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    lines = [f"{'whole submit (under cProfile)':<52}{wall / runs * 1000:8.3f} ms/run"]
    for label, (fragment, functions) in SUBMIT_PARTS.items():
        cumulative = sum(value[3] for key, value in table.items()
                         if key[2] in functions and fragment in key[0])
        lines.append(f"{label:<52}{cumulative / runs * 1000:8.3f} ms/run "
                     f"{cumulative / wall:6.1%}")
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    listed = [line for line in text.getvalue().splitlines() if line.strip()]
    first = next((i for i, line in enumerate(listed) if line.lstrip().startswith("ncalls")), 0)
    return "\n".join([*lines, "top functions by own time:", *listed[first:first + top + 1]])


def child_submit(args: argparse.Namespace) -> dict[str, Any]:
    from bench import perf_workflows as pw
    from bench.raw_celery import linear_canvas, raw
    from orchestration import default_orchestrator

    default_orchestrator().store.ensure_schema()
    flow = pw.perf_linear
    out: dict[str, Any] = {key: [] for key in (
        "raw_single", "engine_single", "raw_bulk", "engine_many", "engine_defer")}
    bulk = [{"x": i} for i in range(SUBMIT_BULK)]
    for i in range(100):  # warm-up: connections, compiled workflow, schema
        flow.submit(x=i)
        linear_canvas(i).apply_async()
    flow.submit_many(bulk[:200])
    flow.submit_many(bulk[:200], defer=True)
    purge_queues()

    def timed(key: str, count: int, fn: Callable[[], Any]) -> None:
        began = time.perf_counter()
        fn()
        out[key].append(count / (time.perf_counter() - began))

    def raw_bulk() -> None:
        with raw.producer_or_acquire() as producer:
            for i in range(SUBMIT_BULK):
                linear_canvas(i).apply_async(producer=producer)

    for _ in range(args.submit_reps):
        timed("raw_single", SUBMIT_SINGLE,
              lambda: [linear_canvas(i).apply_async() for i in range(SUBMIT_SINGLE)])
        timed("engine_single", SUBMIT_SINGLE,
              lambda: [flow.submit(x=i) for i in range(SUBMIT_SINGLE)])
        purge_queues()
        timed("raw_bulk", SUBMIT_BULK, raw_bulk)
        timed("engine_many", SUBMIT_BULK, lambda: flow.submit_many(bulk))
        purge_queues()
        timed("engine_defer", SUBMIT_BULK, lambda: flow.submit_many(bulk, defer=True))
        purge_queues()
    out["profile_single"] = _profiled(lambda: [flow.submit(x=i) for i in range(500)], 500)
    out["profile_many"] = _profiled(lambda: flow.submit_many(bulk), SUBMIT_BULK)
    purge_queues()
    default_orchestrator().reset_store()
    return out


def child_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Producer RSS over 10,000 single submits and 10,000 submit_many runs (or raw sends)."""
    out: dict[str, Any] = {}

    def reading() -> dict[str, int]:
        gc.collect()
        return self_rss()

    def phase(name: str, warm: Callable[[], None], step: Callable[[int], None],
              parts: int) -> None:
        warm()
        purge_queues()
        readings = [reading()]
        for part in range(parts):
            step(part)
            purge_queues()  # Redis holds the messages, not this process: keep Redis small
            if part in (parts // 2 - 1, parts - 1):
                readings.append(reading())
        out[name] = readings

    if args.system == "raw":
        from bench.raw_celery import linear_canvas

        phase("raw_single", lambda: [linear_canvas(i).apply_async() for i in range(1000)],
              lambda part: [linear_canvas(part * 1000 + i).apply_async() for i in range(1000)],
              MEMORY_SUBMITS // 1000)
        return out
    from bench import perf_workflows as pw
    from orchestration import default_orchestrator

    default_orchestrator().store.ensure_schema()
    flow = pw.perf_linear
    phase("engine_single", lambda: [flow.submit(x=i) for i in range(1000)],
          lambda part: [flow.submit(x=part * 1000 + i) for i in range(1000)],
          MEMORY_SUBMITS // 1000)
    phase("engine_many", lambda: [flow.submit_many([{"x": i} for i in range(500)])
                                  for _ in range(2)],
          lambda part: flow.submit_many([{"x": part * 500 + i} for i in range(500)]),
          MEMORY_SUBMITS // 500)
    default_orchestrator().reset_store()
    return out


def child_embedded(args: argparse.Namespace) -> dict[str, Any]:
    """The same shapes on the embedded default (in-process worker, in-memory broker)."""
    from bench import perf_workflows as pw
    from orchestration import default_orchestrator

    orchestrator = default_orchestrator()
    reader = _reader()
    out: dict[str, list[float]] = collections.defaultdict(list)
    try:
        for shape in ("map", "static"):  # warm-up: starts the in-process worker
            engine_fanout(shape)
        for index in range(2 * AGENT_SAMPLES + 4):  # diamond, agent alternating
            shape = ("agent_diamond", "agent")[index % 2]
            wall = embedded_latency(pw.WORKFLOWS[shape.removeprefix("agent_")], index)
            if index >= 4:  # the first two of each: warm-up
                out[shape].append(wall)
        engine_throughput(reader, 50, 5_000_000)
        for index in range(args.fanouts):
            out["fanout"].append(engine_fanout("map"))
            out["fanout_static"].append(engine_fanout("static", index))
        for index in range(max(1, args.tp_samples // 2)):
            out["throughput"].append(TP_RUNS / engine_throughput(reader, TP_RUNS,
                                                                 index * 10_000))
        from tests.fakes.llm_server import FakeLLMClient

        engine_calls_map(CONCURRENCY)  # warm-up
        with FakeLLMClient(os.environ[FAKE_URL_ENV]) as fake:
            for key, run in (("calls_map", lambda: engine_calls_map(CALLS)),
                             ("calls_runs", lambda: engine_calls_runs(reader, CALLS))):
                fake.reset_stats()
                out[key].append(run())
                out[f"{key}_in_flight"].append(_peak_in_flight(fake.stats(),
                                                               LATENCY_MS / 1000))
        flow = pw.perf_linear
        began = time.perf_counter()
        handles = [flow.submit(x=i) for i in range(SUBMIT_SINGLE)]
        out["submit_single"].append(SUBMIT_SINGLE / (time.perf_counter() - began))
        wait_engine_runs(reader, flow.name, [h.run_id for h in handles])
        began = time.perf_counter()
        handles = flow.submit_many([{"x": i} for i in range(SUBMIT_BULK)])
        out["submit_many"].append(SUBMIT_BULK / (time.perf_counter() - began))
        wait_engine_runs(reader, flow.name, [h.run_id for h in handles])
    finally:
        reader.dispose()
        orchestrator.shutdown()
    return dict(out)


def embedded_latency(flow: Any, x: int) -> float:
    """Wall time of one run of ``perf_diamond`` or ``perf_agent`` (x < 0 takes the branch)."""
    from orchestration import RunStatus

    runs = AGENT_BATCH
    began = time.perf_counter()
    for i in range(runs):  # a few back to back, so a sample is not one poll's granularity
        value = x * runs + i if flow.name == "perf_diamond" or i % 2 else -(x * runs + i)
        result = flow.submit(x=value).wait(timeout=60, poll=WAIT_POLL, max_poll=FANOUT_MAX_POLL)
        expected = 2 * value if flow.name == "perf_diamond" else 3 * value - min(value, 0)
        output = result.outputs.get("d" if flow.name == "perf_diamond" else "respond")
        if result.status is not RunStatus.SUCCEEDED or output != expected:
            raise RunFailed(f"{flow.name} run {result.run_id}: {result.status.value}, "
                            f"{output!r} (expected {expected}); {result.error}")
    return (time.perf_counter() - began) / runs


def run_child(kind: str, env: dict[str, str], tmp: Path, args: argparse.Namespace,
              *extra: str) -> dict[str, Any]:
    out = tmp / f"child-{kind}-{time.monotonic_ns()}.json"
    log_path = tmp / f"child-{kind}-{time.monotonic_ns()}.log"
    command = [PYTHON, str(Path(__file__).resolve()), "--child", kind, "--out", str(out),
               "--fanouts", str(args.fanouts), "--tp-samples", str(args.tp_samples),
               "--submit-reps", str(args.submit_reps), *extra]
    return dict(run_child_json(command, env, log_path, out, timeout=600, what=f"child {kind}"))


def measure_children(args: argparse.Namespace, env: dict[str, str], tmp: Path,
                     results: Results, cleanups: list[Callable[[], None]]) -> dict[str, str]:
    """Submit rates (SQLite, PostgreSQL) and producer memory, each in a fresh process."""
    profiles: dict[str, str] = {}
    databases = [("sqlite", env["ORCH_DATABASE_URL"])]
    if not args.no_postgres:
        try:
            url, drop = isolated_postgres(args.postgres)
        except Exception as exc:  # no server: say so, measure the rest
            print(f"PostgreSQL unavailable ({type(exc).__name__}: {exc}); skipping its rows",
                  file=sys.stderr)
        else:
            cleanups.append(drop)
            databases.append(("postgres", url))
    for name, url in databases:
        print(f"submit rates ({name}) ...", file=sys.stderr, flush=True)
        data = run_child("submit", {**env, "ORCH_DATABASE_URL": url}, tmp, args)
        for key in ("engine_single", "engine_many", "engine_defer"):
            series(results, f"submit_{key.split('_')[1]}_{name}", "engine").values += data[key]
        series(results, f"submit_single_{name}", "raw").values += data["raw_single"]
        for key in ("many", "defer"):
            series(results, f"submit_{key}_{name}", "raw").values += data["raw_bulk"]
        profiles[f"submit_single_{name}"] = data["profile_single"]
        profiles[f"submit_many_{name}"] = data["profile_many"]
    print("producer memory ...", file=sys.stderr, flush=True)
    engine = run_child("memory", env, tmp, args, "--system", "engine")
    raw = run_child("memory", env, tmp, args, "--system", "raw")
    for row, system, data in (("memory_producer_single", "engine", engine["engine_single"]),
                              ("memory_producer_many", "engine", engine["engine_many"]),
                              ("memory_producer_single", "raw", raw["raw_single"])):
        target = series(results, row, system)
        target.values.append((data[-1]["VmRSS"] / data[0]["VmRSS"] - 1) * 100)
        target.extra["rss"] = data
    return profiles


def measure_embedded(args: argparse.Namespace, env: dict[str, str], tmp: Path,
                     results: Results) -> None:
    print("embedded default ...", file=sys.stderr, flush=True)
    embedded_env = {k: v for k, v in env.items()
                    if not k.startswith("ORCH_") or k == "ORCH_MODELS_FILE"}
    embedded_env["ORCH_DATABASE_URL"] = f"sqlite:///{tmp / 'embedded.db'}"
    embedded_env["ORCH_LOG_LEVEL"] = "WARNING"
    data = run_child("embedded", embedded_env, tmp, args)
    mapping = {"fanout": "fanout", "fanout_static": "fanout_static",
               "throughput": "throughput", "calls_map": "calls_map",
               "calls_runs": "calls_runs", "submit_single": "submit_single_sqlite",
               "submit_many": "submit_many_sqlite"}
    series(results, "agent", "raw").values += data.get("agent_diamond", [])  # the baseline
    series(results, "agent", "engine").values += data.get("agent", [])
    for key, row in mapping.items():
        series(results, row, "embedded").values += data.get(key, [])
        series(results, row, "embedded").in_flight += data.get(f"{key}_in_flight", [])


# -- section F: async def steps (bench/async_workflows.py) -------------------------------------

ASYNC_SAMPLES = 3  # engine runs of 10,000 waits (after a warm-up)
RAW_SLEEPS = 1_000  # raw Celery: 1,000 sleeps on -P threads -c 200, scaled to 10,000
RAW_SLEEP_THREADS = 200


def engine_async_wait(count: int) -> float:
    """Wall time of one ``perf_async_wait`` run over ``count`` elements, submit to result."""
    from bench import async_workflows as aw
    from orchestration import RunStatus

    began = time.perf_counter()
    result = aw.async_wait.submit(xs=list(range(count))).wait(timeout=DEADLINE, poll=WAIT_POLL)
    wall = time.perf_counter() - began
    if result.status is not RunStatus.SUCCEEDED or result.outputs["wait"] != list(range(count)):
        raise RunFailed(f"async wait run {result.run_id}: {result.status.value}; {result.error}")
    return wall


def raw_sleeps(count: int) -> float:
    """Wall time of ``count`` raw ``time.sleep(1)`` tasks, first publish to last result."""
    from bench import async_workflows as aw

    began = time.perf_counter()
    with aw.raw_sleep.producer_or_acquire() as producer:
        ids = [aw.raw_wait.apply_async((i,), producer=producer).id for i in range(count)]
    wait_raw_results(aw.raw_sleep, ids, lambda i: i)
    return time.perf_counter() - began


@contextmanager
def peak_rss(session: int) -> Iterator[list[int]]:
    """The session's highest VmRSS (bytes) while the block runs, sampled every 20 ms."""
    import threading

    peak = [session_rss(session)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], session_rss(session))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], session_rss(session))


def measure_async(args: argparse.Namespace, env: dict[str, str], tmp: Path,
                  results: Results, profiles: dict[str, Any]) -> None:
    """10,000 async steps waiting 1 s on one -P threads worker process, vs raw sleeps."""
    from bench import async_workflows as aw
    from orchestration import default_orchestrator

    elements = args.async_elements
    wall, rss = series(results, "async_wait", "engine"), series(results, "async_rss", "engine")
    wall.extra["elements"] = elements
    print(f"async def steps: raw Celery {RAW_SLEEPS} sleeps ...", file=sys.stderr, flush=True)
    with running_worker("perf-raw-sleep", "bench.async_workflows:raw_sleep",
                        aw.RAW_SLEEP_QUEUE, "threads", RAW_SLEEP_THREADS, env, tmp,
                        make_ping(aw.raw_sleep)) as worker:
        raw_sleeps(RAW_SLEEP_THREADS)  # warm-up: every pool thread started
        for _ in range(max(1, args.async_samples - 1)):
            with peak_rss(worker.process.pid) as peak:
                taken = raw_sleeps(RAW_SLEEPS)
            series(results, "async_wait", "raw").values.append(taken * elements / RAW_SLEEPS)
            series(results, "async_rss", "raw").values.append(peak[0] / 2**20)
    print(f"async def steps: engine {elements:,} waits ...", file=sys.stderr, flush=True)
    engine_env = dict(env, ORCH_IMPORTS="bench.async_workflows")
    with running_worker("perf-engine-async", "orchestration", aw.ASYNC_QUEUE, "threads",
                        aw.ASYNC_POOL, engine_env, tmp,
                        make_ping(default_orchestrator().celery)) as worker:
        engine_async_wait(elements)  # warm-up: the loop, the pool, the DB connections
        for _ in range(args.async_samples):
            cpu0 = session_cpu(worker.process.pid)
            with peak_rss(worker.process.pid) as peak:
                wall.values.append(engine_async_wait(elements))
            wall.worker_cpu.append(session_cpu(worker.process.pid) - cpu0)
            rss.values.append(peak[0] / 2**20)
        with spied(worker.process.pid, tmp, "async_wait", args.spy, False, profiles):
            engine_async_wait(elements)


# -- report ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """How one row is shown and judged."""

    label: str
    unit: str  # ms, s, /s, %
    kind: str  # latency | rate | ideal | absolute | growth
    target: float | None
    target_text: str


SPECS: dict[str, Spec] = {
    "linear": Spec("4-step linear latency (overhead.py)", "ms", "latency", 1.0, "<= 1.0x"),
    "diamond": Spec("diamond latency (overhead.py)", "ms", "latency", 1.0, "<= 1.0x"),
    "fanout": Spec("fan-out 100 + join (map)", "ms", "latency", 1.0, "<= 1.0x"),
    "fanout_static": Spec("fan-out 100 + join (100 steps)", "ms", "latency", 1.0, "<= 1.0x"),
    "throughput": Spec(f"throughput, {TP_RUNS} 4-step runs", "/s", "rate", 1.0, ">= 1.0x"),
    "calls_map": Spec("1,000 calls x 100 ms, one run (map)", "s", "ideal", 0.8,
                      ">= 80% ideal"),
    "calls_map_async": Spec("  same, async def + acomplete", "s", "ideal", 0.8,
                            ">= 80% ideal"),
    "calls_floor": Spec("  floor: plain async HTTP, no Celery", "s", "ideal", None, "-"),
    "calls_map_http": Spec("  same, plain httpx (diagnosis)", "s", "ideal", None, "-"),
    "calls_map_lean": Spec("  same, http.client (diagnosis)", "s", "ideal", None, "-"),
    "calls_runs": Spec("1,000 one-call runs", "s", "below", 1.0, "<= 1.0 s"),
    "calls_runs_async": Spec("  same, async def + acomplete", "s", "below", 1.0,
                             "<= 1.0 s"),
    "calls_runs_http": Spec("  same, plain httpx (diagnosis)", "s", "ideal", None, "-"),
    "calls_runs_lean": Spec("  same, http.client (diagnosis)", "s", "ideal", None, "-"),
    "submit_single_sqlite": Spec("submit, single (SQLite)", "/s", "absolute", 1000,
                                 ">= 1,000/s"),
    "submit_many_sqlite": Spec("submit_many 5,000 (SQLite)", "/s", "absolute", 5000,
                               ">= 5,000/s"),
    "submit_defer_sqlite": Spec("submit_many defer=True (SQLite)", "/s", "absolute", 5000,
                                ">= 5,000/s"),
    "submit_single_postgres": Spec("submit, single (PostgreSQL)", "/s", "absolute", 1000,
                                   ">= 1,000/s"),
    "submit_many_postgres": Spec("submit_many 5,000 (PostgreSQL)", "/s", "absolute", 5000,
                                 ">= 5,000/s"),
    "submit_defer_postgres": Spec("submit_many defer=True (PostgreSQL)", "/s", "absolute",
                                  5000, ">= 5,000/s"),
    "memory_producer_single": Spec("producer RSS, 10,000 submits", "%", "growth", 5.0,
                                   "< 5% growth"),
    "memory_producer_many": Spec("producer RSS, 10,000 via submit_many", "%", "growth", 5.0,
                                 "< 5% growth"),
    "memory_worker": Spec("worker RSS, 10,000 steps", "%", "growth", 10.0, "< 10% growth"),
    "async_wait": Spec("10,000 async steps wait 1 s, 1 process", "s", "below", 1.5,
                       "<= 1.5 s"),
    "async_rss": Spec("  its worker's peak RSS", "MB", "below", 500, "< 500 MB"),
    "agent": Spec("agent shape, embedded (raw: its diamond)", "ms", "latency", 2.0, "<= 2.0x"),
}


def _fmt(value: float, unit: str) -> str:
    if value != value:  # nan
        return "-"
    if unit == "ms":
        return f"{value * 1000:.1f}"
    if unit == "s":
        return f"{value:.2f}"
    if unit == "/s":
        return f"{value:,.0f}"
    if unit == "MB":
        return f"{value:,.0f}"
    return f"{value:+.1f}"


def _cell(samples: Series | None, unit: str) -> str:
    if samples is None or not samples.values:
        return "-"
    values = samples.values
    median = _fmt(statistics.median(values), unit)
    if len(values) == 1:
        return median
    return f"{median} ({_fmt(min(values), unit)}-{_fmt(max(values), unit)})"


def verdict(key: str, row: dict[str, Series]) -> tuple[str, str, bool | None]:
    """(ratio text, verdict text, passed) of one row."""
    spec = SPECS[key]
    engine, raw = row.get("engine"), row.get("raw")
    if engine is None or not engine.values:
        return "-", "-", None
    e = engine.median()
    r = raw.median() if raw is not None and raw.values else float("nan")
    if spec.kind == "latency":
        ratio, text = e / r, f"{e / r:.2f}x"
        passed = ratio <= spec.target if spec.target else None
        by = f"{(ratio / spec.target - 1):.0%} over" if spec.target else ""
    elif spec.kind == "rate":
        ratio, text = e / r, f"{e / r:.2f}x"
        passed = ratio >= spec.target if spec.target else None
        by = f"{(1 - ratio / spec.target):.0%} under" if spec.target else ""
    elif spec.kind == "ideal":
        share = IDEAL / e
        text = f"{share:.0%} ideal; {e / r:.2f}x raw s" if r == r else f"{share:.0%} ideal"
        passed = share >= spec.target if spec.target else None
        by = (f"{e:.2f} s vs <= {IDEAL / spec.target:.3f} s: "
              f"{e / (IDEAL / spec.target):.1f}x too slow") if spec.target else ""
    elif spec.kind == "absolute":
        text = f"{e / r:.2f}x raw" if r == r else "-"
        passed = e >= spec.target if spec.target else None
        by = f"{(1 - e / spec.target):.0%} under" if spec.target else ""
    elif spec.kind == "below":  # an absolute ceiling; raw for reference
        text = f"{e / r:.3f}x raw" if r == r else "-"
        passed = e <= spec.target if spec.target else None
        by = f"{e / spec.target - 1:.0%} over" if spec.target else ""
    else:  # growth, percent
        text = f"raw {r:+.1f}%" if r == r else "-"
        passed = e < spec.target if spec.target else None
        by = f"{e - spec.target:+.1f} points" if spec.target else ""
    if passed is None:
        return text, "-", None
    return text, "PASS" if passed else f"MISS ({by})", passed


def load_overhead(path: Path | None, results: Results) -> str | None:
    """The linear/diamond rows of ``bench/overhead.py --dump``; its pool, if any."""
    if path is None or not path.exists():
        return None
    data = json.loads(path.read_text())
    for system, shapes in data.get("samples", {}).items():
        for shape, samples in shapes.items():
            series(results, shape, system).values += samples["wall"]
    args = data.get("args", {})
    return f"-P {args.get('pool', '?')} -c {args.get('concurrency', '?')}"


def report(args: argparse.Namespace, results: Results, profiles: dict[str, Any],
           submit_profiles: dict[str, str], info: dict[str, str], elapsed: float) -> None:
    import celery
    import httpx
    import kombu
    import sqlalchemy

    print()
    print("Engine vs raw Celery: the issue's target rows (same broker, backend, settings, "
          "pool; one invocation)")
    print(f"  machine : {machine()}; {load_figures(info['load_start'])}")
    print(f"  engine  : {info['revision']}; python {platform.python_version()}, celery "
          f"{celery.__version__}, kombu {kombu.__version__}, sqlalchemy "
          f"{sqlalchemy.__version__}, httpx {httpx.__version__}")
    print(f"  broker  : {REDIS_URL} (result backend the same), config.celery settings for "
          "both; results DB SQLite in a temp dir (+ PostgreSQL for submit rates)")
    print(f"  workers : a fresh one per phase, {args.rounds} alternating rounds; fan-out, "
          "throughput, worker memory: -P prefork -c 2 (both);\n            model calls: "
          f"raw -P threads -c {CONCURRENCY}; engine map -P threads -c 4 (chunk_size 250 x "
          f"concurrency 50), one-call runs -P threads -c {CONCURRENCY}")
    print(f"  calls   : fake OpenAI server (own process), {LATENCY_MS:g} ms per call, no "
          f"errors; ideal = {CALLS} x {LATENCY_MS / 1000:g} s / {CONCURRENCY} = {IDEAL:.2f} s "
          f"(80%: <= {IDEAL / 0.8:.3f} s);\n            raw: httpx.Client(timeout=60), "
          f"httpx's default pool; engine: ctx.llm -> its OpenAI provider ({engine_pool()});"
          f"\n            async rows: ctx.llm.acomplete ({engine_pool('_async')})")
    print("  timing  : client wall time; fan-out: engine handle.wait(poll 2-5 ms) vs raw "
          "chord .get(); batches: first submit until\n            the client sees all done, "
          f"both polled every {POLL * 1000:g} ms (engine: the results DB; raw: the result "
          "keys, MGET)")
    if info.get("overhead"):
        print(f"  latency : linear/diamond rows from bench/overhead.py ({info['overhead']}, "
              "run just before, same machine)")
    print()
    header = (f"{'row':<40}{'raw celery':>24}{'engine':>24}{'ratio':>24}{'target':>14}"
              f"{'embedded (ref)':>23}  verdict")
    print(header)
    print(f"{'':<40}{'median (min-max)':>24}{'median (min-max)':>24}{'':>38}"
          f"{'median (min-max)':>23}")
    print("-" * (len(header) + 30))
    missed = []
    for key, spec in SPECS.items():
        row = results.get(key)
        if not row:
            continue
        ratio, text, passed = verdict(key, row)
        if passed is False:
            missed.append(key)
        print(f"{spec.label + ' ' + spec.unit:<40}{_cell(row.get('raw'), spec.unit):>24}"
              f"{_cell(row.get('engine'), spec.unit):>24}{ratio:>24}{spec.target_text:>14}"
              f"{_cell(row.get('embedded'), spec.unit):>23}  {text}")
    print()
    print("Units: ms, s = wall time of one fan-out or of a whole batch (lower is better); "
          "/s = runs per second (higher is better);\n  % = RSS growth. ratio: engine/raw "
          "for latency and runs/s; for model calls, ideal/engine wall and engine/raw wall.\n"
          "  embedded: no broker, in-process worker with its default 8 threads, SQLite "
          "(reference, not targeted).")
    _details(results)
    for key in missed:
        _explain(key, results, profiles, submit_profiles)
    print(f"\nwhole bench: {elapsed:.1f} s")


def engine_pool(key: str = "") -> str:
    """How the engine's OpenAI provider sends the HTTP calls of row ``key``."""
    if key.endswith("_async"):
        return ("AsyncKeepAliveClient: keep-alive connections on the worker's event loop, "
                "httptools parser")
    return "KeepAliveClient: one keep-alive connection per thread (no pool), httptools parser"


def _details(results: Results) -> None:
    print("\nDetails:")
    for key in ("fanout", "fanout_static"):
        engine = results.get(key, {}).get("engine")
        if engine and engine.extra.get("db"):
            print(f"  {SPECS[key].label:<38} engine DB created->finished median "
                  f"{statistics.median(engine.extra['db']) * 1000:.1f} ms (wall minus it: "
                  "submit before the run row, polling, final read)")
    for key in ("fanout", "fanout_static", "throughput"):
        for system in ("raw", "engine"):
            samples = results.get(key, {}).get(system)
            if samples and samples.worker_cpu:
                per = TP_RUNS if key == "throughput" else 1
                unit = "ms per run" if key == "throughput" else "ms per fan-out"
                print(f"  {SPECS[key].label:<38} {system:<9} worker CPU "
                      f"{statistics.median(samples.worker_cpu) / per * 1000:.1f} {unit}")
    for key in ("calls_map", "calls_map_async", "calls_floor", "calls_map_http", "calls_map_lean",
                "calls_runs", "calls_runs_async", "calls_runs_http", "calls_runs_lean"):
        for system in ("raw", "engine", "embedded"):
            samples = results.get(key, {}).get(system)
            if samples and samples.in_flight:
                cpu = (f"; worker CPU {statistics.median(samples.worker_cpu):.2f} s per "
                       f"{CALLS} calls" if samples.worker_cpu else "")
                edges = (f"; first call {statistics.median(samples.extra['lead']) * 1000:.0f} "
                         f"ms after submit, result "
                         f"{statistics.median(samples.extra['tail']) * 1000:.0f} ms after the "
                         "last answer" if samples.extra.get("lead") else "")
                print(f"  {SPECS[key].label.strip():<38} {system:<9} peak calls in flight at "
                      f"the fake {min(samples.in_flight)}-{max(samples.in_flight)}{cpu}{edges}")
    _details_memory(results)


def _details_memory(results: Results) -> None:
    for key in ("memory_producer_single", "memory_producer_many", "memory_worker"):
        for system in ("raw", "engine"):
            samples = results.get(key, {}).get(system)
            if samples and "rss" in samples.extra:
                readings = samples.extra["rss"]
                if isinstance(readings[0], dict):
                    text = " -> ".join(f"{r['VmRSS'] / 2**20:.1f}" for r in readings)
                    anon = " -> ".join(f"{r['RssAnon'] / 2**20:.1f}" for r in readings)
                    text = f"VmRSS {text} MiB (anon {anon})"
                else:
                    text = "session RSS " + " -> ".join(f"{r / 2**20:.1f}" for r in readings) \
                        + " MiB"
                print(f"  {SPECS[key].label:<38} {system:<9} {text} (start, half, end)")


def _explain(key: str, results: Results, profiles: dict[str, Any],
             submit_profiles: dict[str, str]) -> None:
    spec = SPECS[key]
    row = results[key]
    engine, raw = row["engine"], row.get("raw")
    print(f"\nMISS: {spec.label.strip()}: {verdict(key, row)[1]}. What limits it:")
    if key.startswith("calls_"):
        wall = engine.median()
        cpu = statistics.median(engine.worker_cpu)
        peak = max(engine.in_flight)
        print(f"  - concurrency: at most about {peak} calls were in flight at the fake (of "
              f"{CONCURRENCY}); at that, {CALLS} x {LATENCY_MS:g} ms takes >= "
              f"{CALLS * LATENCY_MS / 1000 / peak:.2f} s. The engine's HTTP client: "
              f"{engine_pool(key)}.")
        budget = IDEAL / 0.8 / CALLS * 1000
        raw_text = (f", raw {raw.median():.2f} s (raw worker CPU "
                    f"{statistics.median(raw.worker_cpu):.2f} s)"
                    if raw and raw.values and raw.worker_cpu else "")
        print(f"  - CPU: the worker used {cpu:.2f} s of CPU per {CALLS} calls "
              f"({cpu / CALLS * 1000:.2f} ms/call); one process runs Python on one core at "
              "a time (GIL), so it cannot finish in less;\n    the target leaves "
              f"<= {budget:.2f} ms of CPU per call. Engine wall {wall:.2f} s{raw_text}.")
    if key in ("fanout", "fanout_static") and raw and raw.values:
        cpu_e = statistics.median(engine.worker_cpu) if engine.worker_cpu else float("nan")
        cpu_r = statistics.median(raw.worker_cpu) if raw.worker_cpu else float("nan")
        db = engine.extra.get("db")
        print(f"  - worker CPU per fan-out: engine {cpu_e * 1000:.0f} ms, raw {cpu_r * 1000:.0f}"
              " ms (2 prefork processes on 2 shared cores)"
              + (f"; the engine's run took {statistics.median(db) * 1000:.0f} ms in the DB "
                 f"(created -> finished) of its {engine.median() * 1000:.0f} ms wall" if db
                 else ""))
    if key == "async_wait" and engine.worker_cpu:
        cpu = statistics.median(engine.worker_cpu)
        count = engine.extra.get("elements", 10_000)
        print(f"  - CPU: the worker used {cpu:.2f} s of CPU per run of {count:,} elements "
              f"({cpu / count * 1e6:.0f} us/element); the loop and the "
              "pool threads share one core at a time (GIL): the target leaves 0.5 s beyond "
              "the 1 s wait for submit, start, bookkeeping, records and collect.")
    if key.startswith("submit_") and raw and raw.values:
        print(f"  - raw Celery publishes {raw.median():,.0f} messages/s here (one per run); "
              "an inline submit publishes one message per run too, so it cannot beat that.")
    if profiles.get(key):
        per = {"throughput": TP_RUNS, "fanout": SPY_FANOUTS,
               "fanout_static": SPY_FANOUTS, "async_wait": 1}.get(key, CALLS)
        cpu = statistics.median(engine.worker_cpu) if engine.worker_cpu else 0.0
        if key.startswith("calls_"):
            cpu /= CALLS
        elif key == "throughput":
            cpu /= TP_RUNS
        print_profile(f"{key} (an extra, untimed pass)", profiles[key], per, cpu)
    elif key in submit_profiles:
        print("  cProfile of the submitting client (top functions by own time):\n"
              + "\n".join(f"    {line}" for line in submit_profiles[key].splitlines()))
    elif key in ("linear", "diamond"):
        print("  see bench/overhead.py's report above; bench/profile_worker.py and "
              "bench/profile_step.py profile that path")


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating raw/engine rounds")
    parser.add_argument("--fanouts", type=int, default=8, help="fan-outs per shape per phase")
    parser.add_argument("--tp-samples", type=int, default=2,
                        help=f"throughput batches of {TP_RUNS} per phase")
    parser.add_argument("--call-samples", type=int, default=2,
                        help="model-call batches per row per phase")
    parser.add_argument("--submit-reps", type=int, default=3)
    parser.add_argument("--async-samples", type=int, default=ASYNC_SAMPLES,
                        help="engine runs of the async row (raw: one fewer, at least one)")
    parser.add_argument("--async-elements", type=int, default=10_000,
                        help="elements of the async row's map (the target is for 10,000)")
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        type=lambda text: [part for part in text.split(",") if part],
                        help=f"what to measure, of {','.join(SECTIONS)}")
    parser.add_argument("--postgres", default=POSTGRES_URL)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-embedded", action="store_true")
    parser.add_argument("--profile", choices=("auto", "off"), default="auto",
                        help="py-spy an extra untimed pass of targeted engine rows")
    parser.add_argument("--diagnose", action="store_true",
                        help="add engine rows calling the fake with plain httpx")
    parser.add_argument("--overhead-json", type=Path, default=None,
                        help="bench/overhead.py --dump output to fold into the summary")
    parser.add_argument("--wait-for-db", type=float, default=600.0, metavar="SECONDS")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--child", choices=("submit", "memory", "embedded"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--system", default="engine", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    if args.quick:
        args.rounds, args.fanouts, args.tp_samples = 2, 3, 1
        args.call_samples, args.submit_reps = 1, 1
    args.spy = args.profile == "auto" and PY_SPY.exists()
    return args


def environment(tmp: Path, catalogue: Path, database: str, fake_url: str) -> dict[str, str]:
    """This process's and the workers' settings (set before the engine is imported)."""
    os.environ.update({
        "ORCH_BROKER_URL": REDIS_URL, "ORCH_RESULT_BACKEND": REDIS_URL,
        "ORCH_DATABASE_URL": database, "ORCH_MODELS_FILE": str(catalogue),
        "ORCH_IMPORTS": ENGINE_IMPORTS, KEY_ENV: KEY, FAKE_URL_ENV: fake_url,
    })
    os.environ.pop("ORCH_REDIS_URL", None)  # breaker state: the broker's Redis (DB 14)
    os.environ.pop("BENCH_EXPERIMENT", None)
    return child_env()


def measure_all(args: argparse.Namespace, env: dict[str, str], tmp: Path, fake: Any,
                results: Results, profiles: dict[str, Any],
                cleanups: list[Callable[[], None]]) -> dict[str, str]:
    """The chosen sections in order; returns the submit rows' cProfile texts."""
    submit_profiles: dict[str, str] = {}
    if "dag" in args.sections:
        measure_dag(args, env, tmp, results, profiles)
        purge_queues()
    if "calls" in args.sections:
        measure_calls(args, env, tmp, fake, results, profiles)
    if "submit" in args.sections:  # submit rates and producer memory
        submit_profiles = measure_children(args, env, tmp, results, cleanups)
    if "embedded" in args.sections and not args.no_embedded:
        measure_embedded(args, env, tmp, results)
    if "async" in args.sections:
        measure_async(args, env, tmp, results, profiles)
    return submit_profiles


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if int((urlparse(REDIS_URL).path or "/0").lstrip("/") or 0) == FORBIDDEN_REDIS_DB:
        raise SystemExit("refusing to use Redis DB 15 (the tests' database)")
    wait_for_free_db(REDIS_URL, args.wait_for_db)
    began = time.monotonic()
    info = {"load_start": f"{os.getloadavg()[0]:.2f}", "revision": _revision()}
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-perf-"))
    flush_bench_db(REDIS_URL)
    watch = FlushWatch(REDIS_URL)
    watch.start()
    cleanups: list[Callable[[], None]] = []
    results: Results = {}
    profiles: dict[str, Any] = {}
    try:
        with ExitStack() as stack:
            server = start_fake_server(1024)
            stack.callback(stop_fake_server, server)
            from tests.fakes.llm_server import FakeLLMClient

            fake = stack.enter_context(FakeLLMClient(server.url))
            fake.configure("sim", latency_ms=LATENCY_MS)
            catalogue = tmp / "models.yaml"
            write_catalogue(catalogue, server.url, fallback=False)
            env = environment(tmp, catalogue, f"sqlite:///{tmp / 'bench.db'}", server.url)
            env["PYTHONUNBUFFERED"] = "1"
            info["overhead"] = load_overhead(args.overhead_json, results) or ""

            import bench.perf_workflows  # noqa: F401 - registers the workflows (ORCH_* set)
            from orchestration import default_orchestrator

            default_orchestrator().store.ensure_schema()  # migrate once, before any worker
            submit_profiles = measure_all(args, env, tmp, fake, results, profiles, cleanups)
        report(args, results, profiles, submit_profiles, info, time.monotonic() - began)
        return 0
    except RunFailed as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if not watch.flushed:
            raise
        print(f"bench stopped: Redis {REDIS_URL} was flushed by another process (another "
              "bench?). Run again when it is free.", file=sys.stderr)
        return 1
    finally:
        watch.stop()
        _dispose_default_store()
        for cleanup in cleanups:
            with suppress(Exception):
                cleanup()
        finish_bench(REDIS_URL, tmp, args.keep_logs)


if __name__ == "__main__":
    sys.exit(main())
