"""The OpenAI-compatible chat-completions API (OpenAI, vLLM, Ollama, LM Studio, LiteLLM)."""

from __future__ import annotations

from typing import Any

import httpx

from orchestration.errors import ProviderError
from orchestration.llm.providers.base import HTTPProvider, Messages, Usage
from orchestration.llm.providers.http import HTTPClient
from orchestration.llm.providers.retry_after import retry_after_for


class OpenAIProvider(HTTPProvider):
    """POST ``{base_url}/chat/completions`` with a bearer key (``client``: see HTTPProvider)."""

    def __init__(self, name: str, base_url: str, api_key: str | None,
                 client: httpx.Client | HTTPClient | None = None) -> None:
        super().__init__(name, base_url, client)
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def complete(self, messages: Messages, *, model: str, timeout: float | None,
                 **params: Any) -> tuple[str, Usage]:
        """One chat completion; HTTP errors become ProviderError (4xx other than 429: final)."""
        response = self._post(self._url, {"model": model, "messages": messages, **params},
                              self._headers, model=model, timeout=timeout)
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
