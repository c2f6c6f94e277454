"""The provider interface every model call goes through."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from orchestration.errors import ErrorKind, ProviderError
from orchestration.llm.providers.http import (
    HTTPClient,
    HTTPResponse,
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
    (``orchestration.llm.providers.http.client_for``).
    """

    DEFAULT_TIMEOUT_S = 60.0

    def __init__(self, name: str, base_url: str,
                 client: httpx.Client | HTTPClient | None = None) -> None:
        self.name = name
        self._client = client_for(base_url, client)
        self._owns_client = client is None
        # Streamed calls go through httpx (server-sent events read as they arrive).
        self._streaming = StreamingHTTP(name, client if isinstance(client, httpx.Client)
                                        else None)

    def close(self) -> None:
        """Close the HTTP connections this provider opened."""
        if self._owns_client:
            self._client.close()
        self._streaming.close()

    def _post(self, url: str, body: Any, headers: dict[str, str], *, model: str,
              timeout: float | None) -> HTTPResponse:
        """POST ``body``; the response whatever its status. No response: ProviderError
        (of kind ``timeout`` if it timed out, else ``model_unavailable``)."""
        try:
            return self._client.post_json(
                url, body, headers, self.DEFAULT_TIMEOUT_S if timeout is None else timeout)
        except TransportTimeout as exc:
            raise ProviderError(f"{self.name}: timed out calling {model}",
                                kind=ErrorKind.TIMEOUT) from exc
        except TransportError as exc:
            raise ProviderError(f"{self.name}: {type(exc).__name__} calling {model}") from exc
