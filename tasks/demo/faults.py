"""The demo's simulated model provider: an OpenAI-compatible HTTP server with a seeded fault
schedule, so ``make demo`` shows retries, fallbacks, breakers and timeouts at work.

It serves ``POST /v1/chat/completions`` on 127.0.0.1 (an ephemeral port) for any model
name; the demo's catalogue (:mod:`tasks.demo.catalogue`) points its models at it, so every
call goes through the engine's real HTTP provider, timeouts and breakers. Answers are
labelled ``[demo: simulated <model>]``: nothing here is a real model.

Which request fails is decided by :class:`FaultSchedule`. Rejections, errors and latencies
are decided by the seed, the model, the ticket the prompt is about (its position in the
batch) and how many times that ticket already asked that model, so the same batch meets
them whatever order the worker threads call in. An outage and a slow answer belong to the
provider, not to a ticket: they follow the model's own count of requests served and the
provider's clock, so they land mid-batch however the runs interleave and a ticket retried
later does not meet them again:

- **rejected tickets**: the tickets at ``reject_at`` (fractions of the batch) get HTTP 400
  (a content filter) from every model on every call: not retried and not counted by
  breakers (a 4xx shows the provider is up), the fallback model is refused too, the
  step's retries all fail and its ``fallback=`` answers;
- **outage**: ``outage_model`` answers 503 to every request for ``outage_s`` seconds from
  its request number ``outage_start`` x the batch: its breaker opens, calls go to the
  fallback model, probes fail until the outage ends, then a probe succeeds and the
  breaker closes;
- **errors**: a share of calls (``error_rate`` per model) gets a 500, 502 or 503;
- **slow calls**: every ``slow_every``-th request to a model (per model), from the
  ``2 x slow_every``-th on, answers only after ``slow_s`` seconds, longer than the model's
  timeout (adaptive in the demo catalogue, which by then knows its recent latencies): a
  timeout.

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
    #: Every n-th request to the model answers slowly (from the 2n-th on).
    slow_every: Mapping[str, int] = field(default_factory=lambda: {"gpt-4o-mini": 20})
    slow_s: float = 3.0
    outage_model: str | None = "gpt-4o-mini"
    #: The outage begins with the model's request number ``outage_start`` x the batch size.
    outage_start: float = 0.40
    outage_s: float = 0.8
    reject_at: tuple[float, ...] = (0.1, 0.7, 0.9)

    @classmethod
    def calm(cls) -> FaultSchedule:
        """No faults at all: every call answers after its normal latency."""
        return cls(error_rate={}, slow_every={}, outage_model=None, reject_at=())

    @property
    def injects(self) -> bool:
        """True when any fault is scheduled."""
        return bool(any(self.error_rate.values()) or any(self.slow_every.values())
                    or self.outage_model or self.reject_at)

    def rejected(self, total: int) -> set[int]:
        """The positions (of ``total``) of the tickets every model rejects."""
        return {int(fraction * total) for fraction in self.reject_at} if total > 0 else set()

    def outage_begins(self, model: str, total: int) -> int | None:
        """The number (from 1) of ``model``'s request that begins its outage, if it has one."""
        if model != self.outage_model or total <= 0:
            return None
        return max(1, int(self.outage_start * total))

    def slow(self, model: str, served: int) -> bool:
        """True when ``model``'s ``served``-th request (from 1) is one that answers slowly."""
        every = self.slow_every.get(model, 0)
        return every > 0 and served >= 2 * every and served % every == 0

    def decide(self, model: str, prompt_key: str, position: int | None, total: int,
               nth: int, *, served: int = 0, down: bool = False) -> tuple[int, float]:
        """(HTTP status, seconds before answering) for the ``nth`` (from 1) request of this
        prompt to ``model``, the model's ``served``-th request; ``down`` while its outage
        lasts."""
        low, high = self.latency.get(model, self.default_latency)
        draw = _uniform(self.seed, model, prompt_key, nth)
        latency = low + (high - low) * _uniform(self.seed, "latency", model, prompt_key, nth)
        if position is not None and position in self.rejected(total):
            return 400, latency
        if down:
            return 503, latency
        errors = self.error_rate.get(model, 0.0)
        if draw < errors:
            return (500, 502, 503)[int(draw / errors * 3) % 3], latency
        if self.slow(model, served):
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
        self._served: Counter[str] = Counter()
        self._outage_began: float | None = None
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
            self._served[model] += 1
            served = self._served[model]
            down = self._down(model, served)
        position = self._positions.get(text)
        status, delay = self.schedule.decide(model, key, position, self._total, nth,
                                             served=served, down=down)
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


    def _down(self, model: str, served: int) -> bool:
        """Whether ``model``'s outage lasts at its ``served``-th request (under the lock)."""
        if served == self.schedule.outage_begins(model, self._total):
            self._outage_began = time.monotonic()
        began = self._outage_began
        return (model == self.schedule.outage_model and began is not None
                and time.monotonic() - began < self.schedule.outage_s)


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
