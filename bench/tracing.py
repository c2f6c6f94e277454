"""The cost of OpenTelemetry tracing on the step hot path: off (the default) against on.

Two measurements in one process, rounds alternating off/on:

1. the hooks alone, per step attempt with one model call: ``start_attempt``, one
   ``model_call``, ``end_attempt`` and the ``traceparent`` put on the next message
   (``inject``); "on" exports to an in-memory exporter through a ``SimpleSpanProcessor``
   and, separately, through a ``BatchSpanProcessor`` (what OTLP uses) to an exporter
   that drops the spans (no network);
2. whole runs on the embedded default (a 3-step chain, one step calling the local
   model), sequential, median wall time per run.

    .venv/bin/python bench/tracing.py [--runs 200] [--rounds 3] [--hooks 20000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from orchestration import StepContext, Workflow
from orchestration.core.results import CallRecord
from orchestration.observe import tracing
from orchestration.store.repository import AttemptRecord
from orchestration.testing import embedded_orchestrator


class Dropping(SpanExporter):
    """Takes spans and drops them: the processor's and SDK's cost without a network."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@dataclass
class Attempt:
    run_id: str
    workflow: str = "bench"
    step: str = "draft"
    attempt: int = 1
    model: str | None = "gpt-4o-mini"
    map_index: int | None = None


CALL = CallRecord(model="gpt-4o-mini", ok=True, latency_ms=120.0, prompt_tokens=200,
                  completion_tokens=40, cost_usd=0.00006, breaker="closed")


def hooks(count: int) -> float:
    """Microseconds per attempt for the tracing hooks of one attempt with one call."""
    run_id = str(uuid.uuid4())
    attempt = Attempt(run_id)
    stamp = datetime.now(UTC)
    record = AttemptRecord(attempt=1, status="succeeded", started_at=stamp, finished_at=stamp,
                           model="gpt-4o-mini", cost_usd=0.00006, tokens_in=200,
                           tokens_out=40)
    started = time.perf_counter()
    for _ in range(count):
        span = tracing.start_attempt(attempt, queue="model.writer", redactor=None)
        if span is not None:
            span.model_call(CALL, "openai")
        tracing.end_attempt(span, record, None)
        tracing.inject({}, ({"run": run_id},), {})
    return (time.perf_counter() - started) / count * 1e6


def with_tracing(mode: str, measure: Callable[[], float]) -> float:
    if mode == "off":
        return measure()
    processor: Any = (SimpleSpanProcessor(InMemorySpanExporter()) if mode == "memory"
                      else BatchSpanProcessor(Dropping(), max_queue_size=1 << 16))
    tracing.install(processor)
    try:
        return measure()
    finally:
        tracing.uninstall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hooks", type=int, default=20_000)
    args = parser.parse_args()
    modes = ("off", "memory", "batch")

    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores, Python "
          f"{sys.version.split()[0]}")
    per_hook: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode in modes:
            per_hook[mode].append(with_tracing(mode, lambda: hooks(args.hooks)))
    print("\n1. hooks per attempt (start, one model call, end, inject), median of rounds:")
    for mode in modes:
        print(f"   {mode:<7} {statistics.median(per_hook[mode]):8.2f} us")

    with tempfile.TemporaryDirectory() as directory, \
            embedded_orchestrator(Path(directory), redis_url=None) as orch:
        wf = Workflow("bench_traced", inputs=["text"], app=orch)

        @wf.task()
        def one(text: str) -> str:
            return text

        @wf.task(depends_on=one, model="local-small")
        def two(one: str, ctx: StepContext) -> str:
            return ctx.llm.complete(one).text

        @wf.task(depends_on=two)
        def three(two: str) -> int:
            return len(two)

        def runs() -> float:
            times = []
            for index in range(args.runs):
                started = time.perf_counter()
                wf.run(text=f"ticket {index}", timeout=30)
                times.append(time.perf_counter() - started)
            return statistics.median(times) * 1000

        wf.run(text="warm-up", timeout=30)
        per_run: dict[str, list[float]] = {"off": [], "batch": []}
        for _ in range(args.rounds):
            for mode in per_run:
                per_run[mode].append(with_tracing(mode, runs))
    print(f"\n2. runs on the embedded default (3 steps, 1 model call), {args.runs} per round, "
          "median ms per run, per round:")
    for mode, values in per_run.items():
        print(f"   {mode:<7} {statistics.median(values):8.2f} ms  "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    ratio = statistics.median(per_run["batch"]) / statistics.median(per_run["off"])
    print(f"   on/off  {ratio:8.3f}x")


if __name__ == "__main__":
    main()
