"""Prometheus metrics (prometheus-client), recorded by workers where steps run.

Series (all prefixed ``orchestration_``):

- ``step_latency_seconds{workflow,step,model}``: histogram, claim to record;
- ``step_outcomes_total{workflow,step,status}``: steps by final status;
- ``step_retries_total{workflow,step}`` and ``step_fallbacks_total{workflow,step}``;
- ``model_calls_total{model,outcome}`` and ``breaker_state{model}`` (0 closed,
  1 half-open, 2 open, as last seen by this process);
- ``context_window_utilisation{model}``: histogram of each call's prompt tokens over
  the model's context window;
- ``run_cost_usd_total{workflow}``: spend, retries included;
- ``pruned_rows_total{table}``: rows deleted by retention;
- ``queue_depth{queue}``: messages waiting, read from the broker at scrape time by
  ``orchestrate metrics``.

Prefork workers write to ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess
mode) and ``orchestrate metrics --port 9808`` serves the aggregate; a threads-pool or
embedded worker can serve its own registry with ``ORCH_METRICS_PORT``.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

STEP_LATENCY = Histogram(
    "orchestration_step_latency_seconds", "Step latency from claim to recorded outcome.",
    ["workflow", "step", "model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
STEP_OUTCOMES = Counter("orchestration_step_outcomes_total", "Steps by final status.",
                        ["workflow", "step", "status"])
STEP_RETRIES = Counter("orchestration_step_retries_total", "Attempts beyond the first.",
                       ["workflow", "step"])
STEP_FALLBACKS = Counter("orchestration_step_fallbacks_total", "Steps answered by a fallback.",
                         ["workflow", "step"])
MODEL_CALLS = Counter("orchestration_model_calls_total", "Model calls by outcome.",
                      ["model", "outcome"])
BREAKER_STATE = Gauge("orchestration_breaker_state",
                      "Breaker state per model (0 closed, 1 half-open, 2 open).", ["model"],
                      multiprocess_mode="max")
CONTEXT_UTILISATION = Histogram(
    "orchestration_context_window_utilisation",
    "Prompt tokens of a model call over the model's context window.", ["model"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.5),
)
RUN_COST = Counter("orchestration_run_cost_usd_total", "Model spend in USD.", ["workflow"])
PRUNED_ROWS = Counter("orchestration_pruned_rows_total",
                      "Rows deleted by retention (orchestrate db prune, the reconciler).",
                      ["table"])
QUEUE_DEPTH = Gauge("orchestration_queue_depth", "Messages waiting per queue.", ["queue"],
                    multiprocess_mode="liveall")

_BREAKER_VALUES = {"closed": 0, "half-open": 1, "open": 2}
# Each series' labelled child, by metric and labels: ``labels()`` validates and locks on
# every call, and a model call records three series (the map row: 1,000 calls a second).
_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    key = (id(metric), labels)
    child = _CHILDREN.get(key)
    if child is None:  # two threads may both make it: labels() answers the same child
        child = _CHILDREN[key] = metric.labels(*labels)
    return child
_served: set[int] = set()
_serve_lock = threading.Lock()


def serve(port: int, address: str = "127.0.0.1") -> None:
    """Serve this process's metrics on ``port`` (once per process and port)."""
    with _serve_lock:
        if port in _served:
            return
        start_http_server(port, addr=address)
        _served.add(port)


def record_step(workflow: str, step: str, model: str | None, status: str, attempts: int,
                latency_s: float | None, cost_usd: float) -> None:
    """Count one step's recorded outcome."""
    if latency_s is not None:
        _child(STEP_LATENCY, workflow, step, model or "").observe(latency_s)
    _child(STEP_OUTCOMES, workflow, step, status).inc()
    if attempts > 1:
        STEP_RETRIES.labels(workflow, step).inc(attempts - 1)
    if status == "fallback":
        STEP_FALLBACKS.labels(workflow, step).inc()
    if cost_usd:
        RUN_COST.labels(workflow).inc(cost_usd)


def record_call(model: str, ok: bool, breaker: str | None,
                utilisation: float | None = None) -> None:
    """Count one model call, the breaker state it saw and how full its context was."""
    _child(MODEL_CALLS, model, "ok" if ok else "error").inc()
    if utilisation is not None:
        _child(CONTEXT_UTILISATION, model).observe(utilisation)
    if breaker in _BREAKER_VALUES:
        _child(BREAKER_STATE, model).set(_BREAKER_VALUES[breaker])
