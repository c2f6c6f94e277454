"""The OpenAI-compatible chat-completions API (OpenAI, vLLM, Ollama, LM Studio, LiteLLM)."""

from __future__ import annotations

from typing import Any

import httpx

from orchestration.providers.anthropic import retry_after_for
from orchestration.providers.base import HTTP_LIMITS, Messages, Provider, ProviderError, Usage


class OpenAIProvider(Provider):
    """POST ``{base_url}/chat/completions`` with a bearer key; one pooled client per process."""

    def __init__(self, name: str, base_url: str, api_key: str | None,
                 client: httpx.Client | None = None) -> None:
        self.name = name
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.Client(timeout=60.0, limits=HTTP_LIMITS)
        self._owns_client = client is None

    def close(self) -> None:
        """Close the HTTP client this provider created."""
        if self._owns_client:
            self._client.close()

    def complete(self, messages: Messages, *, model: str, timeout: float | None,
                 **params: Any) -> tuple[str, Usage]:
        """One chat completion; HTTP errors become ProviderError (4xx other than 429: final)."""
        try:
            response = self._client.post(
                f"{self._base_url}/chat/completions",
                json={"model": model, "messages": messages, **params},
                headers=self._headers,
                timeout=timeout if timeout is not None else 60.0,
            )
        except httpx.TimeoutException as exc:
            raise ProviderError(f"{self.name}: timed out calling {model}") from exc
        except httpx.HTTPError as exc:
            raise ProviderError(f"{self.name}: {type(exc).__name__} calling {model}") from exc
        if response.status_code >= 400:
            retryable = response.status_code == 429 or response.status_code >= 500
            raise ProviderError(f"{self.name}: HTTP {response.status_code} from {model}",
                                status=response.status_code, retryable=retryable,
                                retry_after=retry_after_for(response))
        try:
            body = response.json()
            text = body["choices"][0]["message"]["content"] or ""
            usage = body.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ProviderError(f"{self.name}: malformed response from {model}") from exc
        return str(text), Usage(int(usage.get("prompt_tokens", 0)),
                                int(usage.get("completion_tokens", 0)))
