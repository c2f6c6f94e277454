"""One chat completion on the bench's fake LLM server, as a plain Celery task would make it.

A process-wide ``httpx.Client(timeout=60.0)`` with httpx's default pool (100 connections,
20 kept alive): the cheapest in CPU at 200 threads (see bench/README.md: pools of 256+
connections cost several ms of CPU per call in httpcore). A transport error is retried
(at most twice), as ``ctx.llm`` retries transient errors. The raw Celery task of
``bench/perf.py`` and the engine's ``perf_http_*`` steps (``bench/perf_workflows.py``)
both call :func:`http_call`, so the two sides measure the same call. No engine import:
the raw worker must not build an orchestrator.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import httpx

MODEL = "sim"
FAKE_URL_ENV = "BENCH_FAKE_URL"  # the fake LLM server's .../v1 URL
KEY_ENV = "BENCH_LLM_KEY"

_http: Any = None
_http_lock = threading.Lock()


def http_call(prompt: str) -> str:
    """One chat completion of ``prompt``; returns the model that answered."""
    global _http
    if _http is None:
        with _http_lock:
            if _http is None:
                _http = httpx.Client(timeout=60.0)
    for attempt in range(3):
        try:
            response = _http.post(
                f"{os.environ[FAKE_URL_ENV]}/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": prompt}]},
                headers={"Authorization": f"Bearer {os.environ.get(KEY_ENV, '')}"})
            break
        except httpx.TransportError:  # httpcore can hand a thread a socket being closed
            if attempt == 2:
                raise
    response.raise_for_status()
    return str(response.json()["model"])
