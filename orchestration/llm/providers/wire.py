"""One HTTP/1.1 exchange on a keep-alive socket: the request written in one ``sendall``,
the response parsed by httptools (llhttp, the C parser uvicorn uses).

``http.client`` parsed every response's headers with the ``email`` package in Python and
wrote a request in several calls: about a third of a model call's CPU in a worker
(bench/README.md, "round two"). This module does only what a provider call needs: a POST
with a body, a response framed by ``Content-Length``, chunked, or the connection's end.
:class:`~orchestration.llm.providers.http.KeepAliveClient` owns the connections and
turns the errors below into its transport errors.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping

import httptools

_FORBIDDEN = frozenset("\r\n\0")


class Closed(Exception):
    """The peer closed the connection before a whole response; ``received``: any of it."""

    def __init__(self, received: bool) -> None:
        super().__init__("connection closed before a response" if not received
                         else "connection closed mid-response")
        self.received = received


class Malformed(Exception):
    """What came back is not an HTTP/1.1 response."""


class Headers(dict[str, str]):
    """Response headers by lower-case name (the first of repeated ones); ``get`` ignores
    case, as ``http.client``'s does."""

    def get(self, name: str, default: str | None = None, /) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)


class Response:
    """The parser's callbacks, and what they gathered: status, headers, body."""

    __slots__ = ("_parts", "_size", "complete", "headers", "headers_done", "keep", "limit",
                 "over", "parser", "status")

    def __init__(self, limit: int) -> None:
        self.headers = Headers()
        self.limit = limit
        self.status = 0
        self.complete = self.headers_done = self.over = self.keep = False
        self._parts: list[bytes] = []
        self._size = 0
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)

    @property
    def body(self) -> bytes:
        return b"".join(self._parts)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.limit:
            self.over = True
            self._parts = []
        elif not self.over:
            self._parts.append(data)

    def on_message_complete(self) -> None:
        self.complete = True
        # Asked now: once the message is complete the parser is reset for the next one.
        parser = self.parser
        if parser is not None:
            self.keep = parser.should_keep_alive()
            self.status = parser.get_status_code()

    @property
    def ends_with_connection(self) -> bool:
        """The body has no length and is not chunked: it ends when the connection does."""
        headers = self.headers
        return "content-length" not in headers and "chunked" not in (
            headers.get("transfer-encoding") or "").lower()


def request_head(method: str, path: str, host: str, length: int,
                 headers: Mapping[str, str]) -> bytes:
    """The request line and headers; a CR, LF or NUL in a name or value is refused (no
    header injection)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Accept-Encoding: identity",
             f"Content-Length: {length}"]
    for name, value in headers.items():
        if not _FORBIDDEN.isdisjoint(name) or not _FORBIDDEN.isdisjoint(value) or ":" in name:
            raise ValueError(f"invalid HTTP header {name!r}")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


class Connection:
    """A socket (TLS or not) to one origin, for one exchange at a time."""

    __slots__ = ("__weakref__", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def open(cls, host: str, port: int, timeout: float,
             tls: ssl.SSLContext | None) -> Connection:
        """Connect (``TimeoutError``, ``OSError`` or ``ssl.SSLError`` if it cannot)."""
        sock = socket.create_connection((host, port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def settimeout(self, timeout: float) -> None:
        self.sock.settimeout(timeout)

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        """Write the whole request (``OSError``: the connection is gone)."""
        self.sock.sendall(data)

    def receive(self, limit: int) -> tuple[Response, bool]:
        """Read one response; also whether the connection can carry another.

        Raises :class:`Closed` (the peer closed first), :class:`Malformed`, ``TimeoutError``
        or ``OSError``. A body over ``limit`` bytes stops the read: ``over`` is set and
        the connection must not be reused.
        """
        response = Response(limit)
        try:
            return self._receive(response), response.keep
        finally:
            response.parser = None  # the parser refers to the response: no cycle left

    def _receive(self, response: Response) -> Response:
        parser = response.parser
        assert parser is not None
        received = False
        while not response.complete:
            data = self.sock.recv(65536)
            if not data:
                if response.headers_done and response.ends_with_connection:
                    break  # the body ends with the connection
                raise Closed(received)
            received = True
            try:
                parser.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                raise Malformed(str(exc) or type(exc).__name__) from None
            if response.over:
                response.keep = False
                return response
        if not response.complete:  # ended by the connection's end
            response.status = parser.get_status_code()
        return response
