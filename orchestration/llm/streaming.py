"""``ctx.llm.stream``: a model's answer chunk by chunk, under ``complete``'s policies.

For the model asked for and then its fallbacks (as :meth:`LLMClient.complete`): an
unconfigured provider is skipped, budgets are checked, an open breaker skips the model,
rate limits admit the call. The call is *opened* (request sent, first text chunk
received) under the model's retries: a 5xx, 429, connection error or a first token
later than ``first_token_timeout`` is retried, then the next model is tried, exactly as
a whole answer would be. Opening counts on the breaker like a call.

Once the first chunk has been handed to the caller, nothing is retried and no other
model takes over (the caller already holds part of an answer): a failure after it (a
dropped connection, a stall longer than ``first_token_timeout`` between chunks, the
``timeout`` of the whole call passing) is recorded as a failed call with what it cost
(the chunks received, estimated), counts as a failure on the model's breaker, and is
raised as a retryable :class:`ProviderError`. The step's own ``retries=`` then run the
attempt again (the failed attempt's tokens are marked ``tokens_superseded`` on the run
stream), and a breaker opened meanwhile sends that attempt to the fallback model.

Every text chunk goes to the step's token sink (``ctx.on_token``: ``token`` events on
the run's stream) before the caller gets it. Cost comes from the usage the provider
reports in its last event, else from the model's token counter (an estimate).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from orchestration.core.results import CallRecord
from orchestration.errors import ErrorKind, ProviderError, RateLimited
from orchestration.llm.catalogue import ModelConfig
from orchestration.llm.providers.base import Completion, Messages, Provider, Usage
from orchestration.llm.providers.sse import Chunk

if TYPE_CHECKING:
    from orchestration.llm.breakers import ModelBreaker
    from orchestration.llm.tokens import TokenCounter

T = TypeVar("T")
DEFAULT_TOTAL_S = 600.0  # a streamed call's whole time, when neither it nor the step says


class StreamingClient(Protocol):
    """What streaming uses of :class:`~orchestration.llm.client.LLMClient` (its internals:
    one call's policies are the client's, whether the answer streams or not)."""

    @property
    def _services(self) -> Any: ...
    @property
    def _ctx(self) -> Any: ...
    def _chain(self, model: str | None) -> Any: ...
    def _admit(self, *args: Any, **kwargs: Any) -> Any: ...
    def _call_timeout(self, *args: Any, **kwargs: Any) -> float: ...
    def _check_budget(self, *args: Any, **kwargs: Any) -> Any: ...
    def _failed(self, *args: Any, **kwargs: Any) -> Any: ...
    def _local_answer(self, name: str, messages: Messages,
                      params: dict[str, Any]) -> Completion: ...
    def _record(self, *args: Any, **kwargs: Any) -> Any: ...
    def _succeeded(self, *args: Any, **kwargs: Any) -> Completion: ...
    def _with_retries(self, config: ModelConfig, once: Callable[[], T]) -> T: ...


class TextStream:
    """The chunks of a streamed answer; iterate it once. ``completion`` once it ended."""

    def __init__(self, chunks: Generator[str, None, Completion]) -> None:
        self._chunks = chunks
        self.completion: Completion | None = None
        self._parts: list[str] = []

    def __iter__(self) -> Iterator[str]:
        self.completion = yield from self._collect()

    def _collect(self) -> Generator[str, None, Completion]:
        completion = yield from _tee(self._chunks, self._parts)
        return completion

    @property
    def text(self) -> str:
        """The text received so far (all of it once iterated)."""
        return "".join(self._parts)


def _tee(chunks: Generator[str, None, Completion],
         parts: list[str]) -> Generator[str, None, Completion]:
    while True:
        try:
            chunk = next(chunks)
        except StopIteration as stop:
            completion: Completion = stop.value
            return completion
        parts.append(chunk)
        yield chunk


@dataclass
class _Opened:
    """A streamed call whose first text chunk arrived."""

    name: str
    config: ModelConfig
    provider: Provider
    chunks: Iterator[Chunk]
    head: list[Chunk]
    started: float
    breaker: ModelBreaker
    counter: TokenCounter
    prompt_estimate: int


def stream_answer(client: StreamingClient, messages: Messages, name: str,
                  first_token_timeout: float | None, timeout: float | None,
                  params: dict[str, Any]) -> Generator[str, None, Completion]:
    """The chunks of one streamed answer (see the module doc); returns its Completion."""
    ctx = client._ctx
    sink: Callable[[str], None] | None = getattr(ctx, "on_token", None)
    flush: Callable[[], None] | None = getattr(ctx, "flush_tokens", None)
    remaining = ctx.remaining()
    total = timeout if timeout is not None else (
        remaining if remaining is not None else DEFAULT_TOTAL_S)
    deadline = time.monotonic() + total
    chain = client._chain(name)
    for candidate, config, provider in chain:
        client._check_budget()
        try:
            opened = _open(client, candidate, config, provider, messages, params,
                           first_token_timeout, deadline)
        except (ProviderError, RateLimited) as exc:
            chain.failed(candidate, exc)  # re-raises when no other model may answer
            continue
        completion = yield from _drain(client, opened, sink, flush, deadline)
        return completion
    if chain.tried:
        chain.end(messages, params)  # raises: every configured model failed
    completion = client._local_answer(name, messages, params)
    if sink is not None:
        sink(completion.text)
    if flush is not None:
        flush()
    yield completion.text
    return completion


def _open(client: StreamingClient, name: str, config: ModelConfig, provider: Provider,
          messages: Messages, params: dict[str, Any], first_token_timeout: float | None,
          deadline: float) -> _Opened:
    """Send the request and wait for the first text chunk, under the model's retries."""
    services = client._services
    breaker = services.breakers.get(name)
    counter = services.tokens.get(name)
    prompt_estimate = counter.count_messages(messages)

    def once() -> _Opened:
        client._admit(name, config)
        first = min(client._call_timeout(name, config), max(0.001, deadline - time.monotonic()))
        if first_token_timeout is not None:
            first = min(first, first_token_timeout)
        started = time.perf_counter()

        def start() -> tuple[Iterator[Chunk], list[Chunk]]:
            chunks = provider.stream(messages, model=name, first_token_timeout=first, **params)
            head: list[Chunk] = []
            try:
                for chunk in chunks:
                    head.append(chunk)
                    if chunk.text:
                        break
            except BaseException:
                _close(chunks)
                raise
            return chunks, head

        try:
            chunks, head = breaker.call(start)
        except ProviderError as exc:
            client._failed(name, config, exc, started, breaker.state_name, prompt_estimate)
            raise
        return _Opened(name, config, provider, chunks, head, started, breaker, counter,
                       prompt_estimate)

    return client._with_retries(config, once)


def _drain(client: StreamingClient, opened: _Opened, sink: Callable[[str], None] | None,
           flush: Callable[[], None] | None,
           deadline: float) -> Generator[str, None, Completion]:
    """Hand the chunks on as they come; the call's Completion (or its failure raised)."""
    parts: list[str] = []
    reported: Chunk | None = None
    try:
        for chunk in itertools.chain(opened.head, opened.chunks):
            if chunk.text:
                parts.append(chunk.text)
                if sink is not None:
                    sink(chunk.text)
                yield chunk.text
            if chunk.completion_tokens is not None:
                reported = chunk
            if time.monotonic() > deadline:
                raise ProviderError(f"{opened.provider.name}: stream from {opened.name} ran "
                                    "past its timeout", kind=ErrorKind.TIMEOUT)
    except ProviderError as exc:
        completion_tokens = opened.counter.count("".join(parts))
        client._failed(opened.name, opened.config, exc, opened.started,
                       opened.breaker.state_name, opened.prompt_estimate,
                       completion_tokens=completion_tokens,
                       cost_usd=opened.config.cost(opened.prompt_estimate, completion_tokens))
        _count_failure(opened.breaker, exc)
        raise
    except GeneratorExit:  # the caller stopped reading: what was generated is paid for
        _record_partial(client, opened, "".join(parts))
        raise
    finally:
        _close(opened.chunks)
        if flush is not None:
            flush()
    text = "".join(parts)
    usage = _usage(opened, reported, text)
    return client._succeeded(opened.name, opened.config, opened.provider, text, usage,
                             opened.started, opened.breaker.state_name,
                             round(usage.prompt_tokens / opened.config.context_window, 4))


def _usage(opened: _Opened, reported: Chunk | None, text: str) -> Usage:
    """The provider's usage if its last event said it, else the token counter's estimate."""
    if reported is not None and reported.completion_tokens is not None:
        prompt = reported.prompt_tokens or opened.prompt_estimate
        return Usage(prompt, reported.completion_tokens)
    return Usage(opened.prompt_estimate, opened.counter.count(text))


def _record_partial(client: StreamingClient, opened: _Opened, text: str) -> None:
    completion = opened.counter.count(text)
    client._record(CallRecord(
        model=opened.name, ok=True, latency_ms=(time.perf_counter() - opened.started) * 1000,
        prompt_tokens=opened.prompt_estimate, completion_tokens=completion,
        cost_usd=opened.config.cost(opened.prompt_estimate, completion),
        breaker=opened.breaker.state_name))


def _count_failure(breaker: ModelBreaker, exc: ProviderError) -> None:
    """Count a failure after the first chunk on the model's breaker (as a failed call)."""
    def fail() -> None:
        raise exc
    with contextlib.suppress(ProviderError):
        breaker.call(fail)


def _close(chunks: Iterator[Chunk]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()
