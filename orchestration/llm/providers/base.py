"""The provider interface every model call goes through."""

from __future__ import annotations

import asyncio
import contextvars
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx

from orchestration.errors import ErrorKind, ProviderError
from orchestration.llm.providers.async_http import MAX_CONNECTIONS, AsyncKeepAliveClient
from orchestration.llm.providers.http import (
    HTTPClient,
    HTTPResponse,
    KeepAliveClient,
    TransportError,
    TransportTimeout,
    client_for,
)
from orchestration.llm.providers.sse import Chunk, StreamingHTTP

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Usage:
    """Tokens a call consumed, as the provider reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Completion:
    """A model's answer: the text, which model answered, tokens and cost in USD."""

    text: str
    model: str
    provider: str
    usage: Usage
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    local_fallback: bool = False


class Provider(ABC):
    """Sends chat messages to one provider; subclasses speak one API family."""

    name: str

    def close(self) -> None:  # noqa: B027 - optional hook: providers without connections keep it
        """Release connections (HTTP providers close their client)."""

    @abstractmethod
    def complete(self, messages: Messages, *, model: str, timeout: float | None,
                 **params: Any) -> tuple[str, Usage]:
        """Send ``messages`` to ``model``; return the text and token usage."""

    async def acomplete(self, messages: Messages, *, model: str, timeout: float | None,
                        **params: Any) -> tuple[str, Usage]:
        """:meth:`complete`, awaited. This default runs it on the running loop's executor
        (a thread, the caller's context along); HTTP providers make the call on the loop."""
        call = partial(self.complete, messages, model=model, timeout=timeout, **params)
        answer: tuple[str, Usage] = await asyncio.get_running_loop().run_in_executor(
            None, contextvars.copy_context().run, call)
        return answer

    def stream(self, messages: Messages, *, model: str, first_token_timeout: float,
               **params: Any) -> Iterator[Chunk]:
        """The answer in chunks as it is generated, then (if reported) its usage.

        This default answers whole (one chunk, then the usage): providers without a
        streaming API still stream, in one piece.
        """
        text, usage = self.complete(messages, model=model, timeout=first_token_timeout,
                                    **params)
        yield Chunk(text)
        yield Chunk(prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens)


class HTTPProvider(Provider):
    """A provider speaking JSON over HTTP: its client, and transport failures as
    retryable :class:`ProviderError`.

    ``client``: an ``httpx.Client`` or an :class:`~orchestration.llm.providers.http.HTTPClient`
    to send with (closed by its owner); by default a keep-alive connection per thread
    (``orchestration.llm.providers.http.client_for``), and for awaited calls
    (:meth:`acomplete`) keep-alive connections on the event loop, at most
    ``max_connections`` in flight per loop (``async_http.py``). A given client, or the
    httpx one used behind a proxy, serves awaited calls on an executor thread.

    A subclass says what to send (:meth:`_body` to ``self._url`` with ``self._headers``)
    and reads the answer (:meth:`_answer`).
    """

    DEFAULT_TIMEOUT_S = 60.0
    _url: str
    _headers: dict[str, str]

    def __init__(self, name: str, base_url: str,
                 client: httpx.Client | HTTPClient | None = None, *,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.name = name
        self._client = client_for(base_url, client)
        self._owns_client = client is None
        self._async = AsyncKeepAliveClient(max_connections=max_connections) \
            if client is None and isinstance(self._client, KeepAliveClient) else None
        # Streamed calls go through httpx (server-sent events read as they arrive).
        self._streaming = StreamingHTTP(name, client if isinstance(client, httpx.Client)
                                        else None)

    @abstractmethod
    def _body(self, messages: Messages, model: str, params: dict[str, Any]) -> dict[str, Any]:
        """The JSON body of a call (ProviderError, not retryable, if it cannot be made)."""

    @abstractmethod
    def _answer(self, response: HTTPResponse, model: str) -> tuple[str, Usage]:
        """The text and usage of a response (ProviderError for an HTTP error or a bad body)."""

    def complete(self, messages: Messages, *, model: str, timeout: float | None,
                 **params: Any) -> tuple[str, Usage]:
        """One call; HTTP errors become ProviderError (4xx other than 429: final)."""
        body = self._body(messages, model, params)
        return self._answer(self._post(self._url, body, self._headers, model=model,
                                       timeout=timeout), model)

    async def acomplete(self, messages: Messages, *, model: str, timeout: float | None,
                        **params: Any) -> tuple[str, Usage]:
        """:meth:`complete` on the running event loop, no thread involved (see the class doc)."""
        if self._async is None:
            return await super().acomplete(messages, model=model, timeout=timeout, **params)
        body = self._body(messages, model, params)
        try:
            response = await self._async.post_json(
                self._url, body, self._headers,
                self.DEFAULT_TIMEOUT_S if timeout is None else timeout)
        except TransportError as exc:
            raise self._unanswered(exc, model) from exc
        return self._answer(response, model)

    def close(self) -> None:
        """Close the HTTP connections this provider opened."""
        if self._owns_client:
            self._client.close()
        if self._async is not None:
            self._async.close()
        self._streaming.close()

    def _post(self, url: str, body: Any, headers: dict[str, str], *, model: str,
              timeout: float | None) -> HTTPResponse:
        """POST ``body``; the response whatever its status. No response: ProviderError
        (of kind ``timeout`` if it timed out, else ``model_unavailable``)."""
        try:
            return self._client.post_json(
                url, body, headers, self.DEFAULT_TIMEOUT_S if timeout is None else timeout)
        except TransportError as exc:
            raise self._unanswered(exc, model) from exc

    def _unanswered(self, exc: TransportError, model: str) -> ProviderError:
        if isinstance(exc, TransportTimeout):
            return ProviderError(f"{self.name}: timed out calling {model}",
                                 kind=ErrorKind.TIMEOUT)
        return ProviderError(f"{self.name}: {type(exc).__name__} calling {model}")
