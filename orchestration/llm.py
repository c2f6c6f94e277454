"""``ctx.llm``: model calls from a step, with cost recorded on that step.

The model named by the call (or the step's ``model=``, or the catalogue's default) is
looked up in the catalogue; a model whose provider is not configured (no API key) is
answered by the local provider, and the answer says so.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from orchestration.catalogue import Catalogue, ProviderConfig, load_catalogue
from orchestration.providers.base import Completion, Messages, Provider
from orchestration.providers.local import LocalProvider
from orchestration.providers.openai import OpenAIProvider

if TYPE_CHECKING:
    from orchestration.context import StepContext

_providers: dict[str, Provider] = {}
_catalogue: Catalogue | None = None
_lock = threading.Lock()


def catalogue() -> Catalogue:
    """The process's model catalogue (``ORCH_MODELS_FILE`` or the packaged default)."""
    global _catalogue
    if _catalogue is None:
        with _lock:
            if _catalogue is None:
                from config.settings import Settings

                _catalogue = load_catalogue(Settings().models_file)
    return _catalogue


def _provider(name: str, config: ProviderConfig) -> Provider:
    with _lock:
        provider = _providers.get(name)
        if provider is None:
            if config.kind == "local":
                provider = LocalProvider()
            else:
                import os

                key = os.environ.get(config.api_key_env) if config.api_key_env else None
                provider = OpenAIProvider(name, config.base_url or "", key)
            _providers[name] = provider
        return provider


class LLMClient:
    """Model calls bound to one step attempt."""

    def __init__(self, ctx: StepContext) -> None:
        self._ctx = ctx

    def complete(self, prompt: str | Messages, *, model: str | None = None,
                 **params: Any) -> Completion:
        """Ask a model; returns text, the model that answered, tokens and cost (recorded)."""
        messages: Messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                              else list(prompt))
        cat = catalogue()
        name = model or self._ctx.model or cat.default_model
        if name is None:
            raise ValueError("no model named and the catalogue has no default_model")
        config = cat.model(name)
        provider_config = cat.providers[config.provider]
        local = not provider_config.configured
        provider = LocalProvider() if local else _provider(config.provider, provider_config)
        started = time.perf_counter()
        text, usage = provider.complete(messages, model=name, timeout=self._ctx.remaining(),
                                        **params)
        cost = 0.0 if local else config.cost(usage.prompt_tokens, usage.completion_tokens)
        answered = f"local ({name} not configured)" if local else name
        self._ctx.record_cost(cost, model=answered)
        return Completion(text=text, model=answered, provider=provider.name, usage=usage,
                          cost_usd=cost, latency_ms=(time.perf_counter() - started) * 1000,
                          local_fallback=local)
