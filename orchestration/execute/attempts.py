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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base

from orchestration.core.clock import utcnow
from orchestration.core.envelope import dumps
from orchestration.core.status import StepStatus
from orchestration.define.adaptive import AdaptiveTimeout
from orchestration.define.gates import PASSED
from orchestration.define.on_error import describe_policy
from orchestration.define.policies import first_then_retry
from orchestration.define.step import BoundStep
from orchestration.errors import (
    GateFailed,
    OutputNotSerializable,
    ProviderError,
    Reschedule,
    StepAborted,
    StepSignal,
    error_kind,
)
from orchestration.execute.context import StepContext
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
from orchestration.execute.live import Live
from orchestration.execute.memory import MemoryBinding
from orchestration.execute.routes import TIER_PARAM, Tiers
from orchestration.execute.timeouts import call_with_timeout
from orchestration.observe import tracing
from orchestration.store.repository import AttemptRecord, StepOutcome, Store

if TYPE_CHECKING:
    from orchestration.core.redaction import Redactor
    from orchestration.llm.resilience import Resilience
    from orchestration.store.run_stream import RunStream

__all__ = ["POLICY_ESCALATE", "POLICY_SKIP", "Delivery", "EscalateWithOutcome",
           "RescheduleWithOutcome", "ReturnedSignal", "StepCall", "as_failure", "describe",
           "fallback_value", "policy_action", "run_attempts"]

log = structlog.get_logger("orchestration.execute.attempts")


@dataclass(frozen=True)
class Delivery:
    """Where and how a step message arrived, and what the step may use."""

    worker: str | None
    task_id: str | None
    inline_limit: int
    inline_retry_limit: float
    services: Resilience | None = None
    max_crashes: int = 3
    redactor: Redactor | None = None
    holder: str | None = None  # the worker process instance (see store/workers.py)
    dead_after: float = 0.0  # a holder that beat within this many seconds is live (0: none)
    db_hold: float = 0.0  # seconds to keep retrying a record while the results DB is down
    stream: RunStream | None = None  # the run's live stream (None: ORCH_STREAM=off)


class ReturnedSignal(StepSignal):
    """A step function returned a control object (e.g. a child run) instead of a value.

    ``outcome`` (set by :func:`run_attempts`) holds the attempts made and what they
    cost, still ``running``: they are recorded before the step waits on the child.
    """

    def __init__(self, value: Any) -> None:
        super().__init__(value)
        self.value = value
        self.outcome: StepOutcome | None = None


class RescheduleWithOutcome(Reschedule):
    """Reschedule carrying the attempts made so far, so they are recorded first."""

    def __init__(self, delay: float, outcome: StepOutcome, params: dict[str, Any]) -> None:
        super().__init__(delay, params)
        self.outcome = outcome


@dataclass(frozen=True)
class StepCall:
    """One call of a step's function under its policies: what ``run_attempts`` needs.

    ``previous_attempts`` and ``spent_before`` carry over earlier deliveries; a returned
    value of one of ``signal_types`` is raised as :class:`ReturnedSignal`;
    ``initial_params`` are the first attempt's ``ctx.params`` (carried across broker
    retries); ``map_index`` is the element's index in a map step.
    """

    step: BoundStep
    kwargs: dict[str, Any]
    run_id: str
    store: Store
    delivery: Delivery
    previous_attempts: int = 0
    spent_before: float = 0.0
    map_index: int | None = None
    signal_types: tuple[type, ...] = ()
    initial_params: dict[str, Any] | None = None
    memory: MemoryBinding | None = None  # the conversation ``ctx.memory`` works on


class _Attempts:
    """The attempts of one step call so far: their records, contexts and ``ctx.params``."""

    def __init__(self, call: StepCall) -> None:
        self.call = call
        self.records: list[AttemptRecord] = []
        self.contexts: list[StepContext] = []
        self.number = call.previous_attempts
        self.params: dict[str, Any] = dict(call.initial_params or {})
        # A retry handed back to the broker goes on from the tier it reached.
        self.tiers = Tiers.of(call.step.spec.model, call.delivery.services,
                              self.params.pop(TIER_PARAM, 0))

    def routed(self) -> Any:
        """Attempts climbing the step's model route (see execute/routes.py); one without."""
        while True:
            try:
                return self.once()
            except Exception as exc:
                escalated = self.tiers.escalate(exc)
                if escalated is None:
                    raise
                self.records[-1].policy = escalated

    def once(self) -> Any:
        """One attempt: the step's function under its timeout, output checks and gate."""
        call, step, delivery = self.call, self.call.step, self.call.delivery
        spec = step.spec
        self.number += 1
        timeout = _timeout(step, delivery)
        ctx = StepContext(run_id=call.run_id, workflow=spec.workflow, step=spec.name,
                          attempt=self.number, model=self.tiers.model,
                          params=dict(self.params),
                          deadline=None if timeout is None else time.monotonic() + timeout,
                          max_cost=spec.max_cost, run_budget=step.run_budget,
                          spent_before=call.spent_before + sum(c.cost_usd
                                                               for c in self.contexts),
                          run_cost=lambda: call.store.run_cost(call.run_id),
                          services=delivery.services, map_index=call.map_index,
                          store=call.store, on_error=spec.on_error)
        ctx.memory_binding = call.memory
        ctx.span = tracing.start_attempt(ctx, queue=step.queue, redactor=delivery.redactor)
        ctx.live = _live(call, self.number)
        if ctx.live is not None and call.map_index is None:
            ctx.live.started(worker=delivery.worker, queue=step.queue,
                             model=self.tiers.model)
        self.contexts.append(ctx)
        call_kwargs = dict(call.kwargs, ctx=ctx) if spec.wants_ctx else call.kwargs
        started = utcnow()
        gate: str | None = None
        try:
            # bind + reset by token: bound_contextvars() also copies the whole context
            tokens = structlog.contextvars.bind_contextvars(attempt=self.number,
                                                            map_index=call.map_index)
            try:
                value = call_with_timeout(spec.fn, call_kwargs, timeout)
            finally:
                structlog.contextvars.reset_contextvars(**tokens)
            if call.signal_types and isinstance(value, call.signal_types):
                # The function ran and answered: an attempt, and what it spent, counts.
                self.records.append(_record(self.number, "succeeded", started, ctx, None,
                                            None, call.map_index))
                raise ReturnedSignal(value)
            _check_json(spec.where, value)
            if spec.gate is not None:
                reason = spec.gate.verdict(value)
                gate = PASSED if reason is None else f"failed: {reason}"
                if reason is not None:
                    raise GateFailed(reason)
            self.tiers.check_confidence(ctx, value)
        except StepSignal as signal:
            tracing.end_attempt(ctx.span, None, signal)
            raise
        except BaseException as exc:
            _ended(ctx, failed=True)
            self.records.append(_record(self.number, "failed", started, ctx, exc, gate,
                                        call.map_index))
            self.params = _on_retry(step, self.number, exc, self.params)
            if isinstance(exc, Exception):
                raise
            raise as_failure(exc) from exc
        _ended(ctx, failed=False)
        self.records.append(_record(self.number, "succeeded", started, ctx, None, gate,
                                    call.map_index))
        if isinstance(spec.timeout, AdaptiveTimeout) and delivery.services is not None:
            delivery.services.latencies.observe(spec.task_name, self.records[-1].latency_ms)
        return value


def run_attempts(call: StepCall) -> StepOutcome:
    """Run a step's function under its policies; the outcome to record."""
    spec, previous = call.step.spec, call.previous_attempts
    attempts = _Attempts(call)
    retryable: Callable[[BaseException], bool] = retryable_default
    stop: stop_base = stop_after_attempt(max(1, spec.retries + 1 - previous))
    if spec.on_error is not None:
        retryable, stop = partial(retryable_under, call.step), StopAfterRetries(call.step,
                                                                                 previous)
    retrying = partial(
        Retrying,
        stop=stop,
        wait=lambda state: spec.backoff.delay(previous + state.attempt_number),
        retry=retry_if_exception(retryable),
        # A map element never goes back to the broker: its chunk holds other elements.
        sleep=_sleeper(call.delivery.inline_retry_limit if call.map_index is None
                       else float("inf")),
        before_sleep=_log_retry(spec.task_name, call.run_id, previous),
        reraise=True,
    )
    records = attempts.records
    try:
        output = first_then_retry(attempts.routed, retrying, retryable)
    except ReturnedSignal as signal:
        cost, model = _spend(attempts.contexts)
        signal.outcome = StepOutcome(StepStatus.RUNNING, attempts=records, cost_usd=cost,
                                     model=model)
        raise
    except Reschedule as signal:
        cost, model = _spend(attempts.contexts)
        raise RescheduleWithOutcome(signal.delay, StepOutcome(
            StepStatus.RETRYING, error=records[-1].error if records else None,
            error_type=records[-1].error_type if records else None,
            attempts=records, cost_usd=cost, model=model),
            attempts.tiers.carried(attempts.params)) from None
    except Exception as exc:
        action = policy_action(call.step, exc)
        if action is not None and action.action in DECIDES:
            return policy_outcome(action, exc, records, *_spend(attempts.contexts))
        return _final_failure(call.step, call.kwargs, exc, records, *_spend(attempts.contexts))
    cost, model = _spend(attempts.contexts)
    # Only the attempt that succeeded appends to memory, with the step's outcome.
    return StepOutcome(StepStatus.SUCCEEDED, output=output, attempts=records,
                       cost_usd=cost, model=model, memory=attempts.contexts[-1].memory_write())


def as_failure(exc: BaseException) -> Exception:
    """An exception a step raised, as an ordinary failure (retries and fallback apply).

    An ``Exception`` is itself; a ``SystemExit``, ``KeyboardInterrupt`` or other
    ``BaseException`` becomes a :class:`StepAborted` (raise it ``from`` the original:
    ``describe`` reports the original), since Celery re-raises those out of the task and
    the message is never acknowledged.
    """
    if isinstance(exc, Exception):
        return exc
    return StepAborted(f"step raised {type(exc).__name__}: {exc}")


def _on_retry(step: BoundStep, attempt: int, exc: BaseException,
              params: dict[str, Any]) -> dict[str, Any]:
    """``ctx.params`` for the next attempt, from the step's ``on_retry`` hook (if any)."""
    if step.spec.on_retry is None:
        return params
    try:
        updated = step.spec.on_retry(attempt, exc, dict(params))
    except (StepSignal, Exception):
        raise  # an Exception from the hook fails the attempt in place of the step's own
    except BaseException as hook_exc:
        raise as_failure(hook_exc) from hook_exc
    return dict(updated) if updated is not None else params


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


def _timeout(step: BoundStep, delivery: Delivery) -> float | None:
    policy = step.spec.timeout
    if policy is None:
        return None
    if isinstance(policy, AdaptiveTimeout):
        if delivery.services is None:
            return policy.ceiling
        return delivery.services.latencies.timeout(step.spec.task_name, policy)
    return policy.seconds()


def _check_json(where: str, value: Any) -> None:
    try:
        dumps(value)
    except (TypeError, ValueError) as exc:
        raise OutputNotSerializable(
            f"{where} returned {type(value).__name__}, which is not JSON: {exc}"
        ) from None


def _spend(contexts: list[StepContext]) -> tuple[float, str | None]:
    """Total cost of a step's attempts, and the last model that answered."""
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


def _record(number: int, status: str, started: datetime, ctx: StepContext,
            exc: BaseException | None, gate: str | None,
            map_index: int | None) -> AttemptRecord:
    error, error_type = describe(exc) if exc is not None else (None, None)
    breakers = [f"{call.model}:{call.breaker}" for call in ctx.calls
                if call.breaker not in (None, "closed")]
    record = AttemptRecord(attempt=number, status=status, started_at=started,
                         finished_at=utcnow(), error=error, error_type=error_type,
                         model=ctx.models_used[-1] if ctx.models_used else ctx.model,
                         cost_usd=ctx.cost_usd, gate=gate,
                         tokens_in=sum(call.prompt_tokens for call in ctx.calls),
                         tokens_out=sum(call.completion_tokens for call in ctx.calls),
                         breaker=", ".join(breakers) or None, map_index=map_index,
                         calls=[{"model": c.model, "ok": c.ok, "latency_ms": round(c.latency_ms, 2),
                                 "breaker": c.breaker, "error": (c.error or "")[:200] or None,
                                 "context_utilisation": c.context_utilisation}
                                for c in ctx.calls] or None)
    _trace_policy(record, ctx, exc)
    tracing.end_attempt(ctx.span, record, exc)
    return record


def _trace_policy(record: AttemptRecord, ctx: StepContext, exc: BaseException | None) -> None:
    """The error kind of a failed attempt and call, and the on_error policy that acted."""
    for traced, call in zip(record.calls or [], ctx.calls, strict=False):
        if not call.ok:
            traced["error_kind"] = call.error_kind
            if call.policy:
                traced["policy"] = call.policy
    if exc is None:  # succeeded: perhaps after ctx.llm routed past a failing model
        acted = [call for call in ctx.calls if call.policy]
        if acted:
            record.error_kind, record.policy = acted[-1].error_kind, acted[-1].policy
        elif ctx.trace_note is not None:  # what the step decided (a router's route)
            record.policy = ctx.trace_note
        return
    record.error_kind = error_kind(exc)
    if isinstance(exc, ProviderError) and exc.policy:
        record.policy = exc.policy  # what ctx.llm did; the step carries it on
    elif ctx.on_error is not None:
        entry = ctx.on_error.entry(record.error_kind)
        record.policy = describe_policy(*entry) if entry is not None else None


def _sleeper(inline_limit: float) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        if seconds > inline_limit:
            raise Reschedule(seconds)
        time.sleep(seconds)
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


def _live(call: StepCall, attempt: int) -> Live | None:
    """The attempt's writer to its run's stream (None: streaming off)."""
    stream = call.delivery.stream
    if stream is None:
        return None
    return Live(stream, call.run_id, call.step.spec.name, attempt, call.delivery.redactor)


def _ended(ctx: StepContext, *, failed: bool) -> None:
    """Write the attempt's held tokens; a failed attempt's are superseded."""
    if ctx.live is not None:
        ctx.live.ended(failed)
