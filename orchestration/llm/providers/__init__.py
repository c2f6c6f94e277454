"""Model providers: one interface, an HTTP client per API family, and a local one."""

from orchestration.errors import ProviderError
from orchestration.llm.providers.base import Completion, Provider, Usage

__all__ = ["Completion", "Provider", "ProviderError", "Usage"]
