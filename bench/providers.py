"""Model calls through the engine under provider faults: throughput against the ideal.

    python bench/providers.py [--calls 1000] [--latency-ms 100] [--error-rate 0.3]
                              [--concurrency 200] [--seed 1234] [--submitters 1]
                              [--variants primary,fallback,raw,drain,raw-drain]
                              [--profile gil|wall] [--what-if breaker-memory|breaker-off]
                              [--keep-logs]

``--calls`` one-step runs, each making one ``ctx.llm.complete`` call
(``bench/provider_workflows.py``), against the fake OpenAI-compatible server of
``tests/fakes/llm_server.py``, run as its own process (its threads share no GIL with the
bench or the worker; a fresh one per row). The model ``sim`` answers after
``--latency-ms`` and fails with HTTP 500 with probability ``--error-rate``, drawn from
``random.Random(--seed)`` in arrival order: the status sequence is the same every time,
which run gets which status depends on arrival order. The catalogue written for each row
gives ``sim`` ``retries: 3`` (at most 4 calls; ``ctx.llm``'s backoff 0.2, 0.4, 0.8 s + up
to 0.1 s jitter) and a breaker with ``fail_max`` 1000, so it never opens on random errors
(this bench measures retries, not the breaker).

Rows (``--variants``), each with a fresh worker (``celery -A orchestration worker -Q
bench.llm -P threads -c <concurrency>``, or the raw app), ready when it answers
``control.ping`` (polled until a deadline), stopped with SIGTERM then SIGKILL of its
session, and warmed up with 20 error-free runs before the fake's counters and seed reset:

- ``primary``: ``sim`` alone; a run fails when its 4 calls fail (p**4 = 0.8% at 30%).
  Runs are submitted from this process in a loop (``--submitters N``: N threads) while
  the worker runs them; the bench polls the results DB for terminal runs until a deadline.
- ``fallback``: ``sim`` falls back to ``sim-backup`` (same fake and latency, no errors).
- ``raw``: raw Celery for reference: a task making the same call with an ``httpx.Client``
  per process (the engine's OpenAI provider's defaults) and the same retries and backoff
  through tenacity; no results DB; results through the Redis result backend.
- ``drain`` / ``raw-drain``: the same as ``primary`` / ``raw`` with the queue filled
  first: a worker warms up and stops, every run is submitted, then a second worker
  starts. Wall time (first step start to last finish) and CPU (less the start-up CPU
  of the first worker) then measure the worker alone, not the submitting loop. (Pausing
  one worker with ``cancel_consumer``/``add_consumer`` instead left it idle with 877 runs
  queued in 2 of about 10 tries: Celery's known trouble with re-added consumers.)

Reported per row: completion rate, calls at the fake per success (against 1/(1-p)), wall
time (first submit, or first step start when pre-filled, to last finish) against the
ideal ``calls x latency / concurrency`` with and without the retries p implies, run
latency p50/p95 (DB: created -> finished), time queued, how long a run holds a worker
thread, the peak of requests in flight at the fake, CPU of the worker and of this
process, the error mix, and the TCP connections the fake accepted.
``--profile gil|wall`` attaches py-spy to the worker of the pre-filled rows: who holds
the GIL, or where every thread is (idle ones included). ``--what-if`` patches the engine
workers to measure a proposed change (labelled in the output). Redis DB 14 is flushed at start,
between rows and at the end (never DB 15, the tests'); the SQLite results DB lives in a
temp dir. Exits 0 unless a run was still unfinished at a row's deadline.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.overhead import (  # noqa: E402 - needs the sys.path fix
    FORBIDDEN_REDIS_DB,
    PYTHON,
    REDIS_URL,
    _revision,
    child_env,
    flush_bench_db,
    load_figures,
    machine,
    make_ping,
    percentile,
    running_worker,
    session_cpu,
)

ENGINE_QUEUE = "bench.llm"  # = bench.provider_workflows.QUEUE (not imported: it needs ORCH_*)
RAW_QUEUE = "bench.raw_llm"
RAW_TASK = "bench.raw_llm.ask"
KEY_ENV = "BENCH_LLM_KEY"
KEY = "sk-bench-not-a-secret"
FAIL_MAX = 1000  # consecutive failures before sim's breaker opens: never at random 30 %
RETRIES = 3
BACKOFF = (0.2, 5.0, 2.0, 0.1)  # initial, maximum, multiplier, jitter: orchestration.llm.client's
WARMUP = 20
SERVER_START_TIMEOUT = 20.0
POLL = 0.1
PY_SPY = Path(PYTHON).parent / "py-spy"
SPY_RATE = 250  # samples per second of the thread holding the GIL (--profile gil)
SPY_WALL_RATE = 50  # samples per second of each of ~200 threads (--profile wall)
VARIANTS = ("primary", "fallback", "raw", "drain", "raw-drain")
LABEL = {"primary": "engine, sim only", "fallback": "engine, sim -> sim-backup",
         "raw": "raw Celery + tenacity", "drain": "engine, queue pre-filled",
         "raw-drain": "raw Celery, queue pre-filled"}


# -- the raw Celery reference (its worker imports this module: -A bench.providers:raw_llm) ---


def _raw_app() -> Any:
    from celery import Celery

    from config.celery import celery_config
    from orchestration.core.settings import Settings

    broker = os.environ.get("ORCH_BROKER_URL") or REDIS_URL
    settings = Settings(broker_url=broker, result_backend=os.environ.get("ORCH_RESULT_BACKEND")
                        or None, imports=[])
    config = celery_config(settings)  # the engine's settings: json, acks_late, prefetch 1, ...
    config["imports"] = []
    config["task_default_queue"] = RAW_QUEUE
    app = Celery("raw_llm", set_as_current=False)
    app.conf.update(config)
    return app


raw_llm = _raw_app()
_http: Any = None
_http_lock = threading.Lock()


class _HTTPStatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def _raw_transient(exc: BaseException) -> bool:
    import httpx

    if isinstance(exc, _HTTPStatusError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, httpx.HTTPError)


def _raw_wait(state: Any) -> float:
    import random

    initial, maximum, multiplier, jitter = BACKOFF
    return float(min(maximum, initial * multiplier ** (state.attempt_number - 1))
                 + random.uniform(0, jitter))


@raw_llm.task(name=RAW_TASK, queue=RAW_QUEUE, acks_late=True)
def raw_ask(i: int, base_url: str, models: list[str], retries: int) -> dict[str, Any]:
    """One chat completion with retries (tenacity), then the next model; never raises."""
    global _http
    started = time.time()
    import httpx
    from tenacity import Retrying, retry_if_exception, stop_after_attempt

    with _http_lock:
        if _http is None:
            _http = httpx.Client(timeout=60.0)  # as OpenAIProvider: default pool limits
    errors = []
    for model in models:
        try:
            for attempt in Retrying(stop=stop_after_attempt(retries + 1), wait=_raw_wait,
                                    retry=retry_if_exception(_raw_transient), reraise=True):
                with attempt:
                    response = _http.post(
                        f"{base_url}/chat/completions",
                        json={"model": model, "messages": [
                            {"role": "user", "content": f"bench request {i}"}]},
                        headers={"Authorization": f"Bearer {KEY}"})
                    if response.status_code >= 400:
                        raise _HTTPStatusError(response.status_code)
                    response.json()["choices"][0]["message"]["content"]
            return {"ok": True, "model": model, "started": started, "finished": time.time()}
        except (_HTTPStatusError, httpx.HTTPError) as exc:
            errors.append(f"{model}: {exc}")
    return {"ok": False, "error": "; ".join(errors), "started": started,
            "finished": time.time()}


# -- the fake server ---------------------------------------------------------------------------


@dataclass
class FakeServer:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


# The fake's listen backlog is socketserver's default, 5: under bursts of new connections
# (httpx keeps at most 20 idle connections, so it reconnects under load) the kernel drops
# SYNs and each dropped one costs the client a 1 s retransmit. The bench's launcher raises
# the backlog (--fake-backlog; the fake's code is unchanged) and counts the connections
# the server accepted, printed when it stops.
_LAUNCH_FAKE = """
import sys
import tests.fakes.llm_server as fake

accepted = 0


class Server(fake._HTTPServer):
    request_queue_size = int(sys.argv[1]) or fake._HTTPServer.request_queue_size

    def get_request(self):
        global accepted
        request = super().get_request()
        accepted += 1
        return request


fake._HTTPServer = Server
code = fake.main(["--port", "0"])
print(f"CONNECTIONS {accepted}", flush=True)
sys.exit(code)
"""


def start_fake_server(backlog: int) -> FakeServer:
    """``tests.fakes.llm_server``'s ``main(["--port", "0"])`` in its own process and session,
    with its listen backlog set to ``backlog`` (0: as is); waits for ``READY <port>``."""
    process = subprocess.Popen([PYTHON, "-c", _LAUNCH_FAKE, str(backlog)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    assert process.stdout is not None
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    buffered = b""
    try:
        while b"\n" not in buffered:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"fake server not ready after {SERVER_START_TIMEOUT:g} s")
            readable, _, _ = select.select([process.stdout], [], [], min(left, 0.2))
            if readable:
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"fake server exited ({process.wait()}): "
                                       f"{buffered.decode(errors='replace')}")
                buffered += chunk
        line = buffered.split(b"\n", 1)[0].decode().strip()
        match = re.fullmatch(r"READY (\d+)", line)
        if match is None:
            raise RuntimeError(f"unexpected fake server output: {line!r}")
        return FakeServer(process, int(match.group(1)))
    except BaseException:
        stop_fake_server(FakeServer(process, 0))
        raise


def stop_fake_server(server: FakeServer) -> int | None:
    """SIGTERM, then SIGKILL of its session; the connections it accepted, if it said."""
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(10)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(10)
    output = b""
    if process.stdout is not None:
        output = process.stdout.read()
        process.stdout.close()
    match = re.search(rb"CONNECTIONS (\d+)", output)
    return int(match.group(1)) if match else None


def configure_fake(client: Any, args: argparse.Namespace, *, errors: bool) -> None:
    """``sim`` with the bench's error rate (or none, for warm-up); ``sim-backup`` healthy.

    Configuring a model restarts its random sequence at ``seed``; stats are cleared.
    """
    client.configure("sim", latency_ms=args.latency_ms, error_status=500, seed=args.seed,
                     error_rate=args.error_rate if errors else 0.0)
    client.configure("sim-backup", latency_ms=args.latency_ms, seed=args.seed)
    client.reset_stats()


# -- catalogue and environment -----------------------------------------------------------------


def write_catalogue(path: Path, server_url: str, *, fallback: bool) -> None:
    fallbacks = "[sim-backup]" if fallback else "[]"
    path.write_text(f"""\
# Written by bench/providers.py: the fake OpenAI-compatible server, two models on it.
providers:
  fake:
    kind: openai
    base_url: "{server_url}"
    api_key_env: {KEY_ENV}
models:
  sim:
    provider: fake
    retries: {RETRIES}
    timeout: 30
    # fail_max {FAIL_MAX}: the breaker must not open on random errors (this bench measures
    # retries); {FAIL_MAX} consecutive 500s at p = 0.3 has probability ~0.
    breaker: {{fail_max: {FAIL_MAX}, reset_timeout: 30}}
    fallbacks: {fallbacks}
  sim-backup:
    provider: fake
    retries: {RETRIES}
    timeout: 30
default_model: sim
""")


def environment(tmp: Path, catalogue: Path, database: str) -> dict[str, str]:
    """This process's and the workers' ORCH_* settings (set before the engine is imported)."""
    os.environ.update({
        "ORCH_BROKER_URL": REDIS_URL,
        "ORCH_RESULT_BACKEND": REDIS_URL,
        "ORCH_DATABASE_URL": database,
        "ORCH_MODELS_FILE": str(catalogue),
        "ORCH_IMPORTS": "bench.provider_workflows",
        KEY_ENV: KEY,
    })
    os.environ.pop("ORCH_REDIS_URL", None)  # breaker state: the broker's Redis (DB 14)
    os.environ.pop("BENCH_EXPERIMENT", None)
    os.environ.pop("BENCH_PROVIDERS_WHAT_IF", None)
    return child_env()


# -- one row -----------------------------------------------------------------------------------


@dataclass
class Row:
    variant: str
    drain: bool = False  # all runs queued before the worker started
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    unfinished: int = 0
    answered_by: collections.Counter[str] = field(default_factory=collections.Counter)
    run_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)  # submit (created) -> finished, s
    queued: list[float] = field(default_factory=list)  # created -> step started, s
    slots: list[float] = field(default_factory=list)  # step (task) started -> finished, s
    wall: float = 0.0  # first submit -> last finish, s
    client_wall: float = 0.0  # first submit -> all seen terminal by this process, s
    submit: float = 0.0  # seconds spent submitting
    server: dict[str, dict[str, Any]] = field(default_factory=dict)
    worker_cpu: float = 0.0
    client_cpu: float = 0.0
    profile: list[tuple[list[str], int]] | None = None
    profile_mode: str = ""
    connections: int | None = None  # TCP connections the fake accepted (warm-up included)

    @property
    def requests(self) -> int:
        return sum(stats["requests"] for stats in self.server.values())

    def peak_in_flight(self, latency_s: float) -> int:
        """Most requests that arrived within one latency of each other (= in flight)."""
        times = sorted(t for stats in self.server.values() for t in stats["timestamps"])
        peak, start = 0, 0
        for end, arrived in enumerate(times):
            while times[start] <= arrived - latency_s:
                start += 1
            peak = max(peak, end - start + 1)
        return peak


def _read_engine() -> Any:
    from sqlalchemy import create_engine

    return create_engine(os.environ["ORCH_DATABASE_URL"])


def _terminal_count(engine: Any, workflow: str) -> int:
    from sqlalchemy import func, select

    from orchestration.core.status import TERMINAL_RUN_STATUSES
    from orchestration.store.models import RunRow

    query = select(func.count()).select_from(RunRow).where(
        RunRow.workflow == workflow, RunRow.status.in_([s.value for s in TERMINAL_RUN_STATUSES]))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _wait_terminal(engine: Any, workflow: str, expected: int, deadline: float) -> int:
    while True:
        done = _terminal_count(engine, workflow)
        if done >= expected or time.monotonic() >= deadline:
            return done
        time.sleep(POLL)


def run_row(row: Row, args: argparse.Namespace, tmp: Path, fake: Any,
            start: Callable[[], AbstractContextManager[Any]], warm_up: Callable[[Any], None],
            submit: Callable[[], None], wait: Callable[[], None]) -> None:
    """Warm up, submit every run and wait for them, measuring time and CPU.

    A normal row submits while its worker runs. A pre-filled (drain) row warms a first
    worker up and stops it, submits every run, then starts a second worker: its CPU less
    the first one's start-up CPU is the drain's, and ``--profile`` covers the drain.
    """
    if not row.drain:
        with start() as worker:
            warm_up(worker)
            configure_fake(fake, args, errors=True)
            cpu0, client0 = session_cpu(worker.process.pid), time.process_time()
            began = time.perf_counter()
            submit()
            row.submit = time.perf_counter() - began
            wait()
            row.client_wall = time.perf_counter() - began
            row.worker_cpu = session_cpu(worker.process.pid) - cpu0
            row.client_cpu = time.process_time() - client0
        return
    with start() as worker:
        start_up = session_cpu(worker.process.pid)  # imports, pool, connections: no task yet
        warm_up(worker)
    configure_fake(fake, args, errors=True)
    began = time.perf_counter()
    submit()
    row.submit = time.perf_counter() - began
    client0 = time.process_time()
    with start() as worker:
        spy = _start_spy(worker.process.pid, tmp, row.variant, args.profile) \
            if args.profile else None
        try:
            wait()
            row.client_wall = time.perf_counter() - began
            row.worker_cpu = max(0.0, session_cpu(worker.process.pid) - start_up)
            row.client_cpu = time.process_time() - client0
        finally:
            if spy is not None:
                row.profile = _stop_spy(*spy)
                row.profile_mode = args.profile
                if args.keep_logs:
                    print(f"py-spy samples: {spy[1]}", file=sys.stderr)


def measure_engine(variant: str, args: argparse.Namespace, env: dict[str, str], tmp: Path,
                   server: FakeServer, fake: Any) -> Row:
    """One engine row (``drain``: the primary workflow, queue filled before a worker starts)."""
    from bench.provider_workflows import WORKFLOWS
    from orchestration import default_orchestrator

    row = Row(variant, drain=variant == "drain")
    workflow = WORKFLOWS["primary" if row.drain else variant]
    app = default_orchestrator().celery
    reader = _read_engine()
    baseline = _terminal_count(reader, workflow.name) + WARMUP
    ids: list[str] = []
    done = 0

    def start() -> AbstractContextManager[Any]:
        return running_worker(f"llm-{variant}", "orchestration", ENGINE_QUEUE, "threads",
                              args.concurrency, env, tmp, make_ping(app))

    def warm_up(worker: Any) -> None:
        configure_fake(fake, args, errors=False)
        for i in range(WARMUP):  # imports, the HTTP pool, DB connections
            workflow.submit(i=-1 - i)
        if _wait_terminal(reader, workflow.name, baseline, time.monotonic() + 60) < baseline:
            raise RuntimeError(f"{variant}: warm-up runs did not finish:\n{worker.log_tail()}")

    def submit() -> None:
        ids.extend(submit_all(workflow, args.calls, args.submitters))

    def wait() -> None:
        nonlocal done
        done = _wait_terminal(reader, workflow.name, baseline + args.calls,
                              time.monotonic() + args.deadline) - baseline

    run_row(row, args, tmp, fake, start, warm_up, submit, wait)
    if done < args.calls:
        print(f"  {variant}: only {done} of {args.calls} runs terminal after "
              f"{args.deadline:g} s", file=sys.stderr)
    row.server = fake.stats()
    _read_runs(reader, workflow.name, set(ids), row)
    reader.dispose()
    return row


def submit_all(workflow: Any, count: int, threads: int) -> list[str]:
    """Submit ``count`` runs (inputs 0..count-1) from ``threads`` threads; their run ids."""
    if threads <= 1:
        return [workflow.submit(i=i).run_id for i in range(count)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads, thread_name_prefix="submit") as pool:
        return list(pool.map(lambda i: workflow.submit(i=i).run_id, range(count)))


def _read_runs(engine: Any, workflow: str, ids: set[str], row: Row) -> None:
    from sqlalchemy import select

    from orchestration.store.models import RunRow, StepRow

    query = (select(RunRow.id, RunRow.status, RunRow.created_at, RunRow.finished_at,
                    RunRow.error, StepRow.started_at, StepRow.finished_at.label("step_finished"),
                    StepRow.status.label("step_status"), StepRow.attempts, StepRow.output,
                    StepRow.error.label("step_error"))
             .join(StepRow, StepRow.run_id == RunRow.id).where(RunRow.workflow == workflow))
    with engine.connect() as conn:
        rows = [r for r in conn.execute(query) if r.id in ids]
    row.total = len(ids)
    first = min(_utc(r.created_at) for r in rows)
    last = first
    for r in rows:
        if r.status == "succeeded":
            row.succeeded += 1
            row.answered_by[str(r.output)] += 1
        elif r.status in ("failed", "cancelled"):
            row.failed += 1
            row.run_errors[_short_error(r.step_error or r.error)] += 1
        else:
            row.unfinished += 1
            row.run_errors[f"unfinished: run {r.status}, step {r.step_status} after "
                           f"{r.attempts} attempt(s)"] += 1
            continue
        row.latencies.append((_utc(r.finished_at) - _utc(r.created_at)).total_seconds())
        if r.started_at is not None:
            row.queued.append((_utc(r.started_at) - _utc(r.created_at)).total_seconds())
            if r.step_finished is not None:
                row.slots.append((_utc(r.step_finished) - _utc(r.started_at)).total_seconds())
        last = max(last, _utc(r.finished_at))
    row.unfinished += len(ids) - len(rows)
    if row.drain:  # the worker's time: first step started -> last run finished
        first = min(_utc(r.started_at) for r in rows if r.started_at is not None)
    row.wall = (last - first).total_seconds()


def _utc(moment: datetime) -> datetime:
    """Timestamps read back from SQLite may be naive; the engine writes UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _short_error(error: str | None) -> str:
    if not error:
        return "(no error text)"
    return re.sub(r"\s+", " ", error.strip().splitlines()[-1])[:110]


def measure_raw(variant: str, args: argparse.Namespace, env: dict[str, str], tmp: Path,
                server: FakeServer, fake: Any) -> Row:
    """The raw Celery row (``raw-drain``: queue filled before a worker starts)."""
    row = Row(variant, drain=variant == "raw-drain")
    models = ["sim"]
    results: list[Any] = []
    sent: list[float] = []
    outcomes: list[dict[str, Any] | None] = []

    def start() -> AbstractContextManager[Any]:
        return running_worker(f"llm-{variant}", "bench.providers:raw_llm", RAW_QUEUE,
                              "threads", args.concurrency, env, tmp, make_ping(raw_llm))

    def warm_up(worker: Any) -> None:
        configure_fake(fake, args, errors=False)
        warm = [raw_ask.apply_async((-1 - i, server.url, models, RETRIES))
                for i in range(WARMUP)]
        for result in warm:
            result.get(timeout=60)

    def submit() -> None:
        for i in range(args.calls):
            sent.append(time.time())
            results.append(raw_ask.apply_async((i, server.url, models, RETRIES)))

    def wait() -> None:
        deadline = time.monotonic() + args.deadline
        for result in results:
            try:
                outcomes.append(result.get(timeout=max(0.01, deadline - time.monotonic())))
            except Exception:  # celery.exceptions.TimeoutError, or a crashed task
                outcomes.append(None)

    run_row(row, args, tmp, fake, start, warm_up, submit, wait)
    row.server = fake.stats()
    row.total = args.calls
    first, last = float("inf"), 0.0
    for sent_at, outcome in zip(sent, outcomes, strict=True):
        if outcome is None:
            row.unfinished += 1
            continue
        if outcome["ok"]:
            row.succeeded += 1
            row.answered_by[outcome["model"]] += 1
        else:
            row.failed += 1
            row.run_errors[_short_error(outcome["error"])] += 1
        row.latencies.append(outcome["finished"] - sent_at)
        row.slots.append(outcome["finished"] - outcome["started"])
        first = min(first, outcome["started"] if row.drain else sent_at)
        last = max(last, outcome["finished"])
    row.wall = last - first if last else float("nan")
    return row


# -- py-spy ------------------------------------------------------------------------------------


def _start_spy(pid: int, tmp: Path, label: str,
               mode: str) -> tuple[subprocess.Popen[bytes], Path]:
    """py-spy on the worker: ``gil`` samples the GIL holder, ``wall`` every thread, idle too."""
    out = tmp / f"{label}.pyspy-{mode}.txt"
    flags = ["--gil", "--rate", str(SPY_RATE)] if mode == "gil" else \
        ["--idle", "--rate", str(SPY_WALL_RATE)]
    spy = subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(pid), "--nonblocking", *flags,
         "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    return spy, out


def _stop_spy(spy: subprocess.Popen[bytes], out: Path) -> list[tuple[list[str], int]]:
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        _, err = spy.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(spy.pid, signal.SIGKILL)
        _, err = spy.communicate()
    if not out.exists():
        print(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        return []
    stacks = []
    for line in out.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


# Exclusive buckets: the first whose pattern matches any frame of a sample's stack.
BUCKETS: list[tuple[str, str]] = [
    ("HTTP call (providers/http.py, http.client, httpx)",
     r"\((httpx|httpcore|h11|http/client|orchestration/providers/http)"),
    ("results DB (SQLAlchemy + sqlite3, orchestration.store)",
     r"\((sqlalchemy|orchestration/store)/"),
    ("breaker (pybreaker + its state in Redis)", r"\((pybreaker|orchestration/breakers)"),
    ("adaptive latencies / rate limits (Redis)", r"\(orchestration/(adaptive|ratelimit)"),
    ("logging (Celery's per-task INFO lines, structlog)", r"\((structlog|logging)/"),
    ("engine Python (runtime, llm, envelope, tenacity)", r"\((orchestration|tenacity)/"),
    ("Celery result backend + task events (Redis)", r"\(celery/(backends|events)/"),
    ("Celery/kombu: intake, dispatch, ack", r"\((celery|kombu|billiard|redis|vine|amqp)/"),
    ("other (threading, stdlib)", r"."),
]


def print_profile(label: str, stacks: list[tuple[list[str], int]], runs: int,
                  cpu_per_run: float) -> None:
    total = sum(count for _, count in stacks)
    if not total:
        print(f"\nprofile of {label}: no samples")
        return
    buckets = [(name, re.compile(pattern)) for name, pattern in BUCKETS]
    by_bucket: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    main_thread = 0
    for frames, count in stacks:
        name = next(n for n, pattern in buckets if any(pattern.search(f) for f in frames))
        by_bucket[name] += count
        if frames and frames[0].startswith("_run_module_as_main"):
            main_thread += count
        if frames:
            leaves[re.sub(r":\d+\)$", ")", frames[-1])] += count
    print(f"\nWho holds the GIL in the worker of row '{label}' (py-spy --gil --rate {SPY_RATE}: "
          f"{total} samples = {total / SPY_RATE:.1f} s\n  of GIL held over {runs} runs; the "
          f"worker's measured CPU was {cpu_per_run * 1000:.1f} ms/run; ms/run below = share "
          "x that CPU):")
    print(f"  {'bucket (exclusive, first match on the stack)':<60}{'share':>7}{'ms/run':>8}")
    for name, _ in BUCKETS:
        share = by_bucket[name] / total
        print(f"  {name:<60}{share:>7.1%}{share * cpu_per_run * 1000:>8.2f}")
    print(f"  of which in the main thread (Celery consumer loop): {main_thread / total:.1%}")
    print("  top leaf frames:")
    for frame, count in leaves.most_common(12):
        print(f"    {count / total:6.1%}  {frame[:110]}")


# Where a worker thread is, idle included (--profile wall): first match wins.
WALL: list[tuple[str, str]] = [
    ("main thread: waiting in epoll (consumer loop idle)",
     r"^_run_module_as_main.*_epoll\.poll \(kombu"),
    ("main thread: working (receive, dispatch, events)", r"^_run_module_as_main"),
    ("step: HTTP call (httpx)", r"run_step \(orchestration/runtime.*\((httpx|httpcore)/"),
    ("step: retry backoff sleep (ctx.llm, tenacity)",
     r"run_step \(orchestration/runtime.*\(tenacity/nap"),
    ("step: breaker (its process-wide lock + Redis state)",
     r"run_step \(orchestration/runtime.*\((pybreaker|orchestration/breakers)"),
    ("step: SQLite write lock wait (BEGIN IMMEDIATE)",
     r"run_step \(orchestration/runtime.*_on_begin \(orchestration/store"),
    ("step: results DB, other",
     r"run_step \(orchestration/runtime.*\((sqlalchemy|orchestration/store)/"),
    ("step: other engine code", r"run_step \(orchestration/runtime"),
    ("Celery task outside the step (result backend, events, ack)",
     r"(trace_task|build_tracer)"),
    ("pool thread idle (no task)", r"_worker \(concurrent/futures/thread"),
    ("other", r"."),
]


def print_wall_profile(label: str, stacks: list[tuple[list[str], int]]) -> None:
    total = sum(count for _, count in stacks)
    if not total:
        print(f"\nprofile of {label}: no samples")
        return
    patterns = [(name, re.compile(pattern)) for name, pattern in WALL]
    counts: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        joined = ";".join(frames)
        counts[next(name for name, pattern in patterns if pattern.search(joined))] += count
    steps = sum(count for name, count in counts.items() if name.startswith("step:"))
    print(f"\nWhere the worker's threads are in row '{label}' (py-spy --idle --rate "
          f"{SPY_WALL_RATE}, {total} thread-samples):")
    print(f"  {'state (first match)':<62}{'of all':>8}{'of step time':>14}")
    for name, _ in WALL:
        of_steps = f"{counts[name] / steps:.1%}" if name.startswith("step:") and steps else ""
        print(f"  {name:<62}{counts[name] / total:>8.1%}{of_steps:>14}")


# -- report ------------------------------------------------------------------------------------


def expected_calls(p: float, retries: int, fallback: bool) -> float:
    """Expected server calls per run: sum of p**k over the attempts, + backup if all fail."""
    per_model = sum(p ** k for k in range(retries + 1))
    return per_model + (p ** (retries + 1) if fallback else 0.0)


def expected_backoff(p: float) -> float:
    """Expected seconds a run sleeps between its retries of sim (jitter mean included)."""
    initial, maximum, multiplier, jitter = BACKOFF
    return sum(p ** k * (min(maximum, initial * multiplier ** (k - 1)) + jitter / 2)
               for k in range(1, RETRIES + 1))


def report(args: argparse.Namespace, rows: list[Row], info: dict[str, str],
           elapsed: float) -> None:
    import celery
    import httpx

    p, latency, n, c = args.error_rate, args.latency_ms / 1000, args.calls, args.concurrency
    ideal = n * latency / c
    ideal_retries = n / (1 - p) * latency / c
    ideal_backoff = n * (expected_calls(p, RETRIES, False) * latency + expected_backoff(p)) / c
    initial, maximum, multiplier, _ = BACKOFF
    chain = (RETRIES + 1) * latency + sum(min(maximum, initial * multiplier ** k)
                                          for k in range(RETRIES))
    print()
    print(f"Model calls through the engine: {n} one-call runs, {args.latency_ms:g} ms simulated "
          f"latency, {p:.0%} HTTP 500 (seed {args.seed})")
    if args.what_if:
        print(f"  !! WHAT-IF {args.what_if}: the engine workers are patched by "
              "bench/provider_workflows.py; NOT the engine as shipped")
    print(f"  machine : {machine()}; {load_figures(info['load_start'])}")
    print(f"  engine  : {info['revision']}; python {platform.python_version()}, "
          f"celery {celery.__version__}, httpx {httpx.__version__}")
    print(f"  setup   : fake OpenAI server in its own process (listen backlog "
          f"{args.fake_backlog or 'as shipped, 5'}); one worker -P threads -c {c} per row; "
          f"Redis {REDIS_URL};\n            SQLite results DB; runs submitted from this process "
          f"({'a loop' if args.submitters <= 1 else f'{args.submitters} threads'})")
    print(f"  models  : sim retries {RETRIES} (<= {RETRIES + 1} calls; ctx.llm's backoff "
          f"0.2/0.4/0.8 s + <= 0.1 s jitter); breaker fail_max {FAIL_MAX}: it never opens on "
          "random\n            errors (this measures retries, not the breaker); sim-backup: same "
          "fake and latency, 0% errors")
    print(f"  ideal   : calls x latency / concurrency = {n} x {latency * 1000:g} ms / {c} = "
          f"{ideal:.2f} s; with the retries p implies\n            (1/(1-p) = {1 / (1 - p):.3f} "
          f"calls per success) {ideal_retries:.2f} s  <- the ideal in 'ideal/wall'")
    backoff_ms = expected_backoff(p) * 1000
    print(f"  floors  : ctx.llm's backoff sleeps hold the slot too ({backoff_ms:.0f}"
          f" ms/run expected): {ideal_backoff:.2f} s; a run that needs all {RETRIES + 1} calls "
          f"takes >= {chain:.2f} s\n            by itself, and at p = {p:g} about "
          f"{n * p ** RETRIES:.0f} of {n} runs need {RETRIES + 1} calls")
    print()
    header = (f"{'row':<29}{'done':>9}{'calls/succ':>11}{'wall s':>8}{'ideal/wall':>11}"
              f"{'runs/s':>7}{'p50 ms':>8}{'p95 ms':>8}{'queued':>8}{'slot p50':>9}"
              f"{'in flight':>10}{'CPU ms/run':>11}{'worker CPU s':>13}")
    print(header)
    print("-" * len(header))
    for row in rows:
        finished = row.succeeded + row.failed
        calls = row.requests / row.succeeded if row.succeeded else float("nan")
        p50 = f"{statistics.median(row.latencies) * 1000:.0f}" if row.latencies else "-"
        p95 = f"{percentile(row.latencies, 95) * 1000:.0f}" if row.latencies else "-"
        queued = f"{statistics.median(row.queued) * 1000:.0f}" if row.queued else "-"
        slot = f"{statistics.median(row.slots) * 1000:.0f}" if row.slots else "-"
        if row.drain:  # latency would be mostly the time spent queued before the worker
            p50 = p95 = queued = "-"
        cpu = f"{row.worker_cpu / n * 1000:.1f}+{row.client_cpu / n * 1000:.1f}"
        print(f"{LABEL[row.variant]:<29}{f'{row.succeeded}/{row.total}':>9}{calls:>11.3f}"
              f"{row.wall:>8.2f}{ideal_retries / row.wall:>10.0%} {finished / row.wall:>7.0f}"
              f"{p50:>8}{p95:>8}{queued:>8}{slot:>9}{row.peak_in_flight(latency):>10}"
              f"{cpu:>11}{row.worker_cpu:>13.2f}")
    print()
    with_backup = expected_calls(p, RETRIES, True)
    print(f"done: runs succeeded / submitted.  calls/succ: requests at the fake / successes "
          f"(1/(1-p) = {1 / (1 - p):.3f}; with the fallback,\n  {with_backup:.3f}"
          " per run).  wall: first submit -> last finish (engine: DB timestamps; raw: task finish"
          " times);\n  pre-filled rows: first step start -> last finish, the worker alone.  "
          "p50/p95: run latency, submit -> finished.\n  queued: submit -> step started.  slot "
          "p50: step (raw: task) started -> finished, how long a run holds a worker thread.\n"
          "  in flight: peak requests at the fake within one latency.  CPU ms/run: worker + this "
          "process (pre-filled rows:\n  the drain only).  worker CPU s: total; one threads-pool "
          "process runs Python on one core at a time (GIL),\n  so this is roughly the least wall "
          "time that worker can take.")
    print()
    for row in rows:
        statuses: collections.Counter[str] = collections.Counter()
        for model, stats in sorted(row.server.items()):
            for status, count in stats["statuses"].items():
                statuses[f"{model} {status}"] += count
        mix = ", ".join(f"{key}: {count}" for key, count in sorted(statuses.items()))
        errors = sum(count for key, count in statuses.items() if not key.endswith(" 200"))
        answered = ", ".join(f"{k}: {v}" for k, v in row.answered_by.most_common())
        print(f"{LABEL[row.variant]}: submit {row.submit:.2f} s ({row.submit / n * 1000:.1f} "
              f"ms/run), all seen terminal {row.client_wall:.2f} s after the first submit")
        print(f"  error mix at the fake: {mix or '-'} ({errors / max(row.requests, 1):.1%} "
              f"errors); answered by {answered or '-'}")
        if row.connections is not None:
            print(f"  TCP connections the fake accepted: {row.connections} for "
                  f"{row.requests} requests (+{WARMUP} warm-up calls)")
        if row.failed or row.unfinished:
            text = "; ".join(f"{count} x {error}" for error, count in row.run_errors.most_common(4))
            print(f"  failed runs: {row.failed} ({text}); unfinished: {row.unfinished}")
    for row in rows:
        if row.profile is not None and row.profile_mode == "gil":
            print_profile(LABEL[row.variant], row.profile, n, row.worker_cpu / n)
        elif row.profile is not None:
            print_wall_profile(LABEL[row.variant], row.profile)
    print(f"\nwhole bench: {elapsed:.1f} s")


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="one-call runs per row")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--error-rate", type=float, default=0.3)
    parser.add_argument("--concurrency", type=int, default=200, help="worker threads")
    parser.add_argument("--seed", type=int, default=1234, help="the fake's error sequence")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        type=lambda text: [v for v in text.split(",") if v])
    parser.add_argument("--submitters", type=int, default=1,
                        help="threads submitting runs (1: a plain loop)")
    parser.add_argument("--fake-backlog", type=int, default=1024,
                        help="listen backlog of the fake server (0: its default, 5)")
    parser.add_argument("--deadline", type=float, default=120.0,
                        help="seconds to wait for a row's runs after the first submit")
    parser.add_argument("--profile", choices=("gil", "wall"), default=None,
                        help="py-spy the worker of the pre-filled rows (drain, raw-drain): "
                             "who holds the GIL, or where every thread is (idle included)")
    parser.add_argument("--what-if", choices=("breaker-memory", "breaker-off"), default=None,
                        help="patch the engine in the workers (bench/provider_workflows.py): "
                             "breaker state in memory, or no breaker; labelled, not as shipped")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if not 0 <= args.error_rate < 1 or args.calls < 1 or args.concurrency < 1:
        parser.error("need 0 <= --error-rate < 1, --calls >= 1, --concurrency >= 1")
    if args.profile and not PY_SPY.exists():
        parser.error(f"--profile needs py-spy at {PY_SPY}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    began = time.monotonic()
    info = {"load_start": f"{os.getloadavg()[0]:.2f}", "revision": _revision()}
    if int((urlparse(REDIS_URL).path or "/0").lstrip("/") or 0) == FORBIDDEN_REDIS_DB:
        raise SystemExit("refusing to use Redis DB 15 (the tests' database)")
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-providers-"))
    flush_bench_db(REDIS_URL)
    rows: list[Row] = []
    try:
        from tests.fakes.llm_server import FakeLLMClient

        database = f"sqlite:///{tmp / 'bench.db'}"
        # This process never calls a model: its catalogue only has to be valid.
        placeholder = tmp / "models-client.yaml"
        write_catalogue(placeholder, "http://127.0.0.1:9/v1", fallback=True)
        env = environment(tmp, placeholder, database)
        if args.what_if:
            env["BENCH_PROVIDERS_WHAT_IF"] = args.what_if  # the workers only
        from orchestration import default_orchestrator

        default_orchestrator().store.ensure_schema()  # migrate once, before any worker
        for variant in args.variants:
            print(f"{LABEL[variant]}: {args.calls} runs ...", file=sys.stderr, flush=True)
            row_began = time.monotonic()
            flush_bench_db(REDIS_URL)  # no queue, result or breaker state left from a row
            server = start_fake_server(args.fake_backlog)  # a fresh one per row
            try:
                with FakeLLMClient(server.url) as fake:
                    if variant in ("raw", "raw-drain"):
                        row = measure_raw(variant, args, env, tmp, server, fake)
                    else:
                        catalogue = tmp / f"models-{variant}.yaml"
                        write_catalogue(catalogue, server.url, fallback=variant == "fallback")
                        row_env = dict(env, ORCH_MODELS_FILE=str(catalogue))
                        row = measure_engine(variant, args, row_env, tmp, server, fake)
            finally:
                connections = stop_fake_server(server)
            row.connections = connections
            rows.append(row)
            print(f"  {row.succeeded}/{row.total} succeeded, {row.unfinished} unfinished; row took "
                  f"{time.monotonic() - row_began:.1f} s", file=sys.stderr, flush=True)
        report(args, rows, info, time.monotonic() - began)
        lost = sum(row.unfinished for row in rows)
        if lost:
            print(f"bench incomplete: {lost} run(s) not terminal by the deadline", file=sys.stderr)
        return 1 if lost else 0
    finally:
        flush_bench_db(REDIS_URL)
        import orchestration.app

        if orchestration.app._default() is not None:
            orchestration.app.default_orchestrator().reset_store()
        if args.keep_logs:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
