"""The OpenAI-compatible chat-completions API (OpenAI, vLLM, Ollama, LM Studio, LiteLLM)."""

from __future__ import annotations

from typing import Any

import httpx

from orchestration.providers.anthropic import retry_after_for
from orchestration.providers.base import Messages, Provider, ProviderError, Usage
from orchestration.providers.http import HTTPClient, TransportError, TransportTimeout, client_for


class OpenAIProvider(Provider):
    """POST ``{base_url}/chat/completions`` with a bearer key.

    ``client``: an ``httpx.Client`` or an :class:`~orchestration.providers.http.HTTPClient`
    to send with (closed by its owner); by default a keep-alive connection per thread.
    """

    def __init__(self, name: str, base_url: str, api_key: str | None,
                 client: httpx.Client | HTTPClient | None = None) -> None:
        self.name = name
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client_for(base_url, client)
        self._owns_client = client is None

    def close(self) -> None:
        """Close the HTTP connections this provider opened."""
        if self._owns_client:
            self._client.close()

    def complete(self, messages: Messages, *, model: str, timeout: float | None,
                 **params: Any) -> tuple[str, Usage]:
        """One chat completion; HTTP errors become ProviderError (4xx other than 429: final)."""
        try:
            response = self._client.post_json(
                self._url, {"model": model, "messages": messages, **params}, self._headers,
                timeout if timeout is not None else 60.0)
        except TransportTimeout as exc:
            raise ProviderError(f"{self.name}: timed out calling {model}") from exc
        except TransportError as exc:
            raise ProviderError(f"{self.name}: {type(exc).__name__} calling {model}") from exc
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
