"""The attempts of one step (or one map element) under the step's policies.

Per-attempt timeout, retries with exponential backoff and jitter (tenacity; in-process
while the wait is short, otherwise the message goes back to the broker so the slot is
freed), the quality gate and ``on_retry``, then the fallback. Control-flow signals
(:class:`~orchestration.errors.StepSignal`) pass straight through; anything else a step
raises, even a ``SystemExit``, ``KeyboardInterrupt`` or bare ``BaseException``, is a failed
attempt: it must never escape to the worker, where it would hold the pool slot (threads)
or leave the step ``running`` for the reconciler to re-run forever (prefork).

A step's ``on_error`` entries (see :mod:`orchestration.define.on_error`) make retries
kind-aware: ``retry(n)`` retries that kind n times instead of ``retries=``; any other
action stops retrying at once and decides the outcome (``route_to_fallback``: the
fallback or a failure; ``fail``; ``skip``; ``escalate``: a human wait). Every failed
attempt records its error kind, and the policy that acted on it.

An ``async def`` step goes through the same policies with tenacity's ``AsyncRetrying``:
its call is awaited on the worker's event loop (execute/event_loop.py) while the pool
thread waits; a timeout cancels the coroutine, and a cancellation of its run (see
execute/cancel_watch.py) ends the step ``cancelled``. One attempt's making, checking and
recording is shared by both (execute/single_attempt.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import structlog
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base

from orchestration.core.envelope import dumps
from orchestration.core.status import StepStatus
from orchestration.define.policies import first_then_retry, first_then_retry_async
from orchestration.define.step import BoundStep
from orchestration.errors import Reschedule, StepAborted, StepSignal
from orchestration.execute.context import StepContext
from orchestration.execute.event_loop import run_on_loop, worker_loop
from orchestration.execute.failures import (
    DECIDES,
    POLICY_ESCALATE,
    POLICY_SKIP,
    EscalateWithOutcome,
    StopAfterRetries,
    describe,
    policy_action,
    policy_outcome,
    retryable_default,
    retryable_under,
)
from orchestration.execute.single_attempt import (
    Attempts,
    Delivery,
    ReturnedSignal,
    StepCall,
    as_failure,
)
from orchestration.store.repository import AttemptRecord, StepOutcome

__all__ = ["POLICY_ESCALATE", "POLICY_SKIP", "Delivery", "EscalateWithOutcome",
           "RescheduleWithOutcome", "ReturnedSignal", "StepCall", "as_failure", "describe",
           "fallback_value", "policy_action", "run_attempts", "run_attempts_async"]

log = structlog.get_logger("orchestration.execute.attempts")
T = TypeVar("T")
RUN_CANCELLED = "cancelled: its run was cancelled while the step ran"


class RescheduleWithOutcome(Reschedule):
    """Reschedule carrying the attempts made so far, so they are recorded first."""

    def __init__(self, delay: float, outcome: StepOutcome, params: dict[str, Any]) -> None:
        super().__init__(delay, params)
        self.outcome = outcome


def run_attempts(call: StepCall) -> StepOutcome:
    """Run a step's function under its policies; the outcome to record.

    An ``async def`` step runs on the worker's event loop; this thread waits for it.
    """
    if call.step.spec.is_async:
        return run_on_loop(partial(run_attempts_async, call), call.delivery.async_threads,
                           call.delivery.event_loop)
    attempts = Attempts(call)
    try:
        output = first_then_retry(
            attempts.routed, lambda: Retrying(sleep=_sleeper(call), **_retry_options(call)),
            _retryable(call))
    except (ReturnedSignal, Reschedule, Exception) as exc:
        return _failed(attempts, exc)
    return _succeeded(attempts, output)


async def run_attempts_async(call: StepCall) -> StepOutcome:
    """:func:`run_attempts` of an ``async def`` step, on the worker's event loop.

    While it runs, the loop's cancel watcher may cancel it (its run was cancelled): the
    outcome is then ``cancelled``, with the attempts made.
    """
    attempts = Attempts(call)
    task: asyncio.Task[Any] | None = asyncio.current_task()
    watcher = worker_loop(call.delivery.async_threads).watcher
    if task is not None:
        watcher.track(call.store, call.run_id, task)
    try:
        output = await first_then_retry_async(
            attempts.routed_async,
            lambda: AsyncRetrying(sleep=_async_sleeper(call), **_retry_options(call)),
            _retryable(call))
    except asyncio.CancelledError:
        cost, model = _spend(attempts.contexts)
        return StepOutcome(StepStatus.CANCELLED, error=RUN_CANCELLED, error_type="CancelledError",
                           attempts=attempts.records, cost_usd=cost, model=model)
    except (ReturnedSignal, Reschedule, Exception) as exc:
        return _failed(attempts, exc)
    finally:
        if task is not None:
            watcher.untrack(call.store, call.run_id, task)
    return _succeeded(attempts, output)


def _retryable(call: StepCall) -> Callable[[BaseException], bool]:
    """Which failures of a step call are retried."""
    if call.step.spec.on_error is not None:
        return partial(retryable_under, call.step)
    return retryable_default


def _retry_options(call: StepCall) -> dict[str, Any]:
    """Tenacity's options (but ``sleep``) for a step call; built only once an attempt
    failed in a way worth retrying (most calls succeed first: see first_then_retry)."""
    spec, previous = call.step.spec, call.previous_attempts
    stop: stop_base = stop_after_attempt(max(1, spec.retries + 1 - previous))
    if spec.on_error is not None:
        stop = StopAfterRetries(call.step, previous)
    return {
        "stop": stop,
        "wait": lambda state: spec.backoff.delay(previous + state.attempt_number),
        "retry": retry_if_exception(_retryable(call)),
        "before_sleep": _log_retry(spec.task_name, call.run_id, previous),
        "reraise": True,
    }


def _failed(attempts: Attempts, exc: ReturnedSignal | Reschedule | Exception) -> StepOutcome:
    """The outcome after the last failed attempt (or the signal it raises)."""
    call, records = attempts.call, attempts.records
    cost, model = _spend(attempts.contexts)
    if isinstance(exc, ReturnedSignal):
        exc.outcome = StepOutcome(StepStatus.RUNNING, attempts=records, cost_usd=cost,
                                  model=model)
        raise exc
    if isinstance(exc, Reschedule):
        raise RescheduleWithOutcome(exc.delay, StepOutcome(
            StepStatus.RETRYING, error=records[-1].error if records else None,
            error_type=records[-1].error_type if records else None,
            attempts=records, cost_usd=cost, model=model),
            attempts.tiers.carried(attempts.params)) from None
    action = policy_action(call.step, exc)
    if action is not None and action.action in DECIDES:
        return policy_outcome(action, exc, records, cost, model)
    return _final_failure(call.step, call.kwargs, exc, records, cost, model)


def _succeeded(attempts: Attempts, output: Any) -> StepOutcome:
    cost, model = _spend(attempts.contexts)
    # Only the attempt that succeeded appends to memory, with the step's outcome.
    return StepOutcome(StepStatus.SUCCEEDED, output=output, attempts=attempts.records,
                       cost_usd=cost, model=model,
                       memory=attempts.contexts[-1].memory_write())


def fallback_value(step: BoundStep, kwargs: dict[str, Any]) -> tuple[Any, str | None]:
    """(the step's fallback value, None), or (None, why the fallback failed)."""
    assert step.spec.fallback is not None
    try:
        value = step.spec.fallback.resolve(kwargs)
        dumps(value)
    except StepSignal:
        raise
    except BaseException as exc:  # a fallback's SystemExit fails the step, not the worker
        return None, describe(exc)[0]
    return value, None






def _spend(contexts: list[StepContext]) -> tuple[float, str | None]:
    """Total cost of a step's attempts, and the last model that answered."""
    if len(contexts) == 1:  # most steps: one attempt
        only = contexts[0]
        return only.cost_usd, only.models_used[-1] if only.models_used else None
    cost = sum(ctx.cost_usd for ctx in contexts)
    model = next((m for ctx in reversed(contexts) for m in reversed(ctx.models_used)), None)
    return cost, model


def _final_failure(step: BoundStep, kwargs: dict[str, Any], exc: BaseException,
                   records: list[AttemptRecord], cost: float, model: str | None) -> StepOutcome:
    error, error_type = describe(exc)
    if step.spec.fallback is not None:
        value, error2 = fallback_value(step, kwargs)
        if error2 is not None:
            return StepOutcome(StepStatus.FAILED, error=f"{error}\nfallback failed: {error2}",
                               error_type=error_type, attempts=records, cost_usd=cost,
                               model=model)
        return StepOutcome(StepStatus.FALLBACK, output=value, error=error, error_type=error_type,
                           attempts=records, cost_usd=cost, model=model)
    return StepOutcome(StepStatus.FAILED, error=error, error_type=error_type, attempts=records,
                       cost_usd=cost, model=model)






def _inline_limit(call: StepCall) -> float:
    # A map element never goes back to the broker: its chunk holds other elements.
    return call.delivery.inline_retry_limit if call.map_index is None else float("inf")


def _sleeper(call: StepCall) -> Callable[[float], None]:
    inline_limit = _inline_limit(call)

    def sleep(seconds: float) -> None:
        if seconds > inline_limit:
            raise Reschedule(seconds)
        time.sleep(seconds)
    return sleep


def _async_sleeper(call: StepCall) -> Callable[[float], Awaitable[None]]:
    inline_limit = _inline_limit(call)

    async def sleep(seconds: float) -> None:
        if seconds > inline_limit:
            raise Reschedule(seconds)
        await asyncio.sleep(seconds)
    return sleep


def _log_retry(task_name: str, run_id: str,
               previous_attempts: int) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, StepAborted) and error.__cause__ is not None:
            error = error.__cause__
        log.warning("step attempt failed; retrying", run_id=run_id, step=task_name,
                    attempt=previous_attempts + state.attempt_number, error=repr(error),
                    wait_s=round(state.upcoming_sleep, 3))
    return before_sleep



