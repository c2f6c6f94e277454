"""OpenTelemetry traces: one trace per run, a span per step attempt and per model call.

Off by default, at no cost: unless an OTLP endpoint (``ORCH_OTEL_ENDPOINT``, or the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) or a
spans file (``ORCH_OTEL_FILE``) is configured, no SDK ``TracerProvider`` is built and
every hook below returns after one check of a module global.

How spans from many worker processes join one trace:

- The trace id *is* the run id (a UUID's 128 bits; any other id is hashed), and the run's
  root span id is derived from it too. A step delivered again by the reconciler, a
  resumed run or a retry handed back to the broker joins its run's trace with nothing
  stored anywhere.
- That root context also travels as a W3C ``traceparent`` header on every step message
  (:func:`inject`, called where the app builds its messages); a worker parents the step's
  attempts on the header's context (:func:`received`), and on the derived one when a
  message has none (published with tracing off).
- ``submit`` emits the root span ``run <workflow>`` (the submission) with the derived ids;
  an attempt's span is its child, a model call's span the attempt's child. A run
  submitted inside a span of the caller links to it (a link: the trace stays the run's).

What a span holds: names, ids, counts, statuses, error kinds, tokens and cost; never a
step's inputs or outputs, a prompt or a completion. An exception is recorded by its type
and its message and traceback as the results DB stores them (redacted). Model-call spans
are written when the call's record is (``ctx.record_call``), with the call's own start
and end times, so the model client needs no tracing code.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import traceback
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from orchestration.core.redaction import Redactor
from orchestration.core.results import CallRecord
from orchestration.store.repository import AttemptRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

    from orchestration.core.settings import Settings

__all__ = ["AttemptSpan", "configure", "enabled", "end_attempt", "inject", "install",
           "received", "run_context", "runs_submitted", "start_attempt", "traceparent",
           "uninstall"]

TRACER_NAME = "orchestration"
HEADER = "traceparent"
_MESSAGE_LIMIT = 1000
_PROPAGATOR = TraceContextTextMapPropagator()
_DEFAULT_REDACTOR = Redactor()

_tracer: trace.Tracer | None = None  # None: tracing is off (the default)
_provider: TracerProvider | None = None
_lock = threading.Lock()
# The ids the next span must take (the run's root span at submit), see _RunIds.
_forced: ContextVar[tuple[int, int] | None] = ContextVar("orchestration_forced_ids",
                                                         default=None)


def enabled() -> bool:
    """True once a tracer provider was set up in this process."""
    return _tracer is not None


# -- the run's context, derived from its id --------------------------------------------

def trace_id_of(run_id: str) -> int:
    """The run's trace id: its UUID's 128 bits (so a trace is found by run id), or a hash."""
    try:
        value = uuid.UUID(run_id).int
    except ValueError:
        value = int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:16], "big")
    return value or 1


def root_span_id_of(run_id: str) -> int:
    """The span id of the run's root span (``run <workflow>``)."""
    digest = hashlib.sha256(b"orchestration.run:" + run_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def run_context(run_id: str) -> SpanContext:
    """The run's root span context: what every step of the run is parented on."""
    return SpanContext(trace_id_of(run_id), root_span_id_of(run_id), is_remote=True,
                       trace_flags=TraceFlags(TraceFlags.SAMPLED))


def traceparent(run_id: str) -> str:
    """The W3C ``traceparent`` of the run's root span."""
    return f"00-{trace_id_of(run_id):032x}-{root_span_id_of(run_id):016x}-01"


# -- set-up --------------------------------------------------------------------------------

def _otlp_endpoint(settings: Settings) -> str | None:
    """Where to export over OTLP/HTTP (a full traces URL), or None."""
    if settings.otel_endpoint:
        return f"{settings.otel_endpoint.rstrip('/')}/v1/traces"
    full = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if full:
        return full
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return f"{base.rstrip('/')}/v1/traces" if base else None


def configure(settings: Settings) -> bool:
    """Set tracing up once per process if configured; True when it is on.

    Nothing is imported from the SDK, and nothing is built, when neither an endpoint nor
    a spans file is configured, or ``OTEL_SDK_DISABLED=true``.
    """
    if _tracer is not None:
        return True
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    endpoint = _otlp_endpoint(settings)
    if endpoint is None and settings.otel_file is None:
        return False
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    processors: list[Any] = []
    if endpoint is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processors.append(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    if settings.otel_file is not None:
        processors.append(SimpleSpanProcessor(cast(Any, JsonLinesExporter(settings.otel_file))))
    install(*processors, service_name=settings.otel_service_name)
    return True


def install(*processors: Any, service_name: str = "orchestration") -> TracerProvider:
    """Turn tracing on with these span processors (tests and benches pass their own)."""
    global _tracer, _provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    with _lock:
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {
            "service.name": service_name}
        provider = TracerProvider(resource=Resource.create(attributes),
                                  id_generator=_run_ids())
        for processor in processors:
            provider.add_span_processor(processor)
        _provider, _tracer = provider, provider.get_tracer(TRACER_NAME)
    return provider


def uninstall() -> None:
    """Turn tracing off again (tests): flush and drop the provider."""
    global _tracer, _provider
    with _lock:
        provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def flush() -> None:
    """Export what is buffered (a worker process about to exit)."""
    if _provider is not None:
        _provider.force_flush()


def _run_ids() -> Any:
    """Random ids, except the run's root span, which takes the ids derived from its run."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class RunIds(RandomIdGenerator):
        def generate_span_id(self) -> int:
            forced = _forced.get()
            return forced[1] if forced is not None else super().generate_span_id()

        def generate_trace_id(self) -> int:
            forced = _forced.get()
            return forced[0] if forced is not None else super().generate_trace_id()

        def is_trace_id_random(self) -> bool:
            return _forced.get() is None

    return RunIds()


# -- runs and messages ------------------------------------------------------------------

def runs_submitted(workflow: str, run_ids: Sequence[str], started_ns: int) -> None:
    """The root span of each run just submitted: ``run <workflow>``, with derived ids."""
    tracer = _tracer
    if tracer is None:
        return
    caller = trace.get_current_span().get_span_context()
    links = [Link(caller)] if caller.is_valid else None
    for run_id in run_ids:
        token = _forced.set((trace_id_of(run_id), root_span_id_of(run_id)))
        try:
            span = tracer.start_span(
                f"run {workflow}", context=otel_context.Context(), kind=SpanKind.PRODUCER,
                links=links, start_time=started_ns,
                attributes={"orchestration.workflow": workflow, "orchestration.run_id": run_id})
        finally:
            _forced.reset(token)
        span.end()


def inject(headers: dict[str, Any], args: Any, kwargs: Any) -> None:
    """Put the run's ``traceparent`` on a message's headers (when tracing is on)."""
    if _tracer is None or not isinstance(headers, dict) or HEADER in headers:
        return
    run_id = _run_of(args, kwargs)
    if run_id is not None:
        headers[HEADER] = traceparent(run_id)


def _run_of(args: Any, kwargs: Any) -> str | None:
    """The run a message is for: its envelope's ``run`` or its ``run_id`` option."""
    if isinstance(kwargs, Mapping) and isinstance(kwargs.get("run_id"), str):
        return str(kwargs["run_id"])
    first = args[0] if isinstance(args, list | tuple) and args else None
    if isinstance(first, list) and first:  # a chord's callback: the envelopes of its header
        first = first[0]
    if isinstance(first, Mapping) and isinstance(first.get("run"), str):
        return str(first["run"])
    return None


@contextmanager
def received(request: Any) -> Iterator[None]:
    """Make a delivered message's ``traceparent`` the current context while it runs."""
    if _tracer is None:
        yield
        return
    value = getattr(request, HEADER, None)
    if not isinstance(value, str):
        headers = getattr(request, "headers", None)
        value = headers.get(HEADER) if isinstance(headers, Mapping) else None
    if not isinstance(value, str):
        yield
        return
    token = otel_context.attach(_PROPAGATOR.extract({HEADER: value}))
    try:
        yield
    finally:
        otel_context.detach(token)


# -- attempts and model calls ------------------------------------------------------------

class AttemptSpan:
    """The span of one step attempt, current while the attempt runs; model calls below it."""

    def __init__(self, span: Span, tracer: trace.Tracer, redactor: Redactor | None) -> None:
        self.span = span
        self._tracer = tracer
        self._redactor = redactor
        self._token: object | None = otel_context.attach(trace.set_span_in_context(span))
        self._ended = False

    def model_call(self, call: CallRecord, system: str) -> None:
        """A finished model call (GenAI semantic conventions), as a child of the attempt.

        ``system`` is the provider's kind (``openai``, ``anthropic``, ``local``).
        """
        end = time.time_ns()
        start = end - int(call.latency_ms * 1_000_000)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat", "gen_ai.system": system,
            "gen_ai.request.model": call.model,
            "gen_ai.usage.input_tokens": call.prompt_tokens,
            "gen_ai.usage.output_tokens": call.completion_tokens,
            "orchestration.cost_usd": float(call.cost_usd),
        }
        if call.ok:
            attributes["gen_ai.response.model"] = call.model
        for key, value in (("orchestration.breaker", call.breaker),
                           ("error.type", call.error_kind),
                           ("orchestration.error_kind", call.error_kind),
                           ("orchestration.policy", call.policy),
                           ("orchestration.context_utilisation", call.context_utilisation)):
            if value is not None:
                attributes[key] = value
        span = self._tracer.start_span(f"chat {call.model}", kind=SpanKind.CLIENT,
                                       context=trace.set_span_in_context(self.span),
                                       attributes=attributes, start_time=start)
        if not call.ok:
            message = self._text(call.error or "")[:200]
            span.set_status(Status(StatusCode.ERROR, call.error_kind or "model call failed"))
            span.add_event("exception", {"exception.type": call.error_kind or "error",
                                         "exception.message": message}, timestamp=end)
        span.end(end_time=end)

    def end(self, *, status: str, cost_usd: float = 0.0, model: str | None = None,
            error_kind: str | None = None, policy: str | None = None,
            exc: BaseException | None = None, tokens: tuple[int, int] = (0, 0)) -> None:
        """End the attempt's span (once) with its outcome."""
        if self._ended:
            return
        self._ended = True
        span = self.span
        span.set_attribute("orchestration.status", status)
        span.set_attribute("orchestration.cost_usd", float(cost_usd))
        if tokens != (0, 0):
            span.set_attribute("gen_ai.usage.input_tokens", tokens[0])
            span.set_attribute("gen_ai.usage.output_tokens", tokens[1])
        for key, value in (("orchestration.model", model), ("orchestration.policy", policy),
                           ("orchestration.error_kind", error_kind)):
            if value is not None:
                span.set_attribute(key, value)
        if exc is not None:
            kind = type(exc)
            qualified = f"{kind.__module__}.{kind.__qualname__}"
            span.set_attribute("error.type", qualified)
            span.add_event("exception", {
                "exception.type": qualified,
                "exception.message": self._text(str(exc))[:_MESSAGE_LIMIT],
                "exception.stacktrace": self._text(
                    "".join(traceback.format_exception(exc, limit=-4)))[-4000:],
            })
            span.set_status(Status(StatusCode.ERROR, error_kind or kind.__name__))
        token, self._token = self._token, None
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]
        span.end()

    def _text(self, text: str) -> str:
        """A message as the results DB stores it: redacted."""
        return (self._redactor or _DEFAULT_REDACTOR).text(text) or ""


class Attempt(Protocol):
    """What an attempt's span is named after (the execute floor's ``StepContext``)."""

    run_id: str
    workflow: str
    step: str
    attempt: int
    model: str | None
    map_index: int | None


def start_attempt(attempt: Attempt, *, queue: str | None,
                  redactor: Redactor | None) -> AttemptSpan | None:
    """Start the span of a step attempt (None when tracing is off).

    Its parent is the current context (a delivered message's ``traceparent``), else the
    run's root context derived from the run id.
    """
    tracer = _tracer
    if tracer is None:
        return None
    run_id = attempt.run_id
    parent = trace.get_current_span().get_span_context()
    context = (otel_context.get_current() if parent.is_valid
               else trace.set_span_in_context(NonRecordingSpan(run_context(run_id))))
    attributes: dict[str, Any] = {
        "orchestration.workflow": attempt.workflow, "orchestration.run_id": run_id,
        "orchestration.step": attempt.step, "orchestration.attempt": attempt.attempt}
    for key, value in (("orchestration.queue", queue), ("orchestration.model", attempt.model),
                       ("orchestration.map_index", attempt.map_index)):
        if value is not None:
            attributes[key] = value
    span = tracer.start_span(f"step {attempt.workflow}.{attempt.step}", context=context,
                             kind=SpanKind.CONSUMER, attributes=attributes)
    return AttemptSpan(span, tracer, redactor)


def end_attempt(span: AttemptSpan | None, record: AttemptRecord | None,
                exc: BaseException | None) -> None:
    """End an attempt's span with its record (None: a control-flow signal ended it)."""
    if span is None:
        return
    if record is None:
        span.end(status="signal: " + type(exc).__name__ if exc is not None else "signal")
        return
    span.end(status=record.status, cost_usd=record.cost_usd, model=record.model,
             error_kind=record.error_kind, policy=record.policy, exc=exc,
             tokens=(record.tokens_in, record.tokens_out))


# -- a spans file (tests, debugging) -----------------------------------------------------

class JsonLinesExporter:
    """Writes each finished span as one JSON line (ids in hex): ``ORCH_OTEL_FILE``.

    Appends with one ``write`` per batch, so the processes of a worker fleet can share a
    file on a local disk.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def export(self, spans: Sequence[ReadableSpan]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = "".join(json.dumps(span_dict(span), default=str) + "\n" for span in spans)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing held open."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Every export is written at once."""
        return True


def span_dict(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as plain JSON values."""
    context = span.context
    parent = span.parent
    return {
        "name": span.name, "trace_id": f"{context.trace_id:032x}" if context else None,
        "span_id": f"{context.span_id:016x}" if context else None,
        "parent_id": f"{parent.span_id:016x}" if parent else None,
        "kind": span.kind.name, "status": span.status.status_code.name,
        "start": span.start_time, "end": span.end_time, "pid": os.getpid(),
        "attributes": dict(span.attributes or {}),
        "events": [{"name": event.name, "attributes": dict(event.attributes or {})}
                   for event in span.events],
        "links": [f"{link.context.trace_id:032x}" for link in span.links],
    }

