"""The demo's simulated model provider: an OpenAI-compatible HTTP server with a seeded fault
schedule, so ``make demo`` shows retries, fallbacks, breakers and timeouts at work.

It serves ``POST /v1/chat/completions`` on 127.0.0.1 (an ephemeral port) for any model
name; the demo's catalogue (:mod:`tasks.demo.catalogue`) points its models at it, so every
call goes through the engine's real HTTP provider, timeouts and breakers. Answers are
labelled ``[demo: simulated <model>]``: nothing here is a real model.

Which request fails is decided by :class:`FaultSchedule`, deterministically: by the seed,
the model, the ticket the prompt is about (its position in the batch) and how many times
that ticket already asked that model. So the same batch meets the same faults whatever
order the worker threads call in:

- **rejected tickets**: the tickets at ``reject_at`` (fractions of the batch) get HTTP 400
  (a content filter) from every model on every call: not retried and not counted by
  breakers (a 4xx shows the provider is up), the fallback model is refused too, the
  step's retries all fail and its ``fallback=`` answers;
- **outage**: ``outage_model`` answers 503 to every ticket between ``outage_start`` and
  ``outage_end`` (fractions of the batch): its breaker opens, calls go to the fallback
  model, probes fail until the outage ends, then a probe succeeds and the breaker closes;
- **errors**: a share of calls (``error_rate`` per model) gets a 500, 502 or 503;
- **slow calls**: a share (``slow_rate`` per model) answers only after ``slow_s`` seconds,
  longer than the model's timeout (adaptive in the demo catalogue): a timeout.

Stdlib only; ``FaultSchedule.calm()`` injects nothing (``--no-faults``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

PATH = "/v1/chat/completions"
_TICKET_MARK = "Ticket: "


@dataclass(frozen=True)
class FaultSchedule:
    """What the simulated provider does to each request (see the module doc)."""

    seed: int = 5
    #: Normal latency range (seconds) per model; others get ``default_latency``.
    latency: Mapping[str, tuple[float, float]] = field(default_factory=lambda: {
        "gpt-4o-mini": (0.02, 0.07), "claude-4-haiku": (0.04, 0.10)})
    default_latency: tuple[float, float] = (0.02, 0.05)
    error_rate: Mapping[str, float] = field(default_factory=lambda: {
        "gpt-4o-mini": 0.05, "claude-4-haiku": 0.04})
    slow_rate: Mapping[str, float] = field(default_factory=lambda: {"gpt-4o-mini": 0.04})
    slow_s: float = 3.0
    outage_model: str | None = "gpt-4o-mini"
    outage_start: float = 0.30
    outage_end: float = 0.42
    reject_at: tuple[float, ...] = (0.1, 0.7, 0.9)

    @classmethod
    def calm(cls) -> FaultSchedule:
        """No faults at all: every call answers after its normal latency."""
        return cls(error_rate={}, slow_rate={}, outage_model=None, reject_at=())

    @property
    def injects(self) -> bool:
        """True when any fault is scheduled."""
        return bool(any(self.error_rate.values()) or any(self.slow_rate.values())
                    or self.outage_model or self.reject_at)

    def rejected(self, total: int) -> set[int]:
        """The positions (of ``total``) of the tickets every model rejects."""
        return {int(fraction * total) for fraction in self.reject_at} if total > 0 else set()

    def in_outage(self, model: str, position: int | None, total: int) -> bool:
        """True when ``model`` is down for the ticket at ``position`` of ``total``."""
        if model != self.outage_model or position is None or total <= 0:
            return False
        return self.outage_start <= position / total < self.outage_end

    def decide(self, model: str, prompt_key: str, position: int | None, total: int,
               nth: int) -> tuple[int, float]:
        """(HTTP status, seconds before answering) for the ``nth`` (from 1) request of
        this prompt to ``model``."""
        low, high = self.latency.get(model, self.default_latency)
        draw = _uniform(self.seed, model, prompt_key, nth)
        latency = low + (high - low) * _uniform(self.seed, "latency", model, prompt_key, nth)
        if position is not None and position in self.rejected(total):
            return 400, latency
        if self.in_outage(model, position, total):
            return 503, latency
        errors = self.error_rate.get(model, 0.0)
        if draw < errors:
            return (500, 502, 503)[int(draw / errors * 3) % 3], latency
        if draw < errors + self.slow_rate.get(model, 0.0):
            return 200, self.slow_s
        return 200, latency


def _uniform(*parts: object) -> float:
    """A number in [0, 1) determined by ``parts`` (the seeded draw)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def ticket_text(prompt: str) -> str:
    """The ticket in a support reply prompt (what follows ``Ticket: ``), else the prompt."""
    index = prompt.rfind(_TICKET_MARK)
    return prompt[index + len(_TICKET_MARK):] if index >= 0 else prompt


class SimulatedProvider:
    """The fault-injecting OpenAI-compatible server for one batch of tickets.

    ``with SimulatedProvider(schedule, [t["text"] for t in tickets]) as server:`` then
    point an ``openai``-kind provider at ``server.url``. ``stats`` counts statuses (and
    ``slow``) per model as served.
    """

    def __init__(self, schedule: FaultSchedule, tickets: Sequence[str]) -> None:
        self.schedule = schedule
        self._positions: dict[str, int] = {}
        for position, text in enumerate(tickets):
            self._positions.setdefault(text, position)
        self._total = len(tickets)
        self._seen: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self.stats: dict[str, Counter[str]] = {}
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="demo-provider", daemon=True)

    @property
    def url(self) -> str:
        """The base URL of the OpenAI-compatible API (``.../v1``)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> SimulatedProvider:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def answer(self, body: Mapping[str, Any]) -> tuple[int, float, dict[str, Any]]:
        """(status, delay, JSON body) for one chat-completions request."""
        model = str(body.get("model", ""))
        messages = body.get("messages") or []
        prompt = str(messages[-1].get("content", "")) if messages else ""
        text = ticket_text(prompt)
        key = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
        with self._lock:
            self._seen[(model, key)] += 1
            nth = self._seen[(model, key)]
        position = self._positions.get(text)
        status, delay = self.schedule.decide(model, key, position, self._total, nth)
        with self._lock:
            counts = self.stats.setdefault(model, Counter())
            counts[str(status)] += 1
            if delay >= self.schedule.slow_s:
                counts["slow"] += 1
        if status == 400:
            return status, delay, {"error": {"message": "simulated: the request was rejected "
                                             "by the content filter",
                                             "type": "invalid_request_error"}}
        if status > 400:
            return status, delay, {"error": {"message": f"simulated {status} from {model}",
                                             "type": "server_error"}}
        reply = (f"[demo: simulated {model}] Thanks for reaching out, and sorry for the "
                 "trouble. We have your ticket and the team will follow up shortly.")
        usage = {"prompt_tokens": max(1, len(prompt) // 4),
                 "completion_tokens": max(1, len(reply) // 4)}
        return 200, delay, {"id": f"demo-{key}-{nth}", "object": "chat.completion",
                            "model": model, "usage": usage,
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": reply}}]}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that went away (a timed-out call closes its connection)."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def _handler(provider: SimulatedProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._send(400, {"error": {"message": "body is not JSON"}})
                return
            if self.path != PATH or not isinstance(body, dict):
                self._send(404 if self.path != PATH else 400,
                           {"error": {"message": f"only POST {PATH} with a JSON object"}})
                return
            status, delay, payload = provider.answer(body)
            time.sleep(delay)
            self._send(status, payload)

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            # The client may have timed out and gone: nothing to tell it then.
            with contextlib.suppress(OSError):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the demo's summary reports what happened."""

    return Handler
