"""The run stream's cost, and how fast a token reaches a client of ``handle.stream()``.

1. **Cost**: the same 3-step workflow (intake -> draft, which streams a 30-word answer
   with ``ctx.llm.stream`` from the fake provider of tests/fakes/llm_server.py over real
   HTTP -> publish) on the embedded default with the run stream on and off
   (``ORCH_STREAM``), rounds alternating in one process; runs submitted one after
   another, wall time from submit to ``handle.wait()``. Printed: medians and the on/off
   ratio, per stream backend (the results DB; with ``--redis``, also Redis Streams on
   DB 14 of 127.0.0.1:6379, flushed at start and end).
2. **Latency**: the fake provider sends the answer a word every ``--chunk-ms`` ms and
   notes when each word left it; the client reads ``handle.stream()`` in this process
   while the run goes and notes when each token event arrived. Printed: p50/p99 of
   (read - sent) over every token of ``--latency-runs`` runs.

    .venv/bin/python bench/stream.py [--runs 60] [--rounds 3] [--redis]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from orchestration import RunStatus, StepContext, Workflow  # noqa: E402
from orchestration.app import Orchestrator  # noqa: E402
from orchestration.testing import embedded_orchestrator  # noqa: E402
from tests.fakes.llm_server import FakeLLMServer  # noqa: E402

KEY_ENV = "BENCH_FAKE_LLM_KEY"
MODEL = "streamer"
REPLY = " ".join(f"word{i}" for i in range(30))
REDIS_URL = "redis://127.0.0.1:6379/14"


def declare(orch: Orchestrator) -> Workflow:
    wf = Workflow("bench_stream", inputs=["text"], app=orch)

    @wf.task
    def intake(text: str, ctx: StepContext) -> str:
        ctx.partial({"chars": len(text)})
        return text

    @wf.task(depends_on=intake)
    def draft(intake: str, ctx: StepContext) -> str:
        return "".join(ctx.llm.stream(f"Reply to: {intake}", model=MODEL))

    @wf.task(depends_on=draft)
    def publish(draft: str) -> int:
        return len(draft)

    return wf


def catalogue(directory: Path, url: str) -> Path:
    path = directory / "models.yaml"
    path.write_text(f"providers:\n  fake: {{kind: openai, base_url: \"{url}\", "
                    f"api_key_env: {KEY_ENV}}}\nmodels:\n  {MODEL}: {{provider: fake}}\n")
    return path


def timed_runs(wf: Workflow, runs: int) -> list[float]:
    out = []
    for index in range(runs):
        started = time.perf_counter()
        result = wf.submit(text=f"ticket {index}").wait(timeout=60)
        out.append((time.perf_counter() - started) * 1000)
        assert result.status is RunStatus.SUCCEEDED, result.steps
    return out


def cost(server: FakeLLMServer, directory: Path, runs: int, rounds: int,
         redis_url: str | None) -> tuple[float, float]:
    server.configure(MODEL, reply=REPLY)
    models = catalogue(directory, server.url)
    times: dict[bool, list[float]] = {True: [], False: []}
    with embedded_orchestrator(directory / "cost", models_file=models,
                               redis_url=redis_url) as orch:
        wf = declare(orch)
        timed_runs(wf, 5)  # warm up: worker threads, connections, schema
        for _ in range(rounds):
            for mode in (True, False):
                orch.settings.stream = mode  # read by every delivery: the same workflow
                times[mode] += timed_runs(wf, runs)
    return statistics.median(times[True]), statistics.median(times[False])


def latency(server: FakeLLMServer, directory: Path, runs: int, chunk_ms: float,
            redis_url: str | None) -> list[float]:
    server.configure(MODEL, reply=REPLY, chunk_delay_ms=chunk_ms)
    models = catalogue(directory, server.url)
    gaps: list[float] = []
    with embedded_orchestrator(directory / "latency", models_file=models,
                               redis_url=redis_url) as orch:
        wf = declare(orch)
        timed_runs(wf, 2)
        for index in range(runs):
            server.reset_stats()
            handle = wf.submit(text=f"latency {index}")
            read = [time.time() for event in handle.stream(timeout=60, poll=0.5)
                    if event.type == "token"]
            sent = server.stats()[MODEL]["chunks_sent"]
            assert len(sent) == len(read) == len(REPLY.split()), (len(sent), len(read))
            gaps += [(r - s) * 1000 for r, s in zip(read, sent, strict=True)]
    return gaps


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(label: str, measure: Callable[[], tuple[float, float]],
           lat: Callable[[], list[float]]) -> None:
    on, off = measure()
    gaps = lat()
    print(f"{label:<14} run on {on:7.1f} ms   off {off:7.1f} ms   ratio {on / off:5.2f}x   "
          f"token->client p50 {percentile(gaps, 0.5):5.1f} ms  p99 {percentile(gaps, 0.99):5.1f}"
          f" ms  ({len(gaps)} tokens)")


def measure(server: FakeLLMServer, label: str, url: str | None,
            args: argparse.Namespace) -> None:
    client = redis.Redis.from_url(url) if url else None
    if client is not None:
        client.flushdb()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            report(label, lambda: cost(server, directory, args.runs, args.rounds, url),
                   lambda: latency(server, directory, args.latency_runs, args.chunk_ms, url))
    finally:
        if client is not None:
            client.flushdb()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=60, help="runs per mode per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=10)
    parser.add_argument("--chunk-ms", type=float, default=20.0)
    parser.add_argument("--redis", action="store_true", help="also on Redis Streams (DB 14)")
    args = parser.parse_args(argv)
    os.environ[KEY_ENV] = "sk-bench"
    print(f"load average {os.getloadavg()[0]:.1f}; {args.runs} runs x {args.rounds} rounds "
          f"per mode; answer {len(REPLY.split())} chunks")
    backends: list[tuple[str, str | None]] = [("results DB", None)]
    if args.redis:
        backends.append(("Redis Streams", REDIS_URL))
    with FakeLLMServer() as server:
        for label, url in backends:
            measure(server, label, url, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
