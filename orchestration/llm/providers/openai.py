"""The OpenAI-compatible chat-completions API (OpenAI, vLLM, Ollama, LM Studio, LiteLLM)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from orchestration.errors import ProviderError
from orchestration.llm.providers.async_http import MAX_CONNECTIONS
from orchestration.llm.providers.base import HTTPProvider, Messages, Usage
from orchestration.llm.providers.http import HTTPClient, HTTPResponse
from orchestration.llm.providers.retry_after import retry_after_for
from orchestration.llm.providers.sse import Chunk, broke_off


class OpenAIProvider(HTTPProvider):
    """POST ``{base_url}/chat/completions`` with a bearer key (``client``: see HTTPProvider)."""

    def __init__(self, name: str, base_url: str, api_key: str | None,
                 client: httpx.Client | HTTPClient | None = None, *,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__(name, base_url, client, max_connections=max_connections)
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _body(self, messages: Messages, model: str, params: dict[str, Any]) -> dict[str, Any]:
        return {"model": model, "messages": messages, **params}

    def _answer(self, response: HTTPResponse, model: str) -> tuple[str, Usage]:
        """The chat completion's text and usage; 4xx other than 429 is a final error."""
        if response.status >= 400:
            retryable = response.status == 429 or response.status >= 500
            raise ProviderError(f"{self.name}: HTTP {response.status} from {model}",
                                status=response.status, retryable=retryable,
                                retry_after=retry_after_for(response))
        try:
            body = response.json()
            text = body["choices"][0]["message"]["content"] or ""
            usage = body.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ProviderError(f"{self.name}: malformed response from {model}") from exc
        return str(text), Usage(int(usage.get("prompt_tokens", 0)),
                                int(usage.get("completion_tokens", 0)))

    def stream(self, messages: Messages, *, model: str, first_token_timeout: float,
               **params: Any) -> Iterator[Chunk]:
        """A streamed chat completion (``stream: true``): ``data: {...}`` chunks whose
        ``choices[0].delta.content`` is text, the usage in the last chunk
        (``stream_options.include_usage``), then ``data: [DONE]``."""
        body = {"model": model, "messages": messages, **params, "stream": True,
                "stream_options": {"include_usage": True}}
        for _, data in self._streaming.events(self._url, body, self._headers, model=model,
                                              first_token_timeout=first_token_timeout):
            if data.strip() == "[DONE]":
                return
            try:
                payload = json.loads(data)
                choices = payload.get("choices") or []
                text = (choices[0].get("delta") or {}).get("content") if choices else None
                usage = payload.get("usage")
            except (ValueError, AttributeError, TypeError) as exc:
                raise ProviderError(f"{self.name}: malformed stream chunk from {model}") from exc
            if text:
                yield Chunk(str(text))
            if isinstance(usage, dict):
                yield Chunk(prompt_tokens=int(usage.get("prompt_tokens", 0)),
                            completion_tokens=int(usage.get("completion_tokens", 0)))
        raise broke_off(self.name, model)
