"""Model providers: one interface, an HTTP client per API family, and a local one."""

from orchestration.llm.providers.base import Completion, Provider, ProviderError, Usage

__all__ = ["Completion", "Provider", "ProviderError", "Usage"]
