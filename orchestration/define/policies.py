"""Step policies as small objects: backoff between attempts, per-attempt timeout, fallback.

Retries themselves are driven by tenacity in the runtime; these objects only answer
"how long to wait", "how long may this attempt take" and "what answers instead".
"""

from __future__ import annotations

import inspect
import math
import random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from tenacity import AsyncRetrying, RetryCallState, Retrying

from orchestration.define.adaptive import AdaptiveTimeout
from orchestration.errors import WorkflowDefinitionError

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter.

    Retry ``n`` waits ``min(maximum, initial * multiplier**(n-1)) + uniform(0, jitter)``.

    ``n`` counts retries from 1. Pass a number to ``task(backoff=...)`` for ``Backoff(initial=n)``.
    """

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        values = {"initial": self.initial, "maximum": self.maximum,
                  "multiplier": self.multiplier, "jitter": self.jitter}
        for key, value in values.items():
            # NaN compares false with everything, and inf waits forever: both would leave
            # a retrying step 'running' for good.
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value):
                raise WorkflowDefinitionError(
                    f"invalid backoff {self!r}: {key} must be a finite number, got {value!r}")
        if self.initial < 0 or self.maximum < 0 or self.multiplier < 1 or self.jitter < 0:
            raise WorkflowDefinitionError(f"invalid backoff {self!r}: values must be >= 0, "
                                          "multiplier >= 1")

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry)."""
        exponent = max(0, retry_number - 1)
        # Cap the exponent first: multiplier**exponent overflows long before it matters.
        base = self.maximum if exponent > 64 else min(
            self.maximum, self.initial * self.multiplier ** exponent)
        jitter = (rng or random).uniform(0, self.jitter) if self.jitter else 0.0
        return base + jitter

    def __call__(self, retry_state: RetryCallState) -> float:
        """Use as a tenacity ``wait=``: the delay before the next attempt."""
        return self.delay(retry_state.attempt_number)


@runtime_checkable
class TimeoutPolicy(Protocol):
    """Anything that decides a step attempt's timeout in seconds (None: no limit)."""

    def seconds(self) -> float | None:
        """The timeout for the attempt about to start."""


@dataclass(frozen=True)
class FixedTimeout:
    """The same timeout for every attempt."""

    value: float

    def seconds(self) -> float | None:
        """The fixed timeout."""
        return self.value


@dataclass(frozen=True)
class CallableTimeout:
    """A timeout computed before each attempt by a no-argument callable."""

    compute: Callable[[], float | None]

    def seconds(self) -> float | None:
        """Ask the callable; a non-positive, infinite or NaN answer means no limit."""
        value = self.compute()
        if value is None or not 0 < value <= threading.TIMEOUT_MAX:
            return None
        return float(value)


def is_async(fn: Callable[..., Any]) -> bool:
    """True when calling ``fn`` returns a coroutine (``async def``, also a partial of one,
    or an object whose ``__call__`` is ``async def``)."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = None if inspect.isroutine(fn) or inspect.isclass(fn) else type(fn).__call__
    return call is not None and inspect.iscoroutinefunction(call)


def check_plain_function(fn: Callable[..., Any], what: str, where: str, *,
                         allow_async: bool = False) -> None:
    """Refuse generator and async generator functions (calling one returns no value to
    store), and ``async def`` unless ``allow_async`` (only a step's own function may be
    async: hooks such as a fallback or a gate are called synchronously)."""
    # A callable object is checked by its __call__ too (an async __call__ is async).
    call = None if inspect.isroutine(fn) or inspect.isclass(fn) else type(fn).__call__
    for candidate in (fn, call):
        if candidate is None:
            continue
        if inspect.isasyncgenfunction(candidate):
            raise WorkflowDefinitionError(
                f"{where}: {what} {_name(fn)} is an async generator (it yields); a step "
                "returns one JSON value: return a list instead")
        if inspect.iscoroutinefunction(candidate) and not allow_async:
            raise WorkflowDefinitionError(
                f"{where}: {what} {_name(fn)} is async; only the step function itself may "
                f"be async def ({what} is called synchronously, and calling it returns a "
                "coroutine, not a value): use a plain def")
        if inspect.isgeneratorfunction(candidate):
            raise WorkflowDefinitionError(
                f"{where}: {what} {_name(fn)} is a generator (it yields); a step returns one "
                "JSON value: return a list instead")


def _name(fn: object) -> str:
    return repr(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or fn)


def as_backoff(value: object, where: str) -> Backoff:
    """Normalise ``task(backoff=...)``: a Backoff, or a number of initial seconds."""
    if value is None:
        return Backoff()
    if isinstance(value, Backoff):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
            # Jitter in proportion: backoff=0.05 should not wait half a second.
            return Backoff(initial=seconds, maximum=max(30.0, seconds), jitter=seconds / 2)
        except WorkflowDefinitionError as exc:
            raise WorkflowDefinitionError(f"{where}: {exc}") from None
    raise WorkflowDefinitionError(f"{where}: backoff must be a number or Backoff, got {value!r}")


def as_timeout(value: object, where: str) -> TimeoutPolicy | AdaptiveTimeout | None:
    """Normalise ``task(timeout=...)``: seconds, a callable, or a TimeoutPolicy."""
    if value is None:
        return None
    if isinstance(value, TimeoutPolicy | AdaptiveTimeout):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        # NaN passes a 'value <= 0' test and waits forever; inf overflows the wait.
        if not 0 < value <= threading.TIMEOUT_MAX:
            raise WorkflowDefinitionError(f"{where}: timeout must be > 0 seconds, got "
                                          f"{value!r} (a finite number; None: no limit)")
        return FixedTimeout(float(value))
    if callable(value):
        check_plain_function(value, "its timeout callable", where)
        try:
            inspect.signature(value).bind()
        except TypeError as exc:
            raise WorkflowDefinitionError(f"{where}: a timeout callable is called with no "
                                          f"arguments: {exc}") from None
        except ValueError:
            pass  # a builtin without a signature: nothing to check
        return CallableTimeout(value)
    raise WorkflowDefinitionError(
        f"{where}: timeout must be seconds, a callable or a TimeoutPolicy, got {value!r}"
    )


class Fallback:
    """What a step answers when every attempt failed: a fixed value or a callable.

    A callable receives the same arguments as the step.
    """

    __slots__ = ("_target",)

    def __init__(self, target: Any) -> None:
        self._target = target

    @property
    def is_callable(self) -> bool:
        """True when the fallback is computed rather than fixed."""
        return callable(self._target)

    def resolve(self, kwargs: dict[str, Any]) -> Any:
        """The fallback output for a step called with ``kwargs``."""
        if callable(self._target):
            return self._target(**kwargs)
        return self._target

    def __repr__(self) -> str:
        return f"Fallback({self._target!r})"


def first_then_retry(fn: Callable[[], T], retrying: Callable[[], Retrying],
                     retryable: Callable[[BaseException], bool]) -> T:
    """``retrying()(fn)``, without building tenacity's machinery when the first call
    succeeds, as most do (measured: two tenacity loops per map element were ~5% of a
    model call's CPU). The first call is made here; if it fails in a way worth retrying,
    tenacity takes over from that failure (replayed as its attempt 1), so waits, stops,
    hooks and attempt numbers are exactly those of ``retrying()(fn)``.
    """
    try:
        return fn()
    except Exception as exc:
        if not retryable(exc):
            raise
        first = exc
    replayed = False

    def again() -> T:
        nonlocal replayed
        if not replayed:
            replayed = True
            raise first
        return fn()

    return retrying()(again)


async def first_then_retry_async(fn: Callable[[], Awaitable[T]],
                                 retrying: Callable[[], AsyncRetrying],
                                 retryable: Callable[[BaseException], bool]) -> T:
    """:func:`first_then_retry` for a coroutine: no tenacity machinery
    unless the first call fails in a way worth retrying."""
    try:
        return await fn()
    except Exception as exc:
        if not retryable(exc):
            raise
        first = exc
    replayed = False

    async def again() -> T:
        nonlocal replayed
        if not replayed:
            replayed = True
            raise first
        return await fn()

    result: T = await retrying()(again)
    return result
