"""OpenTelemetry: a run whose steps execute in two worker processes is one trace.

Two real workers (threads on queue A, prefork on queue B), each writing its finished
spans as JSON lines (``ORCH_OTEL_FILE``); the test process collects its own (the run's
root span, emitted at submit) with an in-memory exporter. Every span of the run carries
the run's trace id; attempts are children of the root span, the model call of its
attempt. With tracing off in the submitting process (no ``traceparent`` header on the
messages, no root span), the workers still put the run's spans in its trace.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestration import RunStatus
from orchestration.observe import tracing
from tests.integration.support.workflows import tracing as tw
from tests.support.polling import wait_until
from tests.support.processes import child_env
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

MODULE = "tests.integration.support.workflows.tracing"
RUN_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def fleet(redis_service: Any, postgres_database: str, worker_logs: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    directory = tmp_path_factory.mktemp("spans")
    files = {"a": directory / "a.jsonl", "b": directory / "b.jsonl"}
    pools = [Workers(worker_logs, env=child_env(imports=(MODULE,),
                                                ORCH_OTEL_FILE=str(files[name])))
             for name in ("a", "b")]
    try:
        a = pools[0].start("it-trace-a", [tw.QUEUE_A], pool="threads", concurrency=2,
                           wait=False)
        b = pools[1].start("it-trace-b", [tw.QUEUE_B], pool="prefork", concurrency=1,
                           wait=False)
        pools[0].wait_ready(a, timeout=90)
        pools[1].wait_ready(b, timeout=90)
        yield SimpleNamespace(files=files)
    finally:
        for pool in pools:
            pool.stop_all()


def spans_of(fleet: SimpleNamespace, run_id: str, count: int) -> dict[str, list[dict[str, Any]]]:
    """Each worker's spans of the run, once ``count`` of them were written in all."""
    trace_id = f"{uuid.UUID(run_id).int:032x}"

    def probe() -> dict[str, list[dict[str, Any]]] | None:
        found = {}
        for name, path in fleet.files.items():
            lines = path.read_text().splitlines() if path.exists() else []
            found[name] = [span for span in map(json.loads, lines)
                           if span["attributes"].get("orchestration.run_id") == run_id
                           or span["trace_id"] == trace_id]
        return found if sum(map(len, found.values())) >= count else None

    return wait_until(probe, timeout=10, what=f"{count} spans of run {run_id}")


def check_one_trace(spans: dict[str, list[dict[str, Any]]], run_id: str) -> None:
    trace_id = f"{uuid.UUID(run_id).int:032x}"
    root_id = f"{tracing.root_span_id_of(run_id):016x}"
    a, b = spans["a"], spans["b"]
    assert {span["trace_id"] for span in a + b} == {trace_id}
    assert {span["pid"] for span in a}.isdisjoint({span["pid"] for span in b})
    first = sorted((s for s in a if s["name"] == "step it_traced.first"),
                   key=lambda s: s["attributes"]["orchestration.attempt"])
    assert [(s["attributes"]["orchestration.attempt"], s["status"]) for s in first] == [
        (1, "ERROR"), (2, "UNSET")]
    assert first[0]["attributes"]["orchestration.error_kind"] == "error"
    assert first[0]["events"][0]["name"] == "exception"
    [second] = [s for s in b if s["name"] == "step it_traced.second"]
    [call] = [s for s in b if s["name"].startswith("chat ")]
    for span in (*first, second):
        assert span["parent_id"] == root_id
        assert span["attributes"]["orchestration.queue"] in (tw.QUEUE_A, tw.QUEUE_B)
    assert call["parent_id"] == second["span_id"]
    assert call["attributes"]["gen_ai.system"] == "local"
    assert call["attributes"]["gen_ai.usage.output_tokens"] > 0
    # Inputs, prompts and outputs never reach a span.
    text = json.dumps(a + b)
    assert "secret-input" not in text and "SECRET-INPUT" not in text


def test_steps_in_two_workers_join_the_runs_trace_under_its_root(fleet: SimpleNamespace) -> None:
    exporter = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(exporter))
    try:
        result = tw.traced.run(text="secret-input", timeout=RUN_TIMEOUT_S)
    finally:
        tracing.uninstall()
    assert result.status is RunStatus.SUCCEEDED, result.error
    [root] = [s for s in exporter.get_finished_spans()
              if s.attributes and s.attributes.get("orchestration.run_id") == result.run_id]
    assert root.name == "run it_traced"
    assert root.context.trace_id == uuid.UUID(result.run_id).int
    assert root.context.span_id == tracing.root_span_id_of(result.run_id)
    check_one_trace(spans_of(fleet, result.run_id, 4), result.run_id)


def test_without_tracing_in_the_submitter_the_workers_still_join_one_trace(
        fleet: SimpleNamespace) -> None:
    assert not tracing.enabled()
    result = tw.traced.run(text="secret-input", timeout=RUN_TIMEOUT_S)
    assert result.status is RunStatus.SUCCEEDED, result.error
    check_one_trace(spans_of(fleet, result.run_id, 4), result.run_id)
