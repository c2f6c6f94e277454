"""HTTP for provider calls awaited on an event loop (``await ctx.llm.acomplete``).

The exchange of ``http.py``'s :class:`~orchestration.llm.providers.http.KeepAliveClient`
served by the loop itself: the request is written to an asyncio transport in one piece
and the response parsed by the same httptools callbacks (``wire.Response``) as its bytes
arrive. Before this, an awaited call ran the synchronous one on an executor thread, and
with hundreds of calls in flight about half of a call's CPU went to handing the GIL
between those threads (bench/README.md, "round two").

Connections are kept per event loop and origin: an idle one is reused (the most recent
first) for up to ``idle_expiry`` seconds, and at most ``max_connections`` calls of one
loop to one origin are in flight at once (one connection each; the next call waits for a
free one). A reused connection the server had closed gets the request once more, as the
threaded client does: the server never saw it. A call cancelled mid-exchange (a step's
timeout, a cancelled run) closes its connection, so no later call reads the rest of that
reply. Connections made before a fork are never used or closed by the child.

Connections belong to the loop that opened them. A worker's loop lives as long as its
process. A short-lived loop (``asyncio.run`` around each call, in a script or a request
handler) is closed with its connections still open, and they cannot be closed through a
closed loop: the client lets go of them, and of the loop they hold, when the next loop
makes its first call, and the garbage collector closes their sockets. Ending such a loop
with :meth:`AsyncKeepAliveClient.close` (a provider's ``close``) closes them at once.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, cast

import httptools

from orchestration.llm.providers.http import (
    IDLE_EXPIRY_S,
    MAX_BODY_BYTES,
    HTTPResponse,
    ReadError,
    Target,
    connect_error,
    default_tls,
    exchange_error,
    json_post,
    target_of,
)
from orchestration.llm.providers.wire import Closed, Malformed, Response

MAX_CONNECTIONS = 256  # per event loop and origin, as a provider's default


class _Exchange(asyncio.Protocol):
    """One connection, and the response being read on it (one exchange at a time)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.received = False  # any byte of the current response
        self.lost = False
        self.used_at = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or response.parser is None:
            self.close()  # bytes no request asked for: the connection cannot be trusted
            return
        self.received = True
        try:
            response.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._settle(Malformed(str(exc) or type(exc).__name__))
            return
        if response.complete or response.over:
            self._settle(None)

    def eof_received(self) -> bool | None:
        return None  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        response = self.response
        if response is None or response.complete or response.parser is None:
            return
        if response.headers_done and response.ends_with_connection:
            response.status = response.parser.get_status_code()  # the body ended with it
            self._settle(None)
        elif exc is not None:
            self._settle(exc)  # reset: the server may have taken the request, no resend
        else:
            self._settle(Closed(self.received))

    def _settle(self, error: BaseException | None) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    async def exchange(self, request: bytes, timeout: float, limit: int) -> tuple[Response, bool]:
        """Send ``request``, read its response; also whether the connection can carry
        another. Raises :class:`Closed`, :class:`Malformed` or ``TimeoutError``."""
        loop = asyncio.get_running_loop()
        response = self.response = Response(limit)
        self.received = False
        waiter = self.waiter = loop.create_future()
        timer = loop.call_later(timeout, self._settle, TimeoutError())
        try:
            if self.lost or self.transport is None or self.transport.is_closing():
                raise Closed(False)
            self.transport.write(request)
            await waiter
        finally:
            timer.cancel()
            self.waiter = self.response = None
            response.parser = None  # the parser refers to the response: no cycle left
        if response.over:
            response.keep = False
        return response, response.keep and not self.lost

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class _Pool:
    """One loop's connections to one origin."""

    __slots__ = ("idle", "open", "slots")

    def __init__(self, limit: int) -> None:
        self.idle: list[_Exchange] = []
        self.open: set[_Exchange] = set()
        self.slots = asyncio.Semaphore(limit)

    def drop(self, connection: _Exchange) -> None:
        self.open.discard(connection)
        connection.close()


class AsyncKeepAliveClient:
    """Keep-alive connections per event loop and origin (see the module doc)."""

    def __init__(self, *, max_connections: int = MAX_CONNECTIONS,
                 idle_expiry: float = IDLE_EXPIRY_S, max_body: int = MAX_BODY_BYTES,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
        self._max_connections = max_connections
        self._idle_expiry = idle_expiry
        self._max_body = max_body
        self._ssl_context = ssl_context
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                               dict[Target, _Pool]] = weakref.WeakKeyDictionary()

    async def post_json(self, url: str, body: Any, headers: Mapping[str, str],
                        timeout: float) -> HTTPResponse:
        """POST ``body`` as JSON; the whole response, whatever its status (transport
        failures raise ``http.py``'s :class:`TransportError` kinds)."""
        target = target_of(url)
        request = json_post(target, body, headers)
        pool = self._pool(target)
        async with pool.slots:
            for attempt in (1, 2):
                connection, reused = await self._checkout(pool, target, timeout)
                try:
                    response, keep = await connection.exchange(request, timeout, self._max_body)
                except (TimeoutError, Closed, Malformed, OSError) as exc:
                    pool.drop(connection)
                    error = exchange_error(exc, timeout, resend=reused and attempt == 1)
                    if error is None:
                        continue
                    raise error from exc
                except BaseException:
                    pool.drop(connection)  # cancelled mid-exchange: the rest of the reply
                    raise
                if response.over:
                    pool.drop(connection)
                    raise ReadError(f"response body over {self._max_body} bytes")
                if keep:
                    connection.used_at = time.monotonic()
                    pool.idle.append(connection)
                else:
                    pool.drop(connection)
                return HTTPResponse(response.status, response.headers, response.body)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    @property
    def open_connections(self) -> int:
        """Connections open now, across loops."""
        with self._lock:
            pools = [pool for by_target in self._pools.values() for pool in by_target.values()]
        return sum(len(pool.open) for pool in pools)

    def close(self) -> None:
        """Close every connection this client opened (from any thread)."""
        with self._lock:
            pools, self._pools = self._pools, weakref.WeakKeyDictionary()
        if os.getpid() != self._pid:
            return  # the parent's connections: leave them to the parent
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, by_target in list(pools.items()):
            connections = [c for pool in by_target.values() for c in pool.open]
            if loop is current:
                for connection in connections:
                    connection.close()
            elif not loop.is_closed():
                for connection in connections:
                    loop.call_soon_threadsafe(connection.close)

    def _pool(self, target: Target) -> _Pool:
        loop = asyncio.get_running_loop()
        pools = self._pools.get(loop)
        if pools is None or os.getpid() != self._pid:
            with self._lock:
                if os.getpid() != self._pid:  # forked: start afresh, never touch the parent's
                    self._pid, self._pools = os.getpid(), weakref.WeakKeyDictionary()
                # A closed loop's pools hold its transports, which hold the loop: kept,
                # neither would ever be freed (one loop and one socket per asyncio.run).
                for gone in [other for other in self._pools if other.is_closed()]:
                    del self._pools[gone]
                pools = self._pools.setdefault(loop, {})
        pool = pools.get(target)
        if pool is None:
            pool = pools[target] = _Pool(self._max_connections)
        return pool

    async def _checkout(self, pool: _Pool, target: Target,
                        timeout: float) -> tuple[_Exchange, bool]:
        now = time.monotonic()
        while pool.idle:
            connection = pool.idle.pop()
            if not connection.lost and now - connection.used_at <= self._idle_expiry:
                return connection, True
            pool.drop(connection)
        tls = (self._ssl_context or default_tls()) if target.scheme == "https" else None
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(loop.create_connection(
                _Exchange, target.host, target.port, ssl=tls,
                server_hostname=target.host if tls is not None else None), timeout)
        except (OSError, ssl.SSLError) as exc:
            raise connect_error(exc, target) from exc
        pool.open.add(connection)
        return connection, False
