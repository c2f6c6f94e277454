"""The step runtime: what a worker does with one delivery of one step.

1. Merge the incoming envelope(s); skip the step if something it needs was lost to a
   critical failure.
2. Claim the step in the results DB (a step already terminal is not run again: its
   recorded outcome is passed on, which is how duplicate deliveries and resumes work).
3. Run attempts under the step's policies: per-attempt timeout, retries with
   exponential backoff and jitter (tenacity, in-process while the wait is short; longer
   waits hand the message back to the broker so the slot is freed), then the fallback.
4. Record the outcome and attempts in one transaction; pass the envelope on; the last
   step of a run finalises the run row.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from orchestration.adaptive import AdaptiveTimeout
from orchestration.context import StepContext
from orchestration.envelope import INPUT_SOURCE, Envelope, dumps
from orchestration.errors import (
    NonRetryableError,
    OutputNotSerializable,
    Reschedule,
)
from orchestration.gates import PASSED, GateFailed
from orchestration.status import RunStatus, StepStatus
from orchestration.step import BoundStep
from orchestration.store.repository import (
    AttemptRecord,
    Claim,
    RunFinish,
    StepOutcome,
    Store,
    utcnow,
)

if TYPE_CHECKING:
    from orchestration.resilience import Resilience
from orchestration.timeouts import call_with_timeout

log = structlog.get_logger("orchestration.runtime")
_ERROR_LIMIT = 4000


@dataclass(frozen=True)
class Delivery:
    """Where and how a step message arrived, and what the step may use."""

    worker: str | None
    task_id: str | None
    inline_limit: int
    inline_retry_limit: float
    services: Resilience | None = None


def run_step(step: BoundStep, message: Any, store: Store, delivery: Delivery,
             *, finalize: bool = False) -> dict[str, Any]:
    """Execute one delivery of a step and return the envelope for its dependents.

    With ``finalize`` (the run's last step) the run's terminal status is written in the
    same transaction as the step's outcome.
    """
    envelope = Envelope.from_message(message)
    spec = step.spec
    lost = sorted(step.requires & envelope.blocked)
    if lost:
        store.skip_steps(envelope.run_id, [spec.name], f"skipped: {', '.join(lost)} unavailable "
                         "after a critical failure")
        envelope.blocked.add(spec.output)
    else:
        claim = store.claim_step(envelope.run_id, spec.name, worker=delivery.worker,
                                 task_id=delivery.task_id, first=not envelope.started)
        envelope.started = True
        if claim.proceed:
            try:
                outcome = _execute(step, envelope, store, delivery, claim)
            except _RescheduleWithOutcome as signal:
                store.record_step(envelope.run_id, spec.name, signal.outcome,
                                  worker=delivery.worker)
                raise Reschedule(signal.delay) from None
            _apply(step, envelope, outcome.status, outcome.output, delivery)
            finish = run_finish(envelope) if finalize else None
            store.record_step(envelope.run_id, spec.name, outcome, worker=delivery.worker,
                              claimed_at=claim.claimed_at, finish=finish)
            if finish is not None:
                _log_finished(envelope, finish)
            return envelope.to_message()
        _apply(step, envelope, claim.status, claim.output, delivery)
    if finalize:
        finalize_run(envelope, store)
    return envelope.to_message()


def run_finish(envelope: Envelope) -> RunFinish:
    """The run's terminal status, from what its last envelope says."""
    if envelope.failed:
        return RunFinish(RunStatus.FAILED, f"critical step(s) failed: "
                         f"{', '.join(sorted(envelope.failed))}", "StepFailed")
    return RunFinish(RunStatus.SUCCEEDED)


def finalize_run(envelope: Envelope, store: Store) -> RunStatus:
    """Write the run's terminal status from what its last envelope says."""
    finish = run_finish(envelope)
    store.finish_run(envelope.run_id, finish.status, error=finish.error,
                     error_type=finish.error_type)
    _log_finished(envelope, finish)
    return finish.status


def _log_finished(envelope: Envelope, finish: RunFinish) -> None:
    log.debug("run finished", run_id=envelope.run_id, status=finish.status.value)


def _apply(step: BoundStep, envelope: Envelope, status: StepStatus, output: Any,
           delivery: Delivery) -> None:
    spec = step.spec
    if status.produced_output:
        envelope.put(spec.output, output, source=spec.name, limit=delivery.inline_limit)
    elif status is StepStatus.FAILED and not spec.critical:
        envelope.put(spec.output, None, source=spec.name, limit=delivery.inline_limit)
    else:  # failed critically, or skipped because of an earlier critical failure
        envelope.blocked.add(spec.output)
        if status is StepStatus.FAILED:
            envelope.failed.add(spec.name)


def _resolve_kwargs(step: BoundStep, envelope: Envelope, store: Store) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    inputs: dict[str, Any] | None = None
    for param, name in step.sources.items():
        if name in envelope.inline:
            kwargs[param] = envelope.inline[name]
        elif name in envelope.refs:
            source = envelope.refs[name]
            if source == INPUT_SOURCE:
                inputs = inputs if inputs is not None else store.load_inputs(envelope.run_id)
                kwargs[param] = inputs[name]
            else:
                kwargs[param] = store.load_output(envelope.run_id, source)
        elif param not in step.spec.optional_params:
            raise KeyError(f"{step.spec.where}: no value for parameter {param!r} ({name!r})")
    return kwargs


def _describe(exc: BaseException) -> tuple[str, str]:
    text = "".join(traceback.format_exception(exc, limit=-4))
    kind = type(exc)
    return text[-_ERROR_LIMIT:], f"{kind.__module__}.{kind.__qualname__}"


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, Exception) and not isinstance(exc, NonRetryableError)


def _execute(step: BoundStep, envelope: Envelope, store: Store, delivery: Delivery,
             claim: Claim) -> StepOutcome:
    spec = step.spec
    previous_attempts = claim.attempts
    records: list[AttemptRecord] = []
    try:
        kwargs = _resolve_kwargs(step, envelope, store)
    except Exception as exc:
        error, error_type = _describe(exc)
        return StepOutcome(StepStatus.FAILED, error=error, error_type=error_type)
    attempt_number = previous_attempts
    contexts: list[StepContext] = []
    params: dict[str, Any] = {}

    def attempt_once() -> Any:
        nonlocal attempt_number, params
        attempt_number += 1
        timeout = _timeout(step, delivery)
        ctx = StepContext(run_id=envelope.run_id, workflow=spec.workflow, step=spec.name,
                          attempt=attempt_number, model=spec.model, params=dict(params),
                          deadline=None if timeout is None else time.monotonic() + timeout,
                          max_cost=spec.max_cost, run_budget=step.run_budget,
                          spent_before=claim.cost_usd + sum(c.cost_usd for c in contexts),
                          run_cost=lambda: store.run_cost(envelope.run_id),
                          services=delivery.services)
        contexts.append(ctx)
        call_kwargs = dict(kwargs, ctx=ctx) if spec.wants_ctx else kwargs
        started = utcnow()
        gate: str | None = None
        try:
            value = call_with_timeout(spec.fn, call_kwargs, timeout)
            _check_json(spec.where, value)
            if spec.gate is not None:
                reason = spec.gate.verdict(value)
                gate = PASSED if reason is None else f"failed: {reason}"
                if reason is not None:
                    raise GateFailed(reason)
        except Exception as exc:
            records.append(_record(attempt_number, "failed", started, ctx, exc, gate))
            if spec.on_retry is not None:
                updated = spec.on_retry(attempt_number, exc, dict(params))
                params = dict(updated) if updated is not None else params
            raise
        records.append(_record(attempt_number, "succeeded", started, ctx, None, gate))
        if isinstance(spec.timeout, AdaptiveTimeout) and delivery.services is not None:
            delivery.services.latencies.observe(spec.task_name, records[-1].latency_ms)
        return value

    remaining = max(1, spec.retries + 1 - previous_attempts)
    retrying = Retrying(
        stop=stop_after_attempt(remaining),
        wait=lambda state: spec.backoff.delay(previous_attempts + state.attempt_number),
        retry=retry_if_exception(_retryable),
        sleep=_sleeper(delivery.inline_retry_limit),
        before_sleep=_log_retry(spec.task_name, envelope.run_id),
        reraise=True,
    )
    try:
        output = retrying(attempt_once)
    except Reschedule as signal:
        cost, model = _spend(contexts)
        raise _RescheduleWithOutcome(signal.delay, StepOutcome(
            StepStatus.RETRYING, error=records[-1].error if records else None,
            error_type=records[-1].error_type if records else None,
            attempts=records, cost_usd=cost, model=model)) from None
    except Exception as exc:
        return _final_failure(step, kwargs, exc, records, *_spend(contexts))
    cost, model = _spend(contexts)
    return StepOutcome(StepStatus.SUCCEEDED, output=output, attempts=records,
                       cost_usd=cost, model=model)


def _spend(contexts: list[StepContext]) -> tuple[float, str | None]:
    """Total cost of a step's attempts, and the last model that answered."""
    cost = sum(ctx.cost_usd for ctx in contexts)
    model = next((m for ctx in reversed(contexts) for m in reversed(ctx.models_used)), None)
    return cost, model


class _RescheduleWithOutcome(Reschedule):
    """Reschedule carrying the attempts made so far, so they are recorded first."""

    def __init__(self, delay: float, outcome: StepOutcome) -> None:
        super().__init__(delay)
        self.outcome = outcome


def _final_failure(step: BoundStep, kwargs: dict[str, Any], exc: BaseException,
                   records: list[AttemptRecord], cost: float, model: str | None) -> StepOutcome:
    error, error_type = _describe(exc)
    if step.spec.fallback is not None:
        try:
            value = step.spec.fallback.resolve(kwargs)
            dumps(value)
        except Exception as fallback_exc:
            error2, _ = _describe(fallback_exc)
            return StepOutcome(StepStatus.FAILED, error=f"{error}\nfallback failed: {error2}",
                               error_type=error_type, attempts=records, cost_usd=cost,
                               model=model)
        return StepOutcome(StepStatus.FALLBACK, output=value, error=error, error_type=error_type,
                           attempts=records, cost_usd=cost, model=model)
    return StepOutcome(StepStatus.FAILED, error=error, error_type=error_type, attempts=records,
                       cost_usd=cost, model=model)


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


def _record(number: int, status: str, started: datetime, ctx: StepContext,
            exc: BaseException | None, gate: str | None) -> AttemptRecord:
    error, error_type = _describe(exc) if exc is not None else (None, None)
    breakers = [f"{call.model}:{call.breaker}" for call in ctx.calls
                if call.breaker not in (None, "closed")]
    return AttemptRecord(attempt=number, status=status, started_at=started,
                         finished_at=utcnow(), error=error, error_type=error_type,
                         model=ctx.models_used[-1] if ctx.models_used else ctx.model,
                         cost_usd=ctx.cost_usd, gate=gate,
                         tokens_in=sum(call.prompt_tokens for call in ctx.calls),
                         tokens_out=sum(call.completion_tokens for call in ctx.calls),
                         breaker=", ".join(breakers) or None)


def _sleeper(inline_limit: float) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        if seconds > inline_limit:
            raise Reschedule(seconds)
        time.sleep(seconds)
    return sleep


def _log_retry(task_name: str, run_id: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("step attempt failed; retrying", run_id=run_id, step=task_name,
                    attempt=state.attempt_number, error=repr(error),
                    wait_s=round(state.upcoming_sleep, 3))
    return before_sleep
