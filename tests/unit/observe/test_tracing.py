"""OpenTelemetry tracing: a trace per run, a span per attempt and per model call.

End to end on an in-process worker with an in-memory exporter: the run's root span, the
attempts' spans under it (parented through the ``traceparent`` header the app puts on
step messages), model calls under their attempt with the GenAI attributes; failures are
ERROR with the (redacted) exception; no input, output or prompt on any span. Tracing off
(the default) builds no SDK and exports nothing.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import signals
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from orchestration import RunStatus, StepContext, StepStatus, Workflow
from orchestration.core.settings import Settings
from orchestration.observe import tracing
from orchestration.testing import embedded_orchestrator
from tests.fakes.llm_server import FakeLLMServer

KEY_ENV = "TEST_FAKE_LLM_KEY"
CATALOGUE = """
providers:
  fake: {kind: openai, base_url: "URL", api_key_env: TEST_FAKE_LLM_KEY}
models:
  writer: {provider: fake, input_cost_per_1k: 1.0, output_cost_per_1k: 2.0, retries: 0}
default_model: writer
"""
SECRET_INPUT = "my ticket text: the customer's password is hunter2-secret"
SECRET_KEY = "sk-ant-abcdefghijklmnopqrstuvwxyz"
CALLS: dict[str, int] = {}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    directory = tmp_path_factory.mktemp("tracing")
    with FakeLLMServer() as server:
        models = directory / "models.yaml"
        models.write_text(CATALOGUE.replace("URL", server.url))
        with embedded_orchestrator(directory, models_file=models, redis_url=None) as orch:
            wf = Workflow("traced", inputs=["text"], app=orch)

            @wf.task(queue="traced.q")
            def classify(text: str) -> str:
                return "billing"

            @wf.task(depends_on=classify, model="writer")
            def draft(text: str, classify: str, ctx: StepContext) -> str:
                return ctx.llm.complete(f"Reply to: {text}").text

            flaky = Workflow("traced_flaky", inputs=["key"], app=orch)

            @flaky.task(retries=1, fallback="sorry")
            def fail_then(key: str) -> str:
                CALLS[key] = CALLS.get(key, 0) + 1
                raise ValueError(f"upstream refused api_key={SECRET_KEY} for {key}")

            broken = Workflow("traced_broken", inputs=["text"], app=orch)

            @broken.task(model="writer", critical=False)
            def ask(text: str, ctx: StepContext) -> str:
                return ctx.llm.complete(text).text

            yield SimpleNamespace(orch=orch, server=server, wf=wf, flaky=flaky, broken=broken)


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-fake")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        tracing.uninstall()


def of_run(exporter: InMemorySpanExporter, run_id: str) -> list[ReadableSpan]:
    trace_id = uuid.UUID(run_id).int
    return [s for s in exporter.get_finished_spans()
            if s.context is not None and s.context.trace_id == trace_id]


def named(found: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return sorted((s for s in found if s.name.startswith(prefix)),
                  key=lambda s: s.start_time or 0)


def every_value(found: list[ReadableSpan]) -> str:
    values: list[Any] = []
    for span in found:
        values.extend((span.attributes or {}).values())
        for event in span.events:
            values.extend((event.attributes or {}).values())
    return json.dumps(values, default=str)


def test_a_run_is_one_trace_root_attempts_and_model_calls(
        env: SimpleNamespace, spans: InMemorySpanExporter) -> None:
    env.server.configure("writer", reply="We are on it.", prompt_tokens=42,
                         completion_tokens=7)
    handle = env.wf.submit(text=SECRET_INPUT)
    assert handle.wait(timeout=30).status is RunStatus.SUCCEEDED
    found = of_run(spans, handle.run_id)

    [root] = named(found, "run ")
    assert root.name == "run traced" and root.parent is None
    assert root.context.span_id == tracing.root_span_id_of(handle.run_id)
    assert dict(root.attributes or {}) == {"orchestration.workflow": "traced",
                                          "orchestration.run_id": handle.run_id}
    classify, draft = named(found, "step traced.classify") + named(found, "step traced.draft")
    for span in (classify, draft):
        assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert span.status.status_code is StatusCode.UNSET
        assert span.attributes["orchestration.run_id"] == handle.run_id
        assert span.attributes["orchestration.attempt"] == 1
        assert span.attributes["orchestration.status"] == "succeeded"
    assert classify.attributes["orchestration.queue"] == "traced.q"
    assert draft.attributes["orchestration.model"] == "writer"
    assert draft.attributes["gen_ai.usage.input_tokens"] == 42

    [call] = named(found, "chat ")
    assert call.parent is not None and call.parent.span_id == draft.context.span_id
    attributes = dict(call.attributes or {})
    assert attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.request.model"] == attributes["gen_ai.response.model"] == "writer"
    assert (attributes["gen_ai.usage.input_tokens"],
            attributes["gen_ai.usage.output_tokens"]) == (42, 7)
    assert attributes["orchestration.cost_usd"] == pytest.approx(0.042 + 0.014)
    assert draft.attributes["orchestration.cost_usd"] == pytest.approx(0.056)
    assert draft.start_time <= call.start_time <= call.end_time <= draft.end_time
    # Never the inputs, the prompt or the completion.
    text = every_value(found)
    assert "hunter2" not in text and "Reply to" not in text and "We are on it" not in text


def test_a_failed_attempt_is_an_error_span_with_the_redacted_exception(
        env: SimpleNamespace, spans: InMemorySpanExporter) -> None:
    result = env.flaky.run(key="k1", timeout=30)
    assert result.steps["fail_then"].status is StepStatus.FALLBACK
    found = of_run(spans, result.run_id)
    attempts = named(found, "step traced_flaky.fail_then")
    assert [s.attributes["orchestration.attempt"] for s in attempts] == [1, 2]
    for span in attempts:
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["orchestration.status"] == "failed"
        assert span.attributes["orchestration.error_kind"] == "error"
        assert span.attributes["error.type"] == "builtins.ValueError"
        [event] = span.events
        assert event.name == "exception"
        assert "upstream refused" in event.attributes["exception.message"]
        assert "[REDACTED]" in event.attributes["exception.message"]
        assert "ValueError" in event.attributes["exception.stacktrace"]
    assert SECRET_KEY not in every_value(found)


def test_a_failed_model_call_is_an_error_span_with_its_kind(
        env: SimpleNamespace, spans: InMemorySpanExporter) -> None:
    env.server.configure("writer", status_sequence=[503])
    result = env.broken.run(text="hello", timeout=30)
    assert result.steps["ask"].status is StepStatus.FAILED
    found = of_run(spans, result.run_id)
    [call] = named(found, "chat writer")
    assert call.status.status_code is StatusCode.ERROR
    assert call.attributes["error.type"] == "model_unavailable"
    assert "gen_ai.response.model" not in (call.attributes or {})
    [attempt] = named(found, "step traced_broken.ask")
    assert attempt.status.status_code is StatusCode.ERROR
    assert call.parent is not None and call.parent.span_id == attempt.context.span_id


def test_step_messages_carry_the_runs_traceparent(
        env: SimpleNamespace, spans: InMemorySpanExporter) -> None:
    seen: list[dict[str, Any]] = []

    def record(sender: Any = None, headers: Any = None, **_: Any) -> None:
        seen.append(dict(headers or {}))

    signals.before_task_publish.connect(record, weak=False)
    try:
        handle = env.wf.submit(text="x")
        handle.wait(timeout=30)
    finally:
        signals.before_task_publish.disconnect(record)
    steps = [h for h in seen if h.get("task", "").startswith("traced.")]
    assert steps and all(h["traceparent"] == tracing.traceparent(handle.run_id) for h in steps)


def test_a_worker_parents_attempts_on_the_messages_header(
        env: SimpleNamespace, spans: InMemorySpanExporter,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A header naming another parent than the derived one: the worker follows the header.
    def header(run_id: str) -> str:
        return f"00-{tracing.trace_id_of(run_id):032x}-{0xabcdef:016x}-01"

    monkeypatch.setattr(tracing, "traceparent", header)
    result = env.wf.run(text="x", timeout=30)
    assert result.status is RunStatus.SUCCEEDED
    attempts = named(of_run(spans, result.run_id), "step traced.")
    assert len(attempts) == 2
    assert all(s.parent is not None and s.parent.span_id == 0xabcdef for s in attempts)


def test_inject_finds_the_run_of_any_message_shape(spans: InMemorySpanExporter) -> None:
    headers: dict[str, Any] = {}
    tracing.inject(headers, ({"run": "r-1"},), {})
    assert headers == {"traceparent": tracing.traceparent("r-1")}
    headers = {}
    tracing.inject(headers, (), {"run_id": "r-2"})
    assert headers["traceparent"].split("-")[1] == f"{tracing.trace_id_of('r-2'):032x}"
    headers = {}
    tracing.inject(headers, ([{"run": "r-3"}, {"run": "r-3"}],), {})  # a chord's callback
    assert headers["traceparent"] == tracing.traceparent("r-3")
    headers = {}
    tracing.inject(headers, ("not a run",), {})
    assert headers == {}


def test_without_a_header_an_attempt_joins_its_run_by_the_derived_context(
        spans: InMemorySpanExporter) -> None:
    run_id = str(uuid.uuid4())
    span = tracing.start_attempt(Attempt(run_id), queue=None, redactor=None)
    assert span is not None
    tracing.end_attempt(span, None, None)
    [finished] = spans.get_finished_spans()
    assert finished.context.trace_id == uuid.UUID(run_id).int
    assert finished.parent is not None
    assert finished.parent.span_id == tracing.root_span_id_of(run_id)
    assert finished.attributes["orchestration.status"] == "signal"


def test_a_delivered_header_is_the_attempts_parent(spans: InMemorySpanExporter) -> None:
    header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracing.received(SimpleNamespace(traceparent=header)):
        span = tracing.start_attempt(Attempt("any-run"), queue=None, redactor=None)
        assert span is not None
        assert trace.get_current_span() is span.span  # current while the attempt runs
        tracing.end_attempt(span, None, None)
    assert not trace.get_current_span().get_span_context().is_valid
    [finished] = spans.get_finished_spans()
    assert f"{finished.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert finished.parent is not None and f"{finished.parent.span_id:016x}" == "b7ad6b7169203331"


def test_a_run_submitted_inside_a_callers_span_links_to_it(
        env: SimpleNamespace, spans: InMemorySpanExporter) -> None:
    caller = trace.NonRecordingSpan(trace.SpanContext(
        0x1234, 0x5678, is_remote=True, trace_flags=trace.TraceFlags(1)))
    token = otel_context.attach(trace.set_span_in_context(caller))
    try:
        tracing.runs_submitted("wf", ["11111111-2222-3333-4444-555555555555"], 1)
    finally:
        otel_context.detach(token)
    [root] = spans.get_finished_spans()
    assert root.context.trace_id == 0x11111111222233334444555555555555  # the run's, still
    assert root.parent is None
    assert [link.context.trace_id for link in root.links] == [0x1234]


def test_tracing_off_builds_nothing_and_exports_nothing(
        env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    exporter = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(exporter))
    tracing.uninstall()  # what was on is off again: its exporter hears nothing more
    assert not tracing.enabled()
    assert tracing.configure(Settings()) is False  # nothing configured: stays off
    assert not tracing.enabled() and tracing._provider is None
    result = env.wf.run(text="off", timeout=30)
    assert result.status is RunStatus.SUCCEEDED
    assert exporter.get_finished_spans() == ()
    assert tracing.start_attempt(Attempt("r"), queue=None, redactor=None) is None
    headers: dict[str, Any] = {}
    tracing.inject(headers, ({"run": "r"},), {})
    assert headers == {}


def test_configure_writes_json_lines_to_the_spans_file(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                 "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "spans.jsonl"
    try:
        assert tracing.configure(Settings(otel_file=path)) is True
        tracing.runs_submitted("wf", ["run-a"], 1)
    finally:
        tracing.uninstall()
    [line] = path.read_text().splitlines()
    span = json.loads(line)
    assert span["name"] == "run wf" and span["pid"] == os.getpid()
    assert span["trace_id"] == f"{tracing.trace_id_of('run-a'):032x}"


def test_an_otlp_endpoint_turns_tracing_on_and_the_sdk_switch_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.configure(Settings(otel_endpoint="http://127.0.0.1:4318")) is False
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    try:
        assert tracing.configure(Settings(otel_endpoint="http://127.0.0.1:4318/")) is True
        assert tracing.enabled()
    finally:
        tracing.uninstall()
    assert tracing._otlp_endpoint(Settings(otel_endpoint="http://c:4318/")) == \
        "http://c:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert tracing._otlp_endpoint(Settings()) == "http://collector:4318/v1/traces"


@dataclass
class Attempt:
    run_id: str
    workflow: str = "wf"
    step: str = "s"
    attempt: int = 1
    model: str | None = None
    map_index: int | None = None
