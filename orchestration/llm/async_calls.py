"""``await ctx.llm.acomplete(...)``: model calls from an ``async def`` step, on the loop.

The same call as :meth:`LLMClient.complete` (fallback models, budgets, breakers, shared
rate limits, timeouts, tenacity retries, cost and trace recorded on the step, the step's
``on_error`` per call), awaited on the running event loop: an HTTP provider's request
goes out on the loop's own connections (``providers/async_http.py``) and retries sleep
with ``asyncio.sleep``, so thousands of calls can be in flight in one worker process
without a thread each.

Whatever needs Redis or the results DB runs on the loop's executor, so a slow store holds
up its own call and never the loop: admission under a shared rate limit (it may wait for
a token), an adaptive timeout's latencies, a breaker whose reading is stale or that
counts a failure, the run's spend when the run has a ``budget``. A call that needs none of
these (fixed timeout, no shared limit, healthy breaker) never leaves the loop. Providers
without an awaitable client (a caller's own ``httpx.Client``, a proxy) are called on an
executor thread.

Calling the synchronous ``ctx.llm.complete`` inside an ``async def`` step works but blocks
the loop (and every async step of the process) for the whole call.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel
from tenacity import AsyncRetrying

from orchestration.define.policies import first_then_retry_async
from orchestration.errors import ProviderError, RateLimited
from orchestration.llm.json_answers import JSONAsk

if TYPE_CHECKING:
    from orchestration.llm.catalogue import ModelConfig
    from orchestration.llm.providers.base import Completion, Messages, Provider


class AwaitingClient(Protocol):
    """What awaited calls use of :class:`~orchestration.llm.client.LLMClient` (its
    internals: an awaited call's policies are the client's, as a streamed one's are)."""

    @property
    def _services(self) -> Any: ...
    @property
    def _ctx(self) -> Any: ...
    def _as_messages(self, prompt: Any, history: Any) -> Messages: ...
    def _chain(self, model: str | None) -> Any: ...
    def _check_budget(self, *args: Any, **kwargs: Any) -> Any: ...
    def _limits(self, *args: Any, **kwargs: Any) -> list[Any]: ...
    def _shares_outcome(self, *args: Any, **kwargs: Any) -> bool: ...
    def _admit(self, *args: Any, **kwargs: Any) -> Any: ...
    def _call_timeout(self, *args: Any, **kwargs: Any) -> float: ...
    def _failed(self, *args: Any, **kwargs: Any) -> Any: ...
    def _succeeded(self, *args: Any, **kwargs: Any) -> Completion: ...
    def _utilisation(self, prompt_tokens: int, config: ModelConfig) -> float: ...
    def _retryable(self) -> Any: ...
    def _retry_options(self, config: ModelConfig, retryable: Any) -> dict[str, Any]: ...


async def acomplete(client: AwaitingClient, prompt: str | Messages, *, model: str | None = None,
                    history: Any = None, **params: Any) -> Completion:
    """``client.complete(prompt, ...)`` awaited on the event loop (the same options)."""
    messages = client._as_messages(prompt, history)
    chain = client._chain(model)
    for candidate, config, provider in chain:
        if client._ctx.run_budget is None:
            client._check_budget()
        else:  # the run's spend is read from the results DB
            await asyncio.to_thread(client._check_budget)
        try:
            return await _call(client, candidate, config, provider, messages, params)
        except (ProviderError, RateLimited) as exc:
            chain.failed(candidate, exc)
    answer: Completion = chain.end(messages, params)
    return answer


async def acomplete_json(client: AwaitingClient, prompt: str | Messages, *,
                         schema: type[BaseModel] | dict[str, Any], model: str | None = None,
                         attempts: int = 3, **params: Any) -> Any:
    """``client.complete_json(prompt, schema=..., ...)`` awaited on the event loop."""
    asking = JSONAsk(prompt, schema)
    for _ in range(max(1, attempts)):
        done, value = asking.check(
            await acomplete(client, asking.messages, model=model, **params))
        if done:
            return value
    raise asking.failed(attempts)


async def _call(client: AwaitingClient, name: str, config: ModelConfig, provider: Provider,
                messages: Messages, params: dict[str, Any]) -> Completion:
    """One model's call, retried: ``LLMClient._call`` awaited (see the module doc)."""
    services = client._services
    breaker = services.breakers.get(name)
    counter = services.tokens.get(name)
    estimated = counter.raw_messages(messages)
    limited = bool(client._limits(name, config))
    fixed = isinstance(config.timeout_policy(), float | int)
    shares = client._shares_outcome(name, config)

    async def once() -> Completion:
        if limited:
            await asyncio.to_thread(client._admit, name, config)
        timeout = client._call_timeout(name, config) if fixed else \
            await asyncio.to_thread(client._call_timeout, name, config)
        started = time.perf_counter()
        try:
            text, usage = await breaker.acall(provider.acomplete, messages, model=name,
                                              timeout=timeout, **params)
        except ProviderError as exc:
            client._failed(name, config, exc, started, await breaker.astate_name(),
                           counter.count_messages(messages))
            raise
        counter.observe(estimated, usage.prompt_tokens)
        prompt = usage.prompt_tokens or counter.count_messages(messages)
        state = await breaker.astate_name()
        args = (name, config, provider, text, usage, started, state,
                client._utilisation(prompt, config))
        if shares:
            return await asyncio.to_thread(client._succeeded, *args)
        return client._succeeded(*args)

    retryable = client._retryable()
    return await first_then_retry_async(
        once, lambda: AsyncRetrying(**client._retry_options(config, retryable)), retryable)
