"""Batched steps (``batch_size=N``): one call of the function for elements of many runs.

A run reaching a batched step does not call it: the runtime raises :class:`JoinBatch`
with the element's arguments, and the worker buffers it (``store/batches.py``) and parks
the run's message. A flush takes a batch and calls :func:`run_batch`:

- every parameter receives a list, one entry per element (aligned); the function returns
  a list of the same length (anything else is :class:`BatchOutputMismatch`); the gate
  (if any) is applied to each element's output;
- the batch call runs under the step's policies (timeout per attempt, retries with
  backoff, ``on_error`` retry counts, model routes, ``max_cost`` per element);
- a batch of several elements that still fails is split in halves, each half a batch
  call of its own (recursively), so a poisoned element ends alone and fails (or falls
  back, skips, escalates) only its own run's step; an element alone follows every policy
  of its step as if it were not batched (fallback, ``on_error``, ``critical``);
- each run gets its own outcome: its output, an attempt record for every call it was
  part of (``policy`` says ``batch of N``), and its share of each call's cost (the
  call's spend divided by the elements in it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from orchestration.core.status import StepStatus
from orchestration.define.step import BoundStep
from orchestration.errors import (
    BatchOutputMismatch,
    GateFailed,
    NonRetryableError,
    StepSignal,
    WaitForInput,
)
from orchestration.execute.attempts import (
    Delivery,
    EscalateWithOutcome,
    StepCall,
    run_attempts,
)
from orchestration.store.batches import Element
from orchestration.store.repository import AttemptRecord, StepOutcome, Store

__all__ = ["BatchResult", "JoinBatch", "run_batch"]


class JoinBatch(StepSignal):
    """The step is batched: buffer this run's element; the worker parks its message."""

    def __init__(self, run_id: str, kwargs: dict[str, Any], prior_attempts: int,
                 claimed_at: datetime | None) -> None:
        super().__init__()
        self.run_id, self.kwargs = run_id, kwargs
        self.prior_attempts, self.claimed_at = prior_attempts, claimed_at


@dataclass
class BatchResult:
    """What one element's run records: its outcome; ``escalated``: then a person's wait."""

    outcome: StepOutcome
    escalated: bool = False


@dataclass
class _Batch:
    step: BoundStep
    store: Store
    delivery: Delivery
    renew: Callable[[], object]
    calls: int = 0
    shares: dict[int, list[AttemptRecord]] = field(default_factory=dict)
    results: dict[int, BatchResult] = field(default_factory=dict)


def run_batch(step: BoundStep, elements: Sequence[Element], store: Store, delivery: Delivery,
              *, renew: Callable[[], object] = lambda: None) -> dict[int, BatchResult]:
    """Call the step for these elements (splitting on failure); outcome by element id.

    ``renew`` is called before every batch call (it extends the batch's lease). Retries
    stay in this process (never handed back to the broker: other runs' elements wait).
    """
    batch = _Batch(step, store, replace(delivery, inline_retry_limit=float("inf")), renew,
                   shares={element.id: [] for element in elements})
    if elements:
        _group(batch, list(elements))
    return batch.results


def _group(batch: _Batch, elements: list[Element]) -> None:
    if len(elements) == 1:
        _alone(batch, elements[0])
        return
    batch.renew()
    batch.calls += 1
    count = len(elements)
    names = list(dict.fromkeys(name for element in elements for name in element.kwargs))
    kwargs = {name: [element.kwargs.get(name) for element in elements] for name in names}
    try:
        # No live stream for a call of several runs' elements (it would go to the first
        # run's): each run's stream gets its step_finished when its outcome is recorded.
        outcome = run_attempts(StepCall(_as_batch(batch.step, count), kwargs,
                                        elements[0].run_id, batch.store,
                                        replace(batch.delivery, stream=None)))
    except EscalateWithOutcome as signal:  # escalating is for an element alone
        outcome = signal.outcome
    succeeded = outcome.status is StepStatus.SUCCEEDED
    label = f"batch of {count}" if succeeded else f"batch of {count}: split in halves"
    for index, element in enumerate(elements):
        batch.shares[element.id].extend(_share(record, index, count, label)
                                        for record in outcome.attempts)
    if succeeded:
        for element, output in zip(elements, outcome.output, strict=True):
            batch.results[element.id] = BatchResult(_own(batch, element, StepOutcome(
                StepStatus.SUCCEEDED, output=output, model=outcome.model)))
        return
    half = count // 2
    _group(batch, elements[:half])
    _group(batch, elements[half:])


def _alone(batch: _Batch, element: Element) -> None:
    """An element alone: the step's every policy, as if it were not batched."""
    batch.renew()
    batch.calls += 1
    earlier = batch.shares[element.id]
    call = StepCall(_as_one(batch.step), element.kwargs, element.run_id, batch.store,
                    batch.delivery, previous_attempts=element.prior_attempts,
                    spent_before=sum(record.cost_usd for record in earlier))
    try:
        outcome = run_attempts(call)
    except EscalateWithOutcome as signal:
        batch.results[element.id] = BatchResult(_own(batch, element, signal.outcome), True)
        return
    batch.results[element.id] = BatchResult(_own(batch, element, outcome))


def _own(batch: _Batch, element: Element, outcome: StepOutcome) -> StepOutcome:
    """The element's outcome with every attempt it was part of, numbered after earlier ones."""
    records = [*batch.shares[element.id], *outcome.attempts]
    for number, record in enumerate(records, start=element.prior_attempts + 1):
        record.attempt = number
    return replace(outcome, attempts=records, cost_usd=sum(r.cost_usd for r in records))


def _share(record: AttemptRecord, index: int, count: int, label: str) -> AttemptRecord:
    """Element ``index``'s share of a batch call's attempt: its cost and tokens divided
    (the tokens that do not divide evenly go one each to the first elements)."""
    return replace(record, cost_usd=record.cost_usd / count,
                   tokens_in=_part(record.tokens_in, index, count),
                   tokens_out=_part(record.tokens_out, index, count),
                   policy=f"{record.policy}; {label}" if record.policy else label,
                   calls=[dict(call) for call in record.calls] if record.calls else None)


def _part(total: int, index: int, count: int) -> int:
    return total // count + (1 if index < total % count else 0)


def _as_batch(step: BoundStep, count: int) -> BoundStep:
    """The step as a batch call of ``count`` elements: lists in, a checked list out.

    The gate applies to each element's output; the fallback is left to elements alone;
    ``max_cost`` holds per element (``count`` times for the call); the run budget is
    each run's, checked when its element runs alone.
    """
    spec = step.spec
    fn, gate = spec.fn, spec.gate

    def call(**kwargs: Any) -> list[Any]:
        outputs = _checked(spec.where, _called(spec.where, fn, kwargs), count)
        if gate is not None:
            for index, output in enumerate(outputs):
                reason = gate.verdict(output)
                if reason is not None:
                    raise GateFailed(f"element {index} of {count}: {reason}")
        return outputs

    batched = replace(spec, fn=call, gate=None, fallback=None,
                      max_cost=None if spec.max_cost is None else spec.max_cost * count)
    return replace(step, spec=batched, run_budget=None)


def _as_one(step: BoundStep) -> BoundStep:
    """The step for one element: its function called with lists of one, its output the
    list's only entry; every other policy as declared."""
    spec = step.spec
    fn = spec.fn

    def call(**kwargs: Any) -> Any:
        ctx = kwargs.pop("ctx", None)
        lists = {name: [value] for name, value in kwargs.items()}
        if spec.wants_ctx:
            lists["ctx"] = ctx
        return _checked(spec.where, _called(spec.where, fn, lists), 1)[0]

    return replace(step, spec=replace(spec, fn=call))


def _called(where: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    try:
        return fn(**kwargs)
    except WaitForInput:
        # A person's answer is per run; a batch call serves several runs at once.
        raise NonRetryableError(f"{where} is batched (batch_size=): ctx.wait_for_input is "
                                "not available in a batched step") from None


def _checked(where: str, outputs: Any, count: int) -> list[Any]:
    if not isinstance(outputs, list):
        raise BatchOutputMismatch(f"{where} is batched (batch_size=): it must return a list "
                                  f"with one output per element, got {type(outputs).__name__}")
    if len(outputs) != count:
        raise BatchOutputMismatch(f"{where} is batched (batch_size=): it returned "
                                  f"{len(outputs)} output(s) for {count} element(s)")
    return outputs
