"""What a failed attempt leads to: retry or not, how many times, and ``on_error``'s word.

A failure is retried unless it is a :class:`~orchestration.errors.NonRetryableError`,
up to the step's ``retries=``; an ``on_error`` entry for its kind overrides both
(``retry(n)``), or stops retrying and decides the outcome (``fail``, ``skip``,
``escalate``). :func:`describe` is how an error is recorded: a short traceback and the
exception's qualified type.
"""

from __future__ import annotations

import traceback

from tenacity import RetryCallState
from tenacity.stop import stop_base

from orchestration.core.status import StepStatus
from orchestration.define.on_error import Action, ErrorAction
from orchestration.define.step import BoundStep
from orchestration.errors import NonRetryableError, ProviderError, StepAborted, StepSignal
from orchestration.store.repository import AttemptRecord, StepOutcome

_ERROR_LIMIT = 4000
POLICY_SKIP = "skipped by on_error"  # how a skip's reason starts (dependents receive None)
POLICY_ESCALATE = "escalated by on_error"  # how an escalated step's error starts


class EscalateWithOutcome(StepSignal):
    """An ``escalate`` policy acted: record ``outcome`` (the attempts, the error), then wait."""

    def __init__(self, outcome: StepOutcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


def describe(exc: BaseException) -> tuple[str, str]:
    """(the error with a short traceback, the exception's qualified type)."""
    if isinstance(exc, StepAborted) and exc.__cause__ is not None:
        exc = exc.__cause__  # what the step raised, not the engine's carrier
    text = "".join(traceback.format_exception(exc, limit=-4))
    kind = type(exc)
    return text[-_ERROR_LIMIT:], f"{kind.__module__}.{kind.__qualname__}"


def retryable_default(exc: BaseException) -> bool:
    return isinstance(exc, Exception) and not isinstance(exc, NonRetryableError)


DECIDES = frozenset({Action.FAIL, Action.SKIP, Action.ESCALATE})


def policy_action(step: BoundStep, exc: BaseException) -> ErrorAction | None:
    """The step's ``on_error`` action for a failure (None: the defaults apply).

    A model call's failure that ``ctx.llm`` already retried under ``retry(n)`` is not
    retried again by the step (the n retries were the call's).
    """
    if step.spec.on_error is None:
        return None
    action = step.spec.on_error.for_exception(exc)[1]
    if action is not None and action.action is Action.RETRY \
            and isinstance(exc, ProviderError) and exc.policy:
        return ErrorAction(Action.RETRY, 0)
    return action


def retryable_under(step: BoundStep, exc: BaseException) -> bool:
    action = policy_action(step, exc)
    if action is None:
        return retryable_default(exc)
    return isinstance(exc, Exception) and action.action is Action.RETRY


class StopAfterRetries(stop_base):
    """Stop after ``retries=``, or after ``n`` for a failure whose kind says ``retry(n)``."""

    def __init__(self, step: BoundStep, previous: int) -> None:
        self._step = step
        self._previous = previous

    def __call__(self, retry_state: RetryCallState) -> bool:
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        action = policy_action(self._step, error) if error is not None else None
        retries = action.retries if action is not None and action.action is Action.RETRY \
            else self._step.spec.retries
        return retry_state.attempt_number >= max(1, retries + 1 - self._previous)


def policy_outcome(action: ErrorAction, exc: BaseException, records: list[AttemptRecord],
                    cost: float, model: str | None) -> StepOutcome:
    """The outcome decided by ``fail``, ``skip`` or ``escalate`` (no fallback applies)."""
    error, error_type = describe(exc)
    policy = records[-1].policy if records and records[-1].policy else str(action)
    if action.action is Action.SKIP:
        return StepOutcome(StepStatus.SKIPPED, error=f"{POLICY_SKIP} ({policy}): "
                           f"{last_line(error)}", error_type=error_type, attempts=records,
                           cost_usd=cost, model=model)
    if action.action is Action.ESCALATE:
        raise EscalateWithOutcome(StepOutcome(
            StepStatus.RETRYING, error=f"{POLICY_ESCALATE} ({policy}): {last_line(error)}"
                                       f"\n{error}",
            error_type=error_type, attempts=records, cost_usd=cost, model=model))
    return StepOutcome(StepStatus.FAILED, error=error, error_type=error_type, attempts=records,
                       cost_usd=cost, model=model)


def last_line(error: str) -> str:
    lines = error.strip().splitlines()
    return lines[-1] if lines else error
