"""``ctx.llm``: every model call from a step goes through here.

For the model asked for (the call's ``model=``, else the step's ``model=``, else the
catalogue default) and then each of its fallbacks in order:

1. a provider that is not configured (no API key) is skipped;
2. budgets are checked: the step's ``max_cost`` and the run's ``budget`` stop new calls
   with :class:`BudgetExceeded` (not retried);
3. the model's breaker decides: open means no call at all, straight to the next model;
4. shared rate limits admit the call (waiting at most until the step's deadline);
5. the call is made with a timeout of min(the step's remaining time, the model's fixed
   or adaptive timeout) and retried with tenacity on transient errors (timeouts, 429
   honouring Retry-After, 5xx, connection errors), never on 4xx or an open breaker;
6. the step's ``on_error`` entries for ``timeout``, ``model_unavailable`` and
   ``rate_limited`` act per call: ``retry(n)`` retries the call n times (instead of the
   model's ``retries``), ``route_to_fallback`` moves to the next model at once, ``skip``,
   ``fail`` and ``escalate`` stop here (no other model) for the step to act on; the
   call's trace names the policy that acted;
7. cost (every call, retries included) and the call's trace are recorded on the step,
   with its context-window utilisation (prompt tokens / the model's ``context_window``;
   the provider's reported prompt tokens also correct the model's offline estimate).

If no provider of the chain is configured at all, the local provider answers and the
text says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
)
from tenacity.stop import stop_base

from orchestration.core.results import CallRecord
from orchestration.core.threads import run_bounded
from orchestration.define.on_error import Action, ErrorAction, ErrorPolicy, describe_policy
from orchestration.define.policies import Backoff, first_then_retry
from orchestration.errors import (
    BreakerOpen,
    BudgetExceeded,
    ConfigurationError,
    ErrorKind,
    ProviderError,
    RateLimited,
    StepTimeout,
)
from orchestration.llm import async_calls
from orchestration.llm.catalogue import ModelConfig
from orchestration.llm.json_answers import JSONAsk, asked
from orchestration.llm.providers.base import Completion, Messages, Provider, Usage
from orchestration.llm.providers.local import LocalProvider
from orchestration.llm.streaming import TextStream, stream_answer

if TYPE_CHECKING:
    from orchestration.llm.resilience import Resilience

T = TypeVar("T")
CALL_BACKOFF = Backoff(initial=0.2, maximum=5.0, multiplier=2.0, jitter=0.1)


class CallSite(Protocol):
    """What a model client needs from the step attempt it calls for (``StepContext``).

    Owned here so the client depends on nothing above it: the execute floor's
    ``StepContext`` satisfies it.
    """

    run_id: str
    step: str
    model: str | None
    deadline: float | None
    cost_usd: float
    max_cost: float | None
    spent_before: float
    run_budget: float | None
    on_error: ErrorPolicy | None  # the step's per-error policies (see define/on_error.py)

    def run_cost(self) -> float:
        """The run's recorded spend so far."""

    def remaining(self) -> float | None:
        """Seconds left before the attempt's timeout (None: no timeout)."""

    def record_call(self, call: CallRecord) -> None:
        """Record one model call and its cost on the step."""


class History(Protocol):
    """Earlier turns to send before a prompt (``ctx.memory.context()`` is one)."""

    def messages(self) -> Messages:
        """The turns as chat messages."""


def _messages(prompt: str | Messages, history: History | Messages | None = None) -> Messages:
    if history is None:
        return asked(prompt)
    return [*(history if isinstance(history, list) else history.messages()), *asked(prompt)]


def _utilisation(prompt_tokens: int, config: ModelConfig) -> float:
    """Prompt tokens over the model's context window (4 decimals)."""
    return round(prompt_tokens / config.context_window, 4)


class LLMClient:
    """Model calls bound to one step attempt (``acomplete``/``acomplete_json`` in an
    ``async def`` step: see llm/async_calls.py)."""

    _as_messages = staticmethod(_messages)  # for the awaited calls (async_calls.py)
    _utilisation = staticmethod(_utilisation)

    def __init__(self, ctx: CallSite, services: Resilience) -> None:
        self._ctx = ctx
        self._services = services
        self._lock = threading.Lock()  # complete_many records calls from several threads

    def _record(self, call: CallRecord) -> None:
        with self._lock:
            self._ctx.record_call(call)

    def complete(self, prompt: str | Messages, *, model: str | None = None,
                 history: History | Messages | None = None, **params: Any) -> Completion:
        """Ask a model (falling back along the catalogue's chain); returns its completion.

        ``history`` (e.g. ``ctx.memory.context()``) is sent before the prompt.
        """
        messages = _messages(prompt, history)
        chain = self._chain(model)
        for candidate, config, provider in chain:
            self._check_budget()
            try:
                return self._call(candidate, config, provider, messages, params)
            except (ProviderError, RateLimited) as exc:
                chain.failed(candidate, exc)
        return chain.end(messages, params)

    def _chain(self, model: str | None) -> _Chain:
        catalogue = self._services.catalogue
        name = model or self._ctx.model or catalogue.default_model
        if name is None:
            raise ConfigurationError(
                "no model named and the catalogue has no default_model")
        return _Chain(self, name)

    async def acomplete(self, prompt: str | Messages, *, model: str | None = None,
                        history: History | Messages | None = None,
                        **params: Any) -> Completion:
        """:meth:`complete`, awaited on the event loop (see llm/async_calls.py)."""
        return await async_calls.acomplete(self, prompt, model=model, history=history,
                                           **params)

    async def acomplete_json(self, prompt: str | Messages, *,
                             schema: type[BaseModel] | dict[str, Any], model: str | None = None,
                             attempts: int = 3, **params: Any) -> Any:
        """:meth:`complete_json`, awaited on the event loop."""
        return await async_calls.acomplete_json(self, prompt, schema=schema, model=model,
                                                attempts=attempts, **params)

    def stream(self, prompt: str | Messages, *, model: str | None = None,
               history: History | Messages | None = None,
               first_token_timeout: float | None = None, timeout: float | None = None,
               **params: Any) -> TextStream:
        """Ask a model and get its answer chunk by chunk (``for chunk in ctx.llm.stream(...)``).

        Breakers, rate limits, budgets, cost and fallback models as :meth:`complete`;
        retries and fallbacks only until the first chunk (see ``llm/streaming.py``).
        ``first_token_timeout`` (default: the model's timeout) bounds the wait for the
        first chunk and any stall after it; ``timeout`` the whole call (default: the
        step's time left). Each chunk reaches the run's stream (``token`` events) as it
        arrives; ``.completion`` (text, model, usage, cost) is set once it ended.
        """
        catalogue = self._services.catalogue
        name = model or self._ctx.model or catalogue.default_model
        if name is None:
            raise ConfigurationError("no model named and the catalogue has no default_model")
        return TextStream(stream_answer(self, _messages(prompt, history), name,
                                        first_token_timeout, timeout, params))

    def complete_many(self, prompts: Sequence[str | Messages], *, model: str | None = None,
                      concurrency: int = 8, **params: Any) -> list[Completion]:
        """Ask a model once per prompt, up to ``concurrency`` calls at once (a batch step).

        Each call is a :meth:`complete`: the same breakers, retries, fallback models,
        rate limits, budget checks and cost recording. The completions come back in the
        prompts' order; if any call fails, the first failure (in that order) is raised
        once every call has ended, so a batched step fails as a whole and is split.
        """
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"complete_many: concurrency must be a whole number "
                                     f">= 1, got {concurrency!r}")
        items = list(prompts)
        if not items:
            return []
        # Kept threads: each keeps its provider connection for the next batch.
        return run_bounded(lambda prompt: self.complete(prompt, model=model, **params),
                           items, min(concurrency, len(items)), pool="complete-many",
                           inherit=True)

    def complete_json(self, prompt: str | Messages, *, schema: type[BaseModel] | dict[str, Any],
                      model: str | None = None, attempts: int = 3, **params: Any) -> Any:
        """Ask for JSON; parse it (also inside markdown fences or prose) and validate it.

        ``schema`` is a pydantic model (an instance is returned) or a JSON schema (the
        parsed value is returned). An answer that fails is sent back to the model with the
        reason, up to ``attempts`` calls; each call's cost counts.
        """
        asking = JSONAsk(prompt, schema)
        for _ in range(max(1, attempts)):
            done, value = asking.check(self.complete(asking.messages, model=model, **params))
            if done:
                return value
        raise asking.failed(attempts)

    # -- one model ---------------------------------------------------------------------

    def _call(self, name: str, config: ModelConfig, provider: Provider, messages: Messages,
              params: dict[str, Any]) -> Completion:
        breaker = self._services.breakers.get(name)
        counter = self._services.tokens.get(name)
        estimated = counter.raw_messages(messages)

        def once() -> Completion:
            self._admit(name, config)
            timeout = self._call_timeout(name, config)
            started = time.perf_counter()
            try:
                text, usage = breaker.call(provider.complete, messages, model=name,
                                           timeout=timeout, **params)
            except ProviderError as exc:
                self._failed(name, config, exc, started, breaker.state_name,
                             counter.count_messages(messages))
                raise
            counter.observe(estimated, usage.prompt_tokens)
            prompt = usage.prompt_tokens or counter.count_messages(messages)
            return self._succeeded(name, config, provider, text, usage, started,
                                   breaker.state_name, _utilisation(prompt, config))

        return self._with_retries(config, once)

    def _with_retries(self, config: ModelConfig, once: Callable[[], T]) -> T:
        """``once`` retried on transient errors under the model's and the step's policies
        (tenacity's machinery is built only once a call failed: see first_then_retry)."""
        retryable = self._retryable()
        return first_then_retry(
            once, lambda: Retrying(**self._retry_options(config, retryable)), retryable)

    def _retryable(self) -> Callable[[BaseException], bool]:
        """Which failures of a call are retried, under the step's on_error if it has one."""
        policy = self._ctx.on_error
        if policy is None:  # the defaults, exactly
            return _transient

        def retryable(exc: BaseException) -> bool:
            action = policy.for_call(exc.kind) if isinstance(exc, ProviderError) else None
            return _transient(exc) and (action is None or action.action is Action.RETRY)

        return retryable

    def _retry_options(self, config: ModelConfig,
                       retryable: Callable[[BaseException], bool]) -> dict[str, Any]:
        """Tenacity's options for one model's calls."""
        policy = self._ctx.on_error
        stop: stop_base = stop_any(
            stop_after_attempt(config.retries + 1) if policy is None
            else _StopAfterRetries(config.retries, policy), _StopAtDeadline(self._ctx))
        return {"stop": stop, "wait": _provider_wait, "retry": retry_if_exception(retryable),
                "reraise": True}

    def _failed(self, name: str, config: ModelConfig, exc: ProviderError, started: float,
                breaker: str, prompt_tokens: int, *, completion_tokens: int = 0,
                cost_usd: float = 0.0) -> None:
        """Trace a failed call (the on_error policy that acts on it named on the error)."""
        action = self._action(exc.kind)
        if action is not None:
            exc.policy = describe_policy(exc.kind, action)
        self._record(CallRecord(
            model=name, ok=False, latency_ms=(time.perf_counter() - started) * 1000,
            error_kind=exc.kind, policy=exc.policy, breaker=breaker, error=str(exc),
            prompt_tokens=prompt_tokens if completion_tokens else 0,
            completion_tokens=completion_tokens, cost_usd=cost_usd,
            context_utilisation=_utilisation(prompt_tokens, config)))

    def _action(self, kind: ErrorKind) -> ErrorAction | None:
        """The step's on_error action for a failed call of ``kind`` (None: the defaults)."""
        policy = self._ctx.on_error
        return None if policy is None else policy.for_call(kind)

    def _reroutes(self, kind: ErrorKind) -> bool:
        action = self._action(kind)
        return action is not None and action.action is Action.ROUTE_TO_FALLBACK

    def _rerouted(self, name: str, exc: RateLimited) -> str:
        """Trace a model the limiter kept us from calling, as the policy routed past it."""
        policy = describe_policy(ErrorKind.RATE_LIMITED, ErrorAction(Action.ROUTE_TO_FALLBACK))
        self._record(CallRecord(model=name, ok=False, latency_ms=0.0, error=str(exc),
                                         error_kind=ErrorKind.RATE_LIMITED, policy=policy))
        return policy

    def _succeeded(self, name: str, config: ModelConfig, provider: Provider, text: str,
                   usage: Usage, started: float, breaker: str,
                   utilisation: float) -> Completion:
        latency = (time.perf_counter() - started) * 1000
        cost = config.cost(usage.prompt_tokens, usage.completion_tokens)
        self._record(CallRecord(
            model=name, ok=True, latency_ms=latency, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, cost_usd=cost, breaker=breaker,
            context_utilisation=utilisation))
        if self._shares_outcome(name, config):
            self._share_outcome(name, config, usage, latency)
        self._check_budget(after_call=True)
        return Completion(text=text, model=name, provider=provider.name, usage=usage,
                          cost_usd=cost, latency_ms=latency,
                          local_fallback=isinstance(provider, LocalProvider))

    def _shares_outcome(self, name: str, config: ModelConfig) -> bool:
        """True when a success is written to shared state (Redis, if configured): the
        latency for an adaptive timeout, tokens against rate limits."""
        return not isinstance(config.timeout_policy(), float | int) or \
            bool(self._limits(name, config))

    def _share_outcome(self, name: str, config: ModelConfig, usage: Usage,
                       latency: float) -> None:
        if not isinstance(config.timeout_policy(), float | int):
            # Only adaptive timeouts read latencies: skip the Redis write otherwise.
            self._services.latencies.observe(f"model:{name}", latency)
        for scope, limit in self._limits(name, config):
            self._services.limiter.record_tokens(
                scope, limit, usage.prompt_tokens + usage.completion_tokens)

    def _limits(self, name: str, config: ModelConfig) -> list[tuple[str, Any]]:
        limits = []
        provider_limit = self._services.catalogue.providers[config.provider].rate_limit
        if provider_limit is not None:
            limits.append((f"provider:{config.provider}", provider_limit.policy()))
        if config.rate_limit is not None:
            limits.append((f"model:{name}", config.rate_limit.policy()))
        return limits

    def _admit(self, name: str, config: ModelConfig) -> None:
        deadline = self._ctx.deadline
        action = self._action(ErrorKind.RATE_LIMITED)
        if action is not None and action.action is not Action.RETRY:
            deadline = time.monotonic()  # a full limit is acted on at once, not waited for
        for scope, limit in self._limits(name, config):
            self._services.limiter.acquire(scope, limit, deadline=deadline)

    def _call_timeout(self, name: str, config: ModelConfig) -> float:
        policy = config.timeout_policy()
        seconds = policy if isinstance(policy, float | int) else \
            self._services.latencies.timeout(f"model:{name}", policy)
        remaining = self._ctx.remaining()
        if remaining is not None:
            if remaining <= 0:
                raise StepTimeout(f"no time left for a call to {name}")
            seconds = min(seconds, remaining)
        return float(seconds)

    def _check_budget(self, *, after_call: bool = False) -> None:
        ctx = self._ctx
        spent = ctx.spent_before + ctx.cost_usd
        if ctx.max_cost is not None and (spent > ctx.max_cost or
                                         (not after_call and spent >= ctx.max_cost)):
            raise BudgetExceeded(f"step {ctx.step!r} spent ${spent:.6f} of its "
                                 f"max_cost ${ctx.max_cost:.6f}")
        if ctx.run_budget is not None and not after_call:
            run_spent = ctx.run_cost() + ctx.cost_usd
            if run_spent >= ctx.run_budget:
                raise BudgetExceeded(f"run {ctx.run_id} spent ${run_spent:.6f} of its "
                                     f"budget ${ctx.run_budget:.6f}; no new model calls")

    def _local_answer(self, name: str, messages: Messages, params: dict[str, Any]) -> Completion:
        text, usage = LocalProvider().complete(messages, model=name, timeout=None, **params)
        answered = f"local ({name} not configured)"
        self._record(CallRecord(
            model=answered, ok=True, latency_ms=0.0, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, context_utilisation=_utilisation(
                usage.prompt_tokens, self._services.catalogue.model(name))))
        return Completion(text=text, model=answered, provider="local", usage=usage,
                          local_fallback=True)


_STOP_HERE = frozenset({Action.SKIP, Action.FAIL, Action.ESCALATE})


class _Chain:
    """The configured models of one call's fallback chain, in order, and how each failed."""

    def __init__(self, client: LLMClient, name: str) -> None:
        self.client = client
        self.name = name
        self.failures: list[str] = []
        self.tried = False
        self.last: tuple[ErrorKind, str | None] | None = None  # last failure's kind, policy

    def __iter__(self) -> Iterator[tuple[str, ModelConfig, Provider]]:
        services = self.client._services
        for candidate in services.catalogue.fallback_chain(self.name):
            config = services.catalogue.model(candidate)
            provider = services.provider(config.provider)
            if provider is None:
                self.failures.append(f"{candidate}: provider {config.provider!r} not configured")
                continue
            self.tried = True
            yield candidate, config, provider

    def failed(self, candidate: str, exc: ProviderError | RateLimited) -> None:
        """Note how ``candidate`` failed; re-raises when no other model may be tried."""
        client = self.client
        if isinstance(exc, RateLimited):
            # The shared limiter admitted no call in time: another model only if asked.
            if not client._reroutes(ErrorKind.RATE_LIMITED):
                raise exc
            self.last = (ErrorKind.RATE_LIMITED, client._rerouted(candidate, exc))
            self.failures.append(f"{candidate}: {exc}")
            return
        self.failures.append(f"{candidate}: {exc}")
        self.last = (exc.kind, exc.policy)
        action = client._action(exc.kind)
        if action is not None and action.action in _STOP_HERE:
            raise exc  # skip, fail or escalate: no other model; the step acts on it

    def end(self, messages: Messages, params: dict[str, Any]) -> Completion:
        """After every model failed: the local answer if none was configured, else raise."""
        if not self.tried:
            return self.client._local_answer(self.name, messages, params)
        last = self.last
        error = ProviderError(f"no model answered ({'; '.join(self.failures)})",
                              retryable=True, kind=last[0] if last else None)
        error.policy = last[1] if last else None
        raise error



class _StopAfterRetries(stop_base):
    """Stop after the model's ``retries``, or ``n`` for a failure whose kind says retry(n)."""

    def __init__(self, retries: int, policy: ErrorPolicy) -> None:
        self._retries = retries
        self._policy = policy

    def __call__(self, retry_state: RetryCallState) -> bool:
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        action = self._policy.for_call(error.kind) if isinstance(error, ProviderError) else None
        retries = action.retries if action is not None and action.action is Action.RETRY \
            else self._retries
        return retry_state.attempt_number >= retries + 1


class _StopAtDeadline(stop_base):
    """Stop retrying when the next wait would run past the step attempt's deadline."""

    def __init__(self, ctx: CallSite) -> None:
        self._ctx = ctx

    def __call__(self, retry_state: RetryCallState) -> bool:
        remaining = self._ctx.remaining()
        return remaining is not None and remaining <= _provider_wait(retry_state)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.retryable and not isinstance(exc, BreakerOpen)


def _provider_wait(state: RetryCallState) -> float:
    wait = CALL_BACKOFF.delay(state.attempt_number)
    error = state.outcome.exception() if state.outcome is not None else None
    retry_after = getattr(error, "retry_after", None)
    return max(wait, float(retry_after)) if retry_after else wait
