"""One attempt of a step (or map element): begun, called, then finished the same way
whether the function is a plain ``def`` (called under the thread timeout of
:mod:`orchestration.execute.timeouts`) or an ``async def`` (awaited on the worker's event
loop under an asyncio timeout that cancels the coroutine).

:class:`Attempts` keeps a step call's attempts so far: their records, contexts and
``ctx.params``. ``begin`` builds the attempt's ``ctx`` and trace span, ``finish`` checks
the value (JSON, gate, confidence) and records the attempt, ``fail`` records a failed
one; the retry loops around them are in :mod:`orchestration.execute.attempts`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import structlog

from orchestration.core.clock import utcnow
from orchestration.core.envelope import dumps
from orchestration.define.adaptive import AdaptiveTimeout
from orchestration.define.gates import PASSED
from orchestration.define.on_error import describe_policy
from orchestration.define.step import BoundStep
from orchestration.errors import (
    GateFailed,
    OutputNotSerializable,
    ProviderError,
    StepAborted,
    StepSignal,
    StepTimeout,
    error_kind,
)
from orchestration.execute.context import StepContext
from orchestration.execute.failures import describe
from orchestration.execute.live import Live
from orchestration.execute.routes import TIER_PARAM, Tiers
from orchestration.execute.timeouts import call_with_timeout
from orchestration.observe import tracing
from orchestration.store.repository import AttemptRecord

if TYPE_CHECKING:
    from orchestration.core.redaction import Redactor
    from orchestration.execute.memory import MemoryBinding
    from orchestration.llm.resilience import Resilience
    from orchestration.store.repository import Store
    from orchestration.store.run_stream import RunStream

_PLAIN = frozenset({bool, int})  # (a str may hold NUL; a float may be NaN)
CANCELLED_ATTEMPT = "cancelled"  # an attempt's status when its run was cancelled under it


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
    # Every step of the run runs in this process (the embedded default): its stream
    # writer's queue keeps their events in order, so no step waits for its write.
    stream_in_process: bool = False
    async_threads: int = 64  # the event loop's executor (ORCH_ASYNC_THREADS)
    event_loop: str = "uvloop"  # which loop async steps run on (ORCH_EVENT_LOOP)


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


class ReturnedSignal(StepSignal):
    """A step function returned a control object (e.g. a child run) instead of a value.

    ``outcome`` (set by ``run_attempts``) holds the attempts made and what they cost,
    still ``running``: they are recorded before the step waits on the child.
    """

    def __init__(self, value: Any) -> None:
        super().__init__(value)
        self.value = value
        self.outcome: Any = None  # a StepOutcome


@dataclass
class Begun:
    """An attempt under way: its context, arguments, start and timeout."""

    ctx: StepContext
    kwargs: dict[str, Any]
    started: datetime
    timeout: float | None
    gate: str | None = None


class Attempts:
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
                self._escalate(exc)

    async def routed_async(self) -> Any:
        """:meth:`routed` for an ``async def`` step, on the worker's event loop."""
        while True:
            try:
                return await self.once_async()
            except Exception as exc:
                self._escalate(exc)

    def _escalate(self, exc: Exception) -> None:
        escalated = self.tiers.escalate(exc)
        if escalated is None:
            raise exc
        self.records[-1].policy = escalated

    def once(self) -> Any:
        """One attempt: the step's function under its timeout, output checks and gate."""
        begun = self.begin()
        try:
            tokens = structlog.contextvars.bind_contextvars(attempt=self.number,
                                                            map_index=self.call.map_index)
            try:
                value = call_with_timeout(self.call.step.spec.fn, begun.kwargs, begun.timeout)
            finally:
                structlog.contextvars.reset_contextvars(**tokens)
        except BaseException as exc:
            self.fail(begun, exc)
        return self.finish(begun, value)

    async def once_async(self) -> Any:
        """One attempt of an ``async def`` step: awaited, its timeout cancelling it.

        A timeout cancels the coroutine (it sees ``CancelledError``) and fails the attempt
        with :class:`StepTimeout`; a cancellation from outside (its run was cancelled) is
        recorded as a cancelled attempt and propagates.
        """
        begun = self.begin()
        fn, timeout = self.call.step.spec.fn, begun.timeout
        try:
            tokens = structlog.contextvars.bind_contextvars(attempt=self.number,
                                                            map_index=self.call.map_index)
            try:
                if timeout is None:
                    value = await fn(**begun.kwargs)
                else:
                    window = asyncio.timeout(timeout)
                    try:
                        async with window:
                            value = await fn(**begun.kwargs)
                    except TimeoutError:
                        if not window.expired():
                            raise  # the step's own TimeoutError
                        raise StepTimeout(f"attempt exceeded its timeout of {timeout:g} s"
                                          ) from None
            finally:
                structlog.contextvars.reset_contextvars(**tokens)
        except asyncio.CancelledError as exc:
            _ended(begun.ctx, failed=True)
            self.records.append(_record(self.number, CANCELLED_ATTEMPT, begun, exc,
                                        self.call.map_index))
            raise
        except BaseException as exc:
            self.fail(begun, exc)
        return self.finish(begun, value)

    def begin(self) -> Begun:
        """Start an attempt: its number, ``ctx``, trace span and live stream."""
        call, step, delivery = self.call, self.call.step, self.call.delivery
        spec = step.spec
        self.number += 1
        timeout = _timeout(step, delivery)
        ctx = StepContext(run_id=call.run_id, workflow=spec.workflow, step=spec.name,
                          attempt=self.number, model=self.tiers.model,
                          params=dict(self.params),
                          deadline=None if timeout is None else time.monotonic() + timeout,
                          max_cost=spec.max_cost, run_budget=step.run_budget,
                          spent_before=call.spent_before + (sum(
                              c.cost_usd for c in self.contexts) if self.contexts else 0.0),
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
        kwargs = dict(call.kwargs, ctx=ctx) if spec.wants_ctx else call.kwargs
        return Begun(ctx, kwargs, utcnow(), timeout)

    def finish(self, begun: Begun, value: Any) -> Any:
        """Check what the function returned (JSON, gate, confidence); record the attempt."""
        call, spec = self.call, self.call.step.spec
        try:
            if call.signal_types and isinstance(value, call.signal_types):
                # The function ran and answered: an attempt, and what it spent, counts.
                self.records.append(_record(self.number, "succeeded", begun, None,
                                            call.map_index))
                raise ReturnedSignal(value)
            _check_json(spec.where, value)
            if spec.gate is not None:
                reason = spec.gate.verdict(value)
                begun.gate = PASSED if reason is None else f"failed: {reason}"
                if reason is not None:
                    raise GateFailed(reason)
            self.tiers.check_confidence(begun.ctx, value)
        except BaseException as exc:
            self.fail(begun, exc)
        _ended(begun.ctx, failed=False)
        self.records.append(_record(self.number, "succeeded", begun, None, call.map_index))
        services = call.delivery.services
        if isinstance(spec.timeout, AdaptiveTimeout) and services is not None:
            services.latencies.observe(spec.task_name, self.records[-1].latency_ms)
        return value

    def fail(self, begun: Begun, exc: BaseException) -> NoReturn:
        """End a failed attempt: record it, ask ``on_retry`` for the next ``ctx.params``.

        A control-flow signal passes through; a ``BaseException`` that is not an
        ``Exception`` fails as :class:`StepAborted`.
        """
        if isinstance(exc, StepSignal):
            tracing.end_attempt(begun.ctx.span, None, exc)
            raise exc
        _ended(begun.ctx, failed=True)
        self.records.append(_record(self.number, "failed", begun, exc, self.call.map_index))
        self.params = _on_retry(self.call.step, self.number, exc, self.params)
        if isinstance(exc, Exception):
            raise exc
        raise as_failure(exc) from exc


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
    if value is None or type(value) in _PLAIN:  # JSON as they are: nothing to encode
        return
    try:
        dumps(value)
    except (TypeError, ValueError) as exc:
        raise OutputNotSerializable(
            f"{where} returned {type(value).__name__}, which is not JSON: {exc}"
        ) from None


def _record(number: int, status: str, begun: Begun, exc: BaseException | None,
            map_index: int | None) -> AttemptRecord:
    ctx = begun.ctx
    error: str | None
    error_type: str | None
    if status == CANCELLED_ATTEMPT:
        error, error_type = "cancelled: its run was cancelled while it ran", "CancelledError"
    else:
        error, error_type = describe(exc) if exc is not None else (None, None)
    calls = ctx.calls
    record = AttemptRecord(attempt=number, status=status, started_at=begun.started,
                           finished_at=utcnow(), error=error, error_type=error_type,
                           model=ctx.models_used[-1] if ctx.models_used else ctx.model,
                           cost_usd=ctx.cost_usd, gate=begun.gate, map_index=map_index)
    if calls:  # most attempts of a map element make no model call: nothing to sum
        breakers = [f"{call.model}:{call.breaker}" for call in calls
                    if call.breaker not in (None, "closed")]
        record.tokens_in = sum(call.prompt_tokens for call in calls)
        record.tokens_out = sum(call.completion_tokens for call in calls)
        record.breaker = ", ".join(breakers) or None
        record.calls = [{"model": c.model, "ok": c.ok, "latency_ms": round(c.latency_ms, 2),
                         "breaker": c.breaker, "error": (c.error or "")[:200] or None,
                         "context_utilisation": c.context_utilisation} for c in calls]
    if status != CANCELLED_ATTEMPT:
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
