"""A fault-injecting fake LLM API over real HTTP: OpenAI chat completions and Anthropic messages.

Stdlib only (the test client excepted), so it runs in-process or as its own process::

    with FakeLLMServer() as server:                 # 127.0.0.1, ephemeral port
        OpenAIProvider("openai", server.url, "sk-test")            # .../v1
        AnthropicProvider("anthropic", server.root_url, "sk-ant")  # root, no /v1
        client = FakeLLMClient(server.url)
        client.configure("gpt-4o-mini", status_sequence=[500, 429, 200], retry_after=1)
        client.stats()["gpt-4o-mini"]["statuses"]   # {"500": 1, "429": 1, "200": 1}

    $ python -m tests.fakes.llm_server --port 0     # prints "READY <port>", serves until SIGTERM

Endpoints:

- ``POST /v1/chat/completions`` (OpenAI-shaped) and ``POST /v1/messages`` (Anthropic-shaped;
  like the real API it answers 400 without ``anthropic-version``, without ``max_tokens``, or
  with a role other than user/assistant in ``messages``).
- ``"stream": true`` in either API's request: the answer as server-sent events, word by
  word, with streaming faults (a stall before the first token, delays between chunks, a
  disconnect mid-stream): see tests/fakes/llm_stream.py.
- ``PUT /control/models/<model>`` with a JSON object of :class:`Behaviour` fields replaces
  that model's behaviour (unlisted fields take their defaults; unknown fields are a 400);
  ``DELETE /control/models/<model>`` resets one model, ``DELETE /control/models`` all;
  ``GET /control/models`` lists the configured ones.
- ``GET /control/stats``: ``{model: {"requests", "statuses": {"200": n, ...}, "hung",
  "timestamps": [epoch floats, arrival order], "with_auth", "without_auth",
  "endpoints": {"chat.completions": n, "messages": n}, "last_request": <body>}}``;
  ``DELETE /control/stats`` clears it. Whether a key (``Authorization`` or ``x-api-key``)
  was sent is counted; key values are never stored.

How a request's status is chosen (per model, under a lock, in arrival order): the next entry
of ``status_sequence`` while any remain; else ``error_status`` if fewer than ``fail_first``
requests arrived since the model was configured; else ``error_status`` with probability
``error_rate`` drawn from ``random.Random(seed)``; else 200. ``latency_ms`` delays every
answer, errors included; ``hang`` never answers (the request waits until the client goes
away, the server stops, or ``hang_limit_s`` passes, then the connection is closed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import select
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, unquote

from tests.fakes.llm_stream import anthropic_events, openai_events, send_stream

if TYPE_CHECKING:
    import httpx

__all__ = ["Behaviour", "FakeLLMClient", "FakeLLMServer", "main"]

RETRY_AFTER_STATUSES = frozenset({429, 503, 529})
_CONTROL_MODELS = "/control/models"
_CONTROL_STATS = "/control/stats"
_ENDPOINTS = {"/v1/chat/completions": "chat.completions", "/v1/messages": "messages"}
_REASONS = {529: "Overloaded"}
_ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error",
                     403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                     429: "rate_limit_error", 529: "overloaded_error"}
_OPENAI_ERRORS = {400: "invalid_request_error", 401: "invalid_api_key", 403: "permission_denied",
                  404: "model_not_found", 429: "rate_limit_exceeded"}
GARBAGE_BODY = b"<html><body><h1>502 Bad Gateway</h1>upstream sent nothing useful</body></html>"


@dataclass
class Behaviour:
    """How the fake answers one model; every field is also a key of ``PUT /control/models/<m>``."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    fail_first: int = 0
    status_sequence: list[int] = field(default_factory=list)
    retry_after: float | str | None = None
    hang: bool = False
    garbage: bool = False
    fenced_json: Any = None
    reply: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    seed: int = 0
    # Streaming answers ("stream": true; tests/fakes/llm_stream.py)
    first_token_delay_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    disconnect_after: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> Behaviour:
        """Validate a control request body; ValueError names the first bad or unknown field."""
        if not isinstance(data, dict):
            raise ValueError("behaviour must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown behaviour fields: {unknown}; known: {sorted(known)}")
        behaviour = cls(**data)
        behaviour._check()
        return behaviour

    def _check(self) -> None:
        _number("latency_ms", self.latency_ms, 0)
        _number("error_rate", self.error_rate, 0, 1)
        _integer("error_status", self.error_status, 100, 599)
        _integer("fail_first", self.fail_first, 0)
        if not isinstance(self.status_sequence, list):
            raise ValueError("status_sequence must be a list of HTTP statuses")
        for status in self.status_sequence:
            _integer("status_sequence[]", status, 100, 599)
        if self.retry_after is not None and (isinstance(self.retry_after, bool) or
                                             not isinstance(self.retry_after, int | float | str)):
            raise ValueError("retry_after must be seconds, an HTTP date string, or null")
        if not isinstance(self.hang, bool) or not isinstance(self.garbage, bool):
            raise ValueError("hang and garbage must be true or false")
        if self.reply is not None and not isinstance(self.reply, str):
            raise ValueError("reply must be a string or null")
        for name in ("prompt_tokens", "completion_tokens"):
            if getattr(self, name) is not None:
                _integer(name, getattr(self, name), 0)
        _integer("seed", self.seed, -(2**63), 2**63)
        _number("first_token_delay_ms", self.first_token_delay_ms, 0)
        _number("chunk_delay_ms", self.chunk_delay_ms, 0)
        if self.disconnect_after is not None:
            _integer("disconnect_after", self.disconnect_after, 0)


def _number(name: str, value: Any, low: float, high: float = float("inf")) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")


def _integer(name: str, value: Any, low: int, high: int = 2**31) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass
class _ModelState:
    behaviour: Behaviour
    rng: random.Random
    sequence: deque[int]
    arrived: int = 0

    @classmethod
    def of(cls, behaviour: Behaviour) -> _ModelState:
        return cls(behaviour, random.Random(behaviour.seed), deque(behaviour.status_sequence))

    def next_status(self) -> int:
        self.arrived += 1
        if self.sequence:
            return self.sequence.popleft()
        b = self.behaviour
        if self.arrived <= b.fail_first:
            return b.error_status
        if b.error_rate > 0 and self.rng.random() < b.error_rate:
            return b.error_status
        return 200


@dataclass
class _ModelStats:
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    hung: int = 0
    timestamps: list[float] = field(default_factory=list)
    with_auth: int = 0
    without_auth: int = 0
    endpoints: Counter[str] = field(default_factory=Counter)
    last_request: Any = None
    streams: int = 0
    chunks_sent: list[float] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "statuses": dict(self.statuses), "hung": self.hung,
                "timestamps": list(self.timestamps), "with_auth": self.with_auth,
                "without_auth": self.without_auth, "endpoints": dict(self.endpoints),
                "last_request": self.last_request, "streams": self.streams,
                "chunks_sent": list(self.chunks_sent)}


@dataclass(frozen=True)
class _Plan:
    behaviour: Behaviour
    status: int


class _State:
    """Behaviours and stats of every model; one lock, held only for bookkeeping."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, _ModelState] = {}
        self._stats: dict[str, _ModelStats] = {}

    def configure(self, model: str, behaviour: Behaviour) -> None:
        with self._lock:
            self._models[model] = _ModelState.of(behaviour)

    def behaviours(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {model: asdict(state.behaviour) for model, state in self._models.items()}

    def reset(self, model: str | None = None) -> None:
        with self._lock:
            if model is None:
                self._models.clear()
            else:
                self._models.pop(model, None)

    def stats(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {model: stats.as_json() for model, stats in self._stats.items()}

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.clear()

    def sent(self, model: str, at: float) -> None:
        """A streamed text event of ``model`` went out at ``at``."""
        with self._lock:
            self._stats.setdefault(model, _ModelStats()).chunks_sent.append(at)

    def streamed(self, model: str) -> None:
        with self._lock:
            self._stats.setdefault(model, _ModelStats()).streams += 1

    def admit(self, model: str, endpoint: str, body: Any, *, auth: bool,
              status: int | None = None) -> _Plan:
        """Record one request and decide its status (``status`` forces one, e.g. a 400)."""
        with self._lock:
            state = self._models.get(model)
            if state is None:
                state = self._models[model] = _ModelState.of(Behaviour())
            decided = state.next_status() if status is None else status
            stats = self._stats.setdefault(model, _ModelStats())
            stats.requests += 1
            stats.timestamps.append(time.time())
            stats.endpoints[endpoint] += 1
            stats.last_request = body
            if auth:
                stats.with_auth += 1
            else:
                stats.without_auth += 1
            if state.behaviour.hang and status is None:
                stats.hung += 1
            else:
                stats.statuses[str(decided)] += 1
            return _Plan(state.behaviour, decided)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops SYNs under a benchmark's connection burst.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], *, hang_limit_s: float, quiet: bool) -> None:
        super().__init__(address, _Handler)
        self.state = _State()
        self.stopping = threading.Event()
        self.hang_limit_s = hang_limit_s
        self.quiet = quiet
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)
            if self.stopping.is_set():
                _shutdown(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def open_connections(self) -> int:
        with self._connections_lock:
            return len(self._connections)

    def drop_connections(self) -> None:
        # Keep-alive handlers block in readline() until the peer closes; shutting their
        # sockets down is what lets stop() leave no thread behind serving a dead server.
        with self._connections_lock:
            for connection in self._connections:
                _shutdown(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not self.quiet:
            super().handle_error(request, client_address)


def _shutdown(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer
        connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeLLM/1.0"

    @property
    def _server(self) -> _HTTPServer:
        return cast(_HTTPServer, self.server)

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without NODELAY, Nagle plus the
        # client's delayed ACK add ~40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        if not self._server.quiet:
            super().log_message(format, *args)

    # -- routing ---------------------------------------------------------------------------

    def do_POST(self) -> None:
        raw = self._read_body()
        if raw is None:
            return
        endpoint = _ENDPOINTS.get(self._path())
        if endpoint is None:
            self._send_json(404, {"error": {"message": f"no route POST {self._path()}"}})
            return
        self._complete(endpoint, raw)

    def do_PUT(self) -> None:
        raw = self._read_body()
        if raw is None:
            return
        model = self._model_in_path()
        if not model:
            self._send_json(404, {"error": f"no route PUT {self._path()}"})
            return
        try:
            behaviour = Behaviour.from_json(json.loads(raw or b"{}"))
        except (ValueError, TypeError) as exc:
            self._send_json(400, {"error": str(exc)})
            return
        self._server.state.configure(model, behaviour)
        self._send_json(200, {"model": model, "behaviour": asdict(behaviour)})

    def do_DELETE(self) -> None:
        if self._read_body() is None:
            return
        path, model = self._path(), self._model_in_path()
        if path == _CONTROL_STATS:
            self._server.state.reset_stats()
        elif path == _CONTROL_MODELS or model:
            self._server.state.reset(model)
        else:
            self._send_json(404, {"error": f"no route DELETE {path}"})
            return
        self._send_json(200, {"ok": True})

    def do_GET(self) -> None:
        if self._read_body() is None:
            return
        path = self._path()
        if path == _CONTROL_STATS:
            self._send_json(200, self._server.state.stats())
        elif path == _CONTROL_MODELS:
            self._send_json(200, self._server.state.behaviours())
        else:
            self._send_json(404, {"error": f"no route GET {path}"})

    # -- the fake APIs -----------------------------------------------------------------------

    def _complete(self, endpoint: str, raw: bytes) -> None:
        anthropic = endpoint == "messages"
        try:
            body = json.loads(raw)
            model = body["model"]
            if not isinstance(model, str) or not model:
                raise TypeError("model must be a non-empty string")
        except (ValueError, KeyError, TypeError) as exc:
            self._send_api_error(anthropic, 400, f"invalid request: {exc}")
            return
        auth = bool(self.headers.get("authorization") or self.headers.get("x-api-key"))
        problem = _anthropic_problem(body, self.headers.get("anthropic-version")) \
            if anthropic else None
        plan = self._server.state.admit(model, endpoint, body, auth=auth,
                                        status=400 if problem else None)
        if problem:
            self._send_api_error(anthropic, 400, problem)
            return
        behaviour = plan.behaviour
        if behaviour.latency_ms and self._server.stopping.wait(behaviour.latency_ms / 1000):
            self.close_connection = True
            return
        if behaviour.hang:
            self._hang()
            return
        if plan.status != 200:
            retry_after = behaviour.retry_after if plan.status in RETRY_AFTER_STATUSES else None
            self._send_api_error(anthropic, plan.status, f"injected HTTP {plan.status}",
                                 retry_after=retry_after)
            return
        if behaviour.garbage:
            self._send(200, GARBAGE_BODY, "text/html; charset=utf-8")
            return
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        text = _reply_text(behaviour, model, messages)
        prompt_tokens = behaviour.prompt_tokens if behaviour.prompt_tokens is not None else \
            _words(messages, body.get("system") if anthropic else None)
        completion_tokens = behaviour.completion_tokens \
            if behaviour.completion_tokens is not None else len(text.split())
        if body.get("stream") is True:
            self._stream(anthropic, body, model, text, prompt_tokens, completion_tokens,
                         behaviour)
            return
        if anthropic:
            payload = _anthropic_message(model, text, prompt_tokens, completion_tokens)
        else:
            payload = _openai_completion(model, text, prompt_tokens, completion_tokens)
        self._send_json(200, payload)

    def _stream(self, anthropic: bool, body: dict[str, Any], model: str, text: str,
                prompt: int, completion: int, behaviour: Behaviour) -> None:
        state = self._server.state
        state.streamed(model)
        options = body.get("stream_options")
        events = anthropic_events(model, text, prompt, completion) if anthropic else \
            openai_events(model, text, prompt, completion, isinstance(options, dict)
                          and options.get("include_usage") is True)
        send_stream(self, events, behaviour, self._server.stopping.wait,
                    lambda at: state.sent(model, at))

    def _hang(self) -> None:
        deadline = time.monotonic() + self._server.hang_limit_s
        while time.monotonic() < deadline and not self._client_gone():
            if self._server.stopping.wait(0.05):
                break
        self.close_connection = True

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # -- plumbing -----------------------------------------------------------------------------

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _model_in_path(self) -> str | None:
        prefix = _CONTROL_MODELS + "/"
        path = self.path.split("?", 1)[0]
        if not path.startswith(prefix):
            return None
        return unquote(path[len(prefix):]) or None

    def _read_body(self) -> bytes | None:
        """The request body; None (after answering 411) when its length is unknown."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._send_json(411, {"error": "send a Content-Length"})
            self.close_connection = True
            return None
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_api_error(self, anthropic: bool, status: int, message: str, *,
                        retry_after: float | str | None = None) -> None:
        if anthropic:
            kind = _ANTHROPIC_ERRORS.get(status, "api_error")
            payload: dict[str, Any] = {"type": "error", "error": {"type": kind,
                                                                 "message": message}}
        else:
            kind = _OPENAI_ERRORS.get(status, "server_error")
            payload = {"error": {"message": message, "type": kind, "code": kind}}
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self._send_json(status, payload, headers)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status, _REASONS.get(status))
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout); nothing left to answer.
            self.close_connection = True


def _anthropic_problem(body: dict[str, Any], version: str | None) -> str | None:
    if not version:
        return "anthropic-version: header is required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: field required"
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "messages: field required"
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return f"messages: unexpected role {role!r}; use the top-level system parameter"
    return None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts / blocks
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _words(messages: list[Any], system: Any = None) -> int:
    texts = [_text_of(system)] + [_text_of(m.get("content")) for m in messages
                                  if isinstance(m, dict)]
    return sum(len(text.split()) for text in texts)


def _reply_text(behaviour: Behaviour, model: str, messages: list[Any]) -> str:
    if behaviour.fenced_json is not None:
        return ("Sure! Here is the result you asked for:\n\n```json\n"
                f"{json.dumps(behaviour.fenced_json, indent=2)}\n```\n\n"
                "Let me know if you need anything else.")
    if behaviour.reply is not None:
        return behaviour.reply
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    last = _text_of(users[-1].get("content")) if users else ""
    return f"[{model}] echo: {last}"


def _openai_completion(model: str, text: str, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}", "object": "chat.completion",
        "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
    }


def _anthropic_message(model: str, text: str, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": f"msg_fake_{time.monotonic_ns()}", "type": "message", "role": "assistant",
        "model": model, "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": completion},
    }


class FakeLLMServer:
    """The fake API on ``host`` (127.0.0.1) and ``port`` (0: ephemeral), served by a thread.

    ``url`` is the OpenAI-style base (``http://127.0.0.1:<port>/v1``), ``root_url`` the
    Anthropic-style one (no ``/v1``). Use as a context manager, or ``start()``/``stop()``.
    ``configure``/``reset``/``stats``/``reset_stats`` act directly on the in-process state
    (the same as the HTTP control API that :class:`FakeLLMClient` speaks).
    ``hang_limit_s`` bounds how long a hanging request holds its thread.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, hang_limit_s: float = 60.0,
                 quiet: bool = True) -> None:
        self._address = (host, port)
        self._hang_limit_s = hang_limit_s
        self._quiet = quiet
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port; still known after ``stop()`` (nothing listens on it then)."""
        if self._port is None:
            raise RuntimeError("FakeLLMServer is not started")
        return self._port

    @property
    def root_url(self) -> str:
        """``http://<host>:<port>``: the control API, and the Anthropic provider's base URL."""
        return f"http://{self._address[0]}:{self.port}"

    @property
    def url(self) -> str:
        """``http://<host>:<port>/v1``: the OpenAI provider's base URL."""
        return f"{self.root_url}/v1"

    def start(self) -> FakeLLMServer:
        """Bind and serve in a daemon thread; returns self. Idempotent."""
        if self._httpd is None:
            self._httpd = _HTTPServer(self._address, hang_limit_s=self._hang_limit_s,
                                      quiet=self._quiet)
            self._port = self._httpd.server_address[1]
            self._thread = threading.Thread(target=self._httpd.serve_forever,
                                            kwargs={"poll_interval": 0.05},
                                            name=f"fake-llm-{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release hanging requests and close every connection. Idempotent."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def configure(self, model: str, **behaviour: Any) -> Behaviour:
        """Replace ``model``'s behaviour (see :class:`Behaviour`); ValueError on bad fields."""
        parsed = Behaviour.from_json(behaviour)
        self._running().state.configure(model, parsed)
        return parsed

    def reset(self) -> None:
        """Every model back to the default behaviour, and stats cleared."""
        self._running().state.reset()
        self._running().state.reset_stats()

    def reset_stats(self) -> None:
        """Clear request counters and timestamps; behaviours are kept."""
        self._running().state.reset_stats()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-model stats, the same JSON as ``GET /control/stats``."""
        return self._running().state.stats()

    def open_connections(self) -> int:
        """Client connections open now (in-process only: how many a client keeps)."""
        return self._running().open_connections()

    def _running(self) -> _HTTPServer:
        if self._httpd is None:
            raise RuntimeError("FakeLLMServer is not started")
        return self._httpd


class FakeLLMClient:
    """Drives a fake server (in this process or another) through its HTTP control API.

    ``url`` may be the server's ``url`` (``.../v1``) or its ``root_url``. Close it (or use it
    as a context manager) to release its connection pool.
    """

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        import httpx  # the server itself stays stdlib-only

        root = url.rstrip("/")
        root = root.removesuffix("/v1")
        self._http = httpx.Client(base_url=root, timeout=timeout)

    def configure(self, model: str, **behaviour: Any) -> dict[str, Any]:
        """Replace ``model``'s behaviour; returns it with defaults filled in.

        Raises ValueError with the server's explanation for unknown or ill-typed fields.
        """
        response = self._http.put(f"{_CONTROL_MODELS}/{quote(model, safe='')}", json=behaviour)
        if response.status_code == 400:
            raise ValueError(response.json().get("error", response.text))
        response.raise_for_status()
        return cast(dict[str, Any], response.json()["behaviour"])

    def reset(self) -> None:
        """Every model back to the default behaviour, and stats cleared."""
        self._check(self._http.delete(_CONTROL_MODELS))
        self.reset_stats()

    def reset_stats(self) -> None:
        """Clear request counters and timestamps; behaviours are kept."""
        self._check(self._http.delete(_CONTROL_STATS))

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-model stats: see the module docstring for the shape."""
        return cast(dict[str, dict[str, Any]], self._check(self._http.get(_CONTROL_STATS)).json())

    def requests(self, model: str, since: float | None = None) -> list[float]:
        """Arrival times (epoch seconds) of ``model``'s requests, those at or after ``since``."""
        times = cast(list[float], self.stats().get(model, {}).get("timestamps", []))
        return [t for t in times if since is None or t >= since]

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> FakeLLMClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        response.raise_for_status()
        return response


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; print ``READY <port>`` once listening."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.llm_server",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--hang-limit", type=float, default=60.0,
                        help="seconds a hanging request is held at most")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = FakeLLMServer(args.host, args.port, hang_limit_s=args.hang_limit,
                           quiet=not args.verbose).start()
    print(f"READY {server.port}", flush=True)
    try:
        # A timed wait so the signal handler's set() is noticed promptly on every platform.
        while not done.wait(0.1):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
