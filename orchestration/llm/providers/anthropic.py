"""The Anthropic Messages API (``POST /v1/messages``); ``Retry-After`` parsing for HTTP APIs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx

from orchestration.errors import ProviderError
from orchestration.llm.providers.async_http import MAX_CONNECTIONS
from orchestration.llm.providers.base import HTTPProvider, Messages, Usage
from orchestration.llm.providers.http import HTTPClient, HTTPResponse
from orchestration.llm.providers.retry_after import retry_after_for
from orchestration.llm.providers.sse import Chunk, broke_off

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
# Only a machine-readable error type goes into messages: free text from the server may
# quote the request (a masked key, a prompt) and messages end up in logs and the database.
_ERROR_TYPE = re.compile(r"[a-z_]{1,64}")


class AnthropicProvider(HTTPProvider):
    """POST ``{base_url}/v1/messages`` with an ``x-api-key`` (``client``: see HTTPProvider).

    ``base_url`` is the API root (``https://api.anthropic.com``), without ``/v1``. System
    messages are joined into the request's top-level ``system``; ``max_tokens`` defaults
    to 1024; other params (``temperature``, ``top_p``, ``stop_sequences``...) are sent as
    they are.
    """

    def __init__(self, name: str, base_url: str, api_key: str | None,
                 client: httpx.Client | HTTPClient | None = None, *,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__(name, base_url, client, max_connections=max_connections)
        self._url = f"{base_url.rstrip('/')}/v1/messages"
        self._headers = {"anthropic-version": API_VERSION, "content-type": "application/json"}
        if api_key:
            self._headers["x-api-key"] = api_key

    def _answer(self, response: HTTPResponse, model: str) -> tuple[str, Usage]:
        """The message's text and usage.

        Timeouts, connection errors, 429, 5xx (529 included) and malformed bodies are
        retryable; ``retry_after`` carries the server's ``Retry-After`` on 429/503/529. A
        message whose role is neither system, user nor assistant is a final error, raised
        before anything is sent (by :meth:`_body`).
        """
        if response.status >= 400:
            status = response.status
            kind = _error_type(response)
            raise ProviderError(
                f"{self.name}: HTTP {status}{f' ({kind})' if kind else ''} from {model}",
                status=status, retryable=status == 429 or status >= 500,
                retry_after=retry_after_for(response),
            )
        try:
            payload = response.json()
            text = "".join(str(block["text"]) for block in payload["content"]
                           if block.get("type") == "text")
            usage = payload.get("usage") or {}
            tokens = Usage(int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ProviderError(f"{self.name}: malformed response from {model}") from exc
        return text, tokens

    def stream(self, messages: Messages, *, model: str, first_token_timeout: float,
               **params: Any) -> Iterator[Chunk]:
        """A streamed message (``stream: true``): text from ``content_block_delta``
        events, input tokens from ``message_start``, output tokens from ``message_delta``,
        the end at ``message_stop``; an ``error`` event is a retryable ProviderError."""
        body = {**self._body(messages, model, params), "stream": True}
        prompt: int | None = None
        for name, data in self._streaming.events(self._url, body, self._headers, model=model,
                                                 first_token_timeout=first_token_timeout):
            try:
                payload = json.loads(data)
                kind = name or payload.get("type")
                if kind == "content_block_delta":
                    text = (payload.get("delta") or {}).get("text")
                    if text:
                        yield Chunk(str(text))
                elif kind == "message_start":
                    usage = (payload.get("message") or {}).get("usage") or {}
                    prompt = int(usage.get("input_tokens", 0))
                elif kind == "message_delta":
                    usage = payload.get("usage") or {}
                    yield Chunk(prompt_tokens=prompt,
                                completion_tokens=int(usage.get("output_tokens", 0)))
                elif kind == "message_stop":
                    return
                elif kind == "error":
                    error = (payload.get("error") or {}).get("type")
                    kind_text = error if isinstance(error, str) and _ERROR_TYPE.fullmatch(
                        error) else "error"
                    raise ProviderError(f"{self.name}: {kind_text} mid-stream from {model}")
            except (ValueError, AttributeError, TypeError) as exc:
                raise ProviderError(f"{self.name}: malformed stream event from {model}") \
                    from exc
        raise broke_off(self.name, model)

    def _body(self, messages: Messages, model: str, params: dict[str, Any]) -> dict[str, Any]:
        system: list[str] = []
        turns: list[dict[str, str]] = []
        for message in messages:
            role = message.get("role", "user")
            if role == "system":
                system.append(message.get("content", ""))
            elif role in ("user", "assistant"):
                turns.append({"role": role, "content": message.get("content", "")})
            else:
                raise ProviderError(f"{self.name}: unsupported message role {role!r} for {model}",
                                    retryable=False)
        body: dict[str, Any] = {**params, "model": model,
                                "max_tokens": params.get("max_tokens") or DEFAULT_MAX_TOKENS,
                                "messages": turns}
        if system:
            body["system"] = "\n\n".join(system)
        return body


def _error_type(response: HTTPResponse) -> str | None:
    """Anthropic's ``error.type`` (``overloaded_error``...) if the body has a well-formed one."""
    try:
        kind = response.json()["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return None
    return kind if isinstance(kind, str) and _ERROR_TYPE.fullmatch(kind) else None
