"""HTTP for provider calls: JSON POSTs from many worker threads at once.

The default client, :class:`KeepAliveClient`, gives every thread its own keep-alive
connection per origin: no pool to scan or lock, because a worker thread makes one call at
a time. Each exchange is written in one ``sendall`` and its response parsed by httptools
(``wire.py``). Measured with 200 threads making 1,000 calls of 100 ms (``bench/perf.py``):
0.30 ms of CPU per call on ``http.client``, against 1.3 ms through one ``httpx.Client``
with its default pool (more connections made it worse: 8.7 ms at 200/200, the pool scans
every connection per request), and httpx's pool also failed about one call in 1,000 with
``ReadError: Bad file descriptor`` under that load. ``http.client`` itself parsed each
response's headers with the ``email`` package: httptools' C parser replaced it.

``httpx`` stays the client for everything the lean one does not do (HTTP/2, proxies,
custom transports): pass an ``httpx.Client`` to a provider, and the engine itself uses one
when the environment configures a proxy for the provider's host.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
import urllib.request
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from orchestration.llm.providers.wire import Closed, Connection, Malformed, request_head

MAX_BODY_BYTES = 32 * 1024 * 1024  # a chat completion is kilobytes; this bounds a bad server
IDLE_EXPIRY_S = 5.0  # as httpx's keepalive_expiry: servers close idle connections after a while
_USER_AGENT = "orchestration/1"
_COMPACT = json.JSONEncoder(separators=(",", ":"))  # one encoder, not one per call


class TransportError(Exception):
    """The request got no HTTP response: connection refused or dropped, timeout, bad framing."""


class ConnectError(TransportError):
    """No connection could be made (refused, unreachable, DNS, TLS handshake)."""


class TransportTimeout(TransportError):
    """Connecting, sending or waiting for the response took longer than the timeout."""


class ReadError(TransportError):
    """The connection failed after the request was sent (reset, closed, malformed reply)."""


class Headers(Protocol):
    """Response headers: a case-insensitive ``get``."""

    def get(self, name: str, /) -> str | None:
        """The header's value, or None."""


@dataclass(frozen=True)
class HTTPResponse:
    """A response read whole: status, headers and body."""

    status: int
    headers: Headers
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (ValueError if it is not)."""
        return json.loads(self.body)


class HTTPClient(Protocol):
    """What a provider needs from HTTP."""

    def post_json(self, url: str, body: Any, headers: Mapping[str, str],
                  timeout: float) -> HTTPResponse:
        """POST ``body`` as JSON; the whole response, whatever its status."""

    def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True)
class Target:
    """Where a URL's requests go: one origin and a path."""

    scheme: str
    host: str
    port: int
    path: str
    authority: str  # the Host header


_UNSAFE_IN_PATH = frozenset(" \t\r\n\0")


def json_post(target: Target, body: Any, headers: Mapping[str, str]) -> bytes:
    """The bytes of a POST of ``body`` as JSON to ``target`` (header values checked)."""
    data = _COMPACT.encode(body).encode()
    return request_head("POST", target.path, target.authority, len(data), {
        "Content-Type": "application/json", "Accept": "application/json",
        "User-Agent": _USER_AGENT, **headers}) + data


def exchange_error(exc: BaseException, timeout: float, *, resend: bool,
                   sent: bool = True) -> TransportError | None:
    """The transport error for an exchange that failed with ``exc``; None: send it again.

    A reused connection the server had closed while idle fails the send, or its reply
    ends before any of it: the server never saw the request, so it goes once more
    (``resend``: this was the first try, on a reused connection).
    """
    if isinstance(exc, TimeoutError):
        return TransportTimeout(f"no response within {timeout:g} s")
    if isinstance(exc, Closed | ConnectionResetError | BrokenPipeError):
        stale = not sent or (isinstance(exc, Closed) and not exc.received)
        if resend and stale:
            return None
        return ReadError(str(exc) if isinstance(exc, Closed)
                         else f"connection closed: {type(exc).__name__}")
    return ReadError(type(exc).__name__)


@lru_cache(maxsize=256)
def target_of(url: str) -> Target:
    """The :class:`Target` of an http(s) URL (ValueError for any other, or an unsafe path)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    path = parts.path or "/"
    path = f"{path}?{parts.query}" if parts.query else path
    if not _UNSAFE_IN_PATH.isdisjoint(path):
        raise ValueError(f"a space or control character in the URL's path: {url!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Target(parts.scheme, parts.hostname, port, path,
                   host if port == default else f"{host}:{port}")


class _Slot:
    """One thread's connection to one origin."""

    __slots__ = ("connection", "pid", "used_at")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.pid = os.getpid()
        self.used_at = time.monotonic()


class KeepAliveClient:
    """One keep-alive connection per thread and origin (see the module doc).

    A connection idle for ``idle_expiry`` seconds is replaced rather than reused. A reused
    connection that the server had closed (the reply fails before its status line) is
    replaced and the request sent once more: the server never saw it. Connections made
    before a fork are never used by the child. TLS verifies certificates with the
    system's trust store (``ssl.create_default_context()``) unless given a context.
    """

    def __init__(self, *, idle_expiry: float = IDLE_EXPIRY_S, max_body: int = MAX_BODY_BYTES,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._idle_expiry = idle_expiry
        self._max_body = max_body
        self._ssl_context = ssl_context
        self._local = threading.local()
        self._lock = threading.Lock()
        # Held weakly: a thread's connection lives in its thread-local slots, which go
        # when the thread ends; the connection's finalizer then closes its socket.
        self._open: weakref.WeakSet[Connection] = weakref.WeakSet()

    def post_json(self, url: str, body: Any, headers: Mapping[str, str],
                  timeout: float) -> HTTPResponse:
        target = target_of(url)
        request = json_post(target, body, headers)
        for attempt in (1, 2):
            slot, reused = self._checkout(target, timeout)
            connection = slot.connection
            sent = False
            try:
                connection.send(request)
                sent = True
                response, keep = connection.receive(self._max_body)
            except (TimeoutError, Closed, Malformed, OSError) as exc:
                self._discard(target, slot)
                error = exchange_error(exc, timeout, resend=reused and attempt == 1, sent=sent)
                if error is None:
                    continue
                raise error from exc
            if response.over:
                self._discard(target, slot)
                raise ReadError(f"response body over {self._max_body} bytes")
            if keep:
                slot.used_at = time.monotonic()
            else:
                self._discard(target, slot)
            return HTTPResponse(response.status, response.headers, response.body)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    @property
    def open_connections(self) -> int:
        """Connections open now, across threads."""
        return len(self._open)

    def close(self) -> None:
        """Close every connection this client opened (from any thread)."""
        with self._lock:
            connections, self._open = list(self._open), weakref.WeakSet()
        for connection in connections:
            connection.close()
        self._local = threading.local()

    def _slots(self) -> dict[Target, _Slot]:
        slots: dict[Target, _Slot] | None = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = {}
        return slots

    def _checkout(self, target: Target, timeout: float) -> tuple[_Slot, bool]:
        slots = self._slots()
        slot = slots.get(target)
        if slot is not None:
            if slot.pid != os.getpid():
                del slots[target]  # the parent's socket: never used here (dropped, its finalizer
                # closes only this process's copy of the descriptor; the parent's stays open)
            elif time.monotonic() - slot.used_at > self._idle_expiry:
                self._discard(target, slot)
            else:
                slot.connection.settimeout(timeout)
                return slot, True
        connection = self._connect(target, timeout)
        # A thread that ends leaves its connection to the garbage collector: close the
        # socket then (the connection is unreachable, so no call is using it).
        weakref.finalize(connection, connection.sock.close)
        slot = slots[target] = _Slot(connection)
        with self._lock:
            self._open.add(connection)
        return slot, False

    def _connect(self, target: Target, timeout: float) -> Connection:
        tls = (self._ssl_context or default_tls()) if target.scheme == "https" else None
        try:
            return Connection.open(target.host, target.port, timeout, tls)
        except (OSError, ssl.SSLError) as exc:
            raise connect_error(exc, target) from exc



    def _discard(self, target: Target, slot: _Slot) -> None:
        slots = self._slots()
        if slots.get(target) is slot:
            del slots[target]
        with self._lock:
            self._open.discard(slot.connection)
        slot.connection.close()


@lru_cache(maxsize=1)
def default_tls() -> ssl.SSLContext:
    """The TLS context of clients given none: the system's trust store, verifying
    certificates and host names (one per process, built on first use)."""
    return ssl.create_default_context()


def connect_error(exc: BaseException, target: Target) -> TransportError:
    """The transport error for a connection to ``target`` that could not be made."""
    if isinstance(exc, TimeoutError):
        return TransportTimeout(f"connect to {target.host}:{target.port} timed out")
    return ConnectError(f"cannot connect to {target.host}:{target.port}: {type(exc).__name__}")


class HttpxClient:
    """An ``httpx.Client`` behind :class:`HTTPClient` (proxies, HTTP/2, test transports)."""

    def __init__(self, client: httpx.Client, *, owned: bool = False) -> None:
        self._client = client
        self._owned = owned

    def post_json(self, url: str, body: Any, headers: Mapping[str, str],
                  timeout: float) -> HTTPResponse:
        try:
            response = self._client.post(url, json=body, headers=dict(headers), timeout=timeout)
        except httpx.TimeoutException as exc:
            raise TransportTimeout(f"no response within {timeout:g} s") from exc
        except httpx.ConnectError as exc:
            raise ConnectError("cannot connect") from exc
        except httpx.HTTPError as exc:
            raise ReadError(type(exc).__name__) from exc
        return HTTPResponse(response.status_code, response.headers, response.content)

    def close(self) -> None:
        if self._owned:
            self._client.close()


def client_for(base_url: str, given: httpx.Client | HTTPClient | None) -> HTTPClient:
    """The HTTP client a provider at ``base_url`` uses.

    A given ``httpx.Client`` is wrapped (the caller closes it); a given :class:`HTTPClient`
    is used as is. Otherwise: a :class:`KeepAliveClient`, unless the environment sets a
    proxy for that host (``HTTPS_PROXY``/``HTTP_PROXY`` without a ``NO_PROXY`` match),
    which httpx honours and the lean client does not.
    """
    if isinstance(given, httpx.Client):
        return HttpxClient(given)
    if given is not None:
        return given
    if _proxied(base_url):
        return HttpxClient(httpx.Client(timeout=60.0), owned=True)
    return KeepAliveClient()


def _proxied(url: str) -> bool:
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not parts.hostname or (parts.scheme not in proxies and "all" not in proxies):
        return False
    return not urllib.request.proxy_bypass(parts.hostname)
