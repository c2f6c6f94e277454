"""What model calls share in one process: catalogue, providers, breakers, limits, latencies.

Built once per orchestrator. With ``ORCH_REDIS_URL`` (or a Redis broker) breaker state,
rate limits and latencies are shared by every worker; without, they are per process.
"""

from __future__ import annotations

import os
import threading

import redis

from orchestration.define.adaptive import Latencies
from orchestration.llm.breakers import Breakers
from orchestration.llm.catalogue import Catalogue, ProviderConfig
from orchestration.llm.providers.anthropic import AnthropicProvider
from orchestration.llm.providers.base import Provider
from orchestration.llm.providers.local import LocalProvider
from orchestration.llm.providers.openai import OpenAIProvider
from orchestration.llm.ratelimit import RateLimiter
from orchestration.llm.tokens import TokenCounters

REDIS_CONNECTIONS = 256
REDIS_TIMEOUT = 10.0  # seconds; the default of ORCH_REDIS_TIMEOUT


class Resilience:
    """The process's model-call machinery for one catalogue."""

    def __init__(self, catalogue: Catalogue, redis_url: str | None,
                 redis_timeout: float = REDIS_TIMEOUT) -> None:
        self.catalogue = catalogue
        # A blocking pool: past its size, threads wait for a connection instead of failing
        # (redis-py's default pool raises MaxConnectionsError beyond 100 in a worker).
        # Every command is bounded (``ORCH_REDIS_TIMEOUT``): a hung server fails calls as a
        # down one does instead of blocking a step, a run's finalisation or a waiter.
        self.redis_timeout = redis_timeout
        self.redis = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            redis_url, max_connections=REDIS_CONNECTIONS, timeout=30,
            socket_timeout=redis_timeout, socket_connect_timeout=redis_timeout,
        )) if redis_url else None
        self.breakers = Breakers(self.redis, {name: model.breaker.policy()
                                              for name, model in catalogue.models.items()})
        self.limiter = RateLimiter(self.redis)
        self.latencies = Latencies(self.redis)
        # Token estimates per model, corrected by what providers report (this process).
        self.tokens = TokenCounters({name: model.tokens
                                     for name, model in catalogue.models.items()})
        self._providers: dict[str, Provider] = {}
        self._lock = threading.Lock()

    def provider(self, name: str) -> Provider | None:
        """The client of provider ``name``, or None when it is not configured (no API key)."""
        provider = self._providers.get(name)
        if provider is not None:  # the common case: no lock (every model call asks)
            return provider
        config = self.catalogue.providers[name]
        if not config.configured:
            return None
        with self._lock:
            provider = self._providers.get(name)
            if provider is None:
                provider = _build(name, config)
                self._providers[name] = provider
            return provider


    def close(self) -> None:
        """Close the providers' HTTP connection pools."""
        with self._lock:
            providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            provider.close()


def _build(name: str, config: ProviderConfig) -> Provider:
    key = os.environ.get(config.api_key_env) if config.api_key_env else None
    if config.kind == "local":
        return LocalProvider()
    if config.kind == "anthropic":
        return AnthropicProvider(name, config.base_url or "", key,
                                 max_connections=config.max_connections)
    return OpenAIProvider(name, config.base_url or "", key,
                          max_connections=config.max_connections)
