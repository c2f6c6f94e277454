"""The step runtime: what a worker does with one delivery of one step.

1. Merge the incoming envelope(s). Skip the step if something it needs was lost to a
   critical failure, or if every step it depends on was not selected by a branch.
2. Claim the step in the results DB (a step already terminal is not run again: its
   recorded outcome is passed on, which is how duplicate deliveries and resumes work).
3. A ``when=`` predicate that says no records the step ``skipped`` (not selected).
   A map step replaces itself with a chord over chunks of its list; a step returning
   ``ctx.run_child(...)`` replaces itself with the child run's canvas; a step calling
   ``ctx.wait_for_input`` parks the run. Anything else runs its attempts under its
   policies (see :mod:`orchestration.execute.attempts`); an ``on_error`` ``escalate``
   parks the run too, and the input a person delivers becomes the step's output.
4. Record the outcome and attempts in one transaction; pass the envelope on; the last
   step of a run finalises the run row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from orchestration.core import metrics
from orchestration.core.clock import utcnow
from orchestration.core.envelope import INPUT_SOURCE, OUTPUT_SOURCE, Envelope
from orchestration.core.redaction import changed_by_redaction
from orchestration.core.status import RunStatus, StepStatus
from orchestration.define.children import ChildRun
from orchestration.define.fingerprint import cache_key
from orchestration.define.on_error import ESCALATION_INPUT
from orchestration.define.policies import first_then_retry
from orchestration.define.step import BoundStep
from orchestration.errors import (
    HeldElsewhere,
    Reschedule,
    ResultsDatabaseUnavailable,
    StepSignal,
    WaitForInput,
)
from orchestration.execute.attempts import (
    POLICY_SKIP,
    Delivery,
    EscalateWithOutcome,
    RescheduleWithOutcome,
    ReturnedSignal,
    StepCall,
    describe,
    run_attempts,
)
from orchestration.execute.batching import JoinBatch
from orchestration.execute.live import record_step_finished, run_finished, run_finished_event
from orchestration.execute.memory import bind_memory
from orchestration.store.engine import is_unavailable
from orchestration.store.repository import Claim, ClaimRequest, RunFinish, StepOutcome, Store
from orchestration.store.run_stream import RunStream

__all__ = ["Delivery", "StartChild", "StartMap", "arguments", "finalize_run", "run_step"]

T = TypeVar("T")
log = structlog.get_logger("orchestration.execute.runtime")
NOT_SELECTED = "not selected"


class StartMap(StepSignal):
    """The step is a map: the app replaces its message with a chord over the list."""

    def __init__(self, envelope: Envelope, items: list[Any], finalize: bool) -> None:
        super().__init__()
        self.envelope, self.items, self.finalize = envelope, items, finalize


class StartChild(StepSignal):
    """The step returned a child run: the app replaces its message with the child's canvas."""

    def __init__(self, envelope: Envelope, child: ChildRun, finalize: bool) -> None:
        super().__init__()
        self.envelope, self.child, self.finalize = envelope, child, finalize


@dataclass
class NextClaim:
    """The step after this one in the same message (a fused chain): claimed in the
    transaction that records this one (one commit fewer), unless its inputs say it will
    be skipped. ``claim`` is what that claim answered (None: the next step claims itself).
    """

    step: BoundStep
    released: int | None = None
    claim: Claim | None = None


def claim_request(delivery: Delivery, *, first: bool, released: int | None) -> ClaimRequest:
    """Who claims a step in this delivery."""
    return ClaimRequest(delivery.worker, delivery.task_id, first, delivery.holder, released,
                        utcnow() - timedelta(seconds=delivery.dead_after)
                        if delivery.dead_after > 0 else None)


def run_step(step: BoundStep, message: Any, store: Store, delivery: Delivery,
             *, finalize: bool = False, params: dict[str, Any] | None = None,
             released: int | None = None, claim: Claim | None = None,
             then: NextClaim | None = None) -> dict[str, Any]:
    """Execute one delivery of a step and return the envelope for its dependents.

    With ``finalize`` (the run's last step) the run's terminal status is written in the
    same transaction as the step's outcome. ``released`` is the delivery number an
    earlier delivery of this message handed back (see ResultsDatabaseUnavailable).
    ``claim``: this step's claim, made by the previous step's record (see
    :class:`NextClaim`); ``then``: the next step of this message, to claim likewise.
    """
    envelope = Envelope.from_message(message)
    spec = step.spec
    lost = sorted(step.requires & envelope.blocked)
    if lost:
        store.skip_steps(envelope.run_id, [spec.name], f"skipped: {', '.join(lost)} unavailable "
                         "after a critical failure")
        envelope.blocked.add(spec.output)
    elif step.requires and step.requires <= envelope.unselected:
        store.skip_steps(envelope.run_id, [spec.name], f"{NOT_SELECTED}: every step it depends "
                         "on was not selected")
        envelope.unselect(spec.output)
    else:
        if claim is None:
            request = claim_request(delivery, first=not envelope.started, released=released)
            claim = store.claim_step(envelope.run_id, spec.name, worker=request.worker,
                                     task_id=request.task_id, first=request.first,
                                     holder=request.holder, released=request.released,
                                     alive_since=request.alive_since)
        envelope.started = True
        if claim.proceed:
            try:
                outcome = _run(step, envelope, store, delivery, claim, finalize, params)
                return record_and_pass(step, envelope, outcome, store, delivery,
                                       claimed_at=claim.claimed_at, finalize=finalize,
                                       then=then)
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                raise ResultsDatabaseUnavailable(
                    f"results database unreachable in step {spec.where}: "
                    f"{type(exc).__name__}: {exc}", step=spec.name,
                    released=claim.delivery) from exc
        if claim.held_elsewhere:
            raise HeldElsewhere(spec.name)
        apply_outcome(step, envelope, claim.status, claim.output, delivery, claim.error)
    if finalize:
        finalize_run(envelope, store, delivery.stream)
    return envelope.to_message()


def _run(step: BoundStep, envelope: Envelope, store: Store, delivery: Delivery, claim: Claim,
         finalize: bool, params: dict[str, Any] | None) -> StepOutcome:
    spec = step.spec
    try:
        kwargs = arguments(step, envelope, store)
        if spec.when is not None:
            condition = resolve(step.when_sources, frozenset(), envelope, store, spec.where)
            if not spec.when(**condition):
                return StepOutcome(StepStatus.SKIPPED, error=f"{NOT_SELECTED}: when= is false")
    except BaseException as exc:  # a when= raising SystemExit fails the step, not the worker
        if is_unavailable(exc):
            raise  # reading inputs by reference: the results DB is down, not the step
        error, error_type = describe(exc)
        return StepOutcome(StepStatus.FAILED, error=error, error_type=error_type)
    if claim.crashes >= max_crashes(delivery):
        return StepOutcome(StepStatus.FAILED, error_type="PoisonStep", error=(
            f"poison step: its worker died {claim.crashes} times while running it; not "
            "delivered again"))
    if spec.cache:
        key = cache_key(spec, kwargs)
        hit, output = store.recovery.cached(key, utcnow())
        if hit:
            return StepOutcome(StepStatus.SUCCEEDED, output=output, cache_hit=True)
    if spec.map is not None:
        return _start_map(step, envelope, store, spec.map, kwargs[spec.map], finalize)
    outcome = _call(step, envelope, store, delivery, claim, kwargs, finalize, params)
    if spec.cache and outcome.status is StepStatus.SUCCEEDED:
        # The cache is stored like any output: redacted (a hit returns the redacted copy).
        stored = delivery.redactor(outcome.output) if delivery.redactor else outcome.output
        store.recovery.cache(cache_key(spec, kwargs), spec.workflow, spec.name, stored,
                             utcnow(), None if spec.cache is True else float(spec.cache))
    return outcome


def _start_map(step: BoundStep, envelope: Envelope, store: Store, param: str, items: Any,
               finalize: bool) -> StepOutcome:
    """Fail a map over what is not a list; otherwise replace the step by its chord."""
    if not isinstance(items, list):
        return StepOutcome(StepStatus.FAILED, error_type="TypeError",
                           error=f"map={param!r} needs a list, got {type(items).__name__}")
    if _stored_differs(step, envelope, store, param):
        envelope.pinned.add(step.sources[param])  # the map keeps it inline
    raise StartMap(envelope, items, finalize)


def _stored_differs(step: BoundStep, envelope: Envelope, store: Store, param: str) -> bool:
    """True when an inline value's stored copy is not the value (redaction changed it).

    A value passed by reference already is its stored copy, so only inline ones are read.
    """
    name = step.sources[param]
    if name not in envelope.inline:
        return False
    value = envelope.inline[name]
    if name in step.requires:  # a step's output
        stored = store.load_output_named(envelope.run_id, name)
    else:
        stored = store.load_inputs(envelope.run_id).get(name)
    return bool(changed_by_redaction({name: value}, {name: stored}))


def _call(step: BoundStep, envelope: Envelope, store: Store, delivery: Delivery, claim: Claim,
          kwargs: dict[str, Any], finalize: bool,
          params: dict[str, Any] | None) -> StepOutcome:
    """The step's attempts; what they did is recorded first if the step goes on later."""
    name = step.spec.name
    if step.spec.on_error is not None and step.spec.on_error.escalates:
        wait = store.waits.lookup(envelope.run_id, name, ESCALATION_INPUT)
        if wait is not None and wait.status == "delivered":  # a person answered for it
            return StepOutcome(StepStatus.SUCCEEDED, output=wait.data)
    if step.spec.batch_size is not None:  # called with other runs' elements (batching.py)
        raise JoinBatch(envelope.run_id, kwargs, claim.attempts, claim.claimed_at)
    try:
        return run_attempts(StepCall(step, kwargs, envelope.run_id, store, delivery,
                                     previous_attempts=claim.attempts,
                                     spent_before=claim.cost_usd, signal_types=(ChildRun,),
                                     initial_params=params,
                                     memory=bind_memory(step, envelope, store,
                                                        delivery.redactor)))
    except RescheduleWithOutcome as signal:
        store.record_step(envelope.run_id, name, redacted(signal.outcome, delivery),
                          worker=delivery.worker)
        raise Reschedule(signal.delay, signal.params) from None
    except ReturnedSignal as signal:
        if signal.outcome is not None:  # the attempt that started the child, and its cost
            store.record_step(envelope.run_id, name, redacted(signal.outcome, delivery),
                              worker=delivery.worker)
        raise StartChild(envelope, signal.value, finalize) from None
    except EscalateWithOutcome as signal:
        # The failed attempts and the error are recorded first: `orchestrate show` prints
        # them beside the wait; what a person approves becomes the output.
        store.record_step(envelope.run_id, name, redacted(signal.outcome, delivery),
                          worker=delivery.worker)
        raise WaitForInput(ESCALATION_INPUT, None) from None


def max_crashes(delivery: Delivery) -> int:
    """Deliveries whose worker died before a step is failed as poison."""
    return delivery.max_crashes


def record_and_pass(step: BoundStep, envelope: Envelope, outcome: StepOutcome, store: Store,
                    delivery: Delivery, *, claimed_at: datetime | None = None,
                    finalize: bool = False, then: NextClaim | None = None) -> dict[str, Any]:
    """Record a step's outcome (finishing the run if it is the last), pass the envelope on.

    If another delivery recorded the step first (a duplicate message), its recorded
    outcome is what dependents receive, never this delivery's.
    """
    stored = redacted(outcome, delivery)
    trial = Envelope.from_message(envelope.to_message())
    # An output that redaction changed is passed inline: a reference reads the stored copy.
    apply_outcome(step, trial, outcome.status, outcome.output, delivery, outcome.error,
                  keep_inline=stored.output is not outcome.output
                  and stored.output != outcome.output)
    finish = run_finish(trial) if finalize else None
    notice = None
    if then is not None and finish is None and _claimable(then.step, trial):
        request = claim_request(delivery, first=False, released=then.released)
        # A retry after a commit whose answer was lost finds the step terminal (None):
        # the next step then claims itself, and sees its claim as this message's own.
        then.claim = _hold_while_unavailable(
            lambda: store.record_then_claim(envelope.run_id, step.spec.name, stored,
                                            worker=delivery.worker, claimed_at=claimed_at,
                                            then=then.step.spec.name, request=request),
            delivery, run_id=envelope.run_id, step=step.spec.task_name)
        recorded = then.claim is not None
    else:
        # With a stream, the run's completion notice waits for its run_finished event.
        notice = _notice(store, envelope.run_id, finish) if delivery.stream is not None \
            else None
        recorded = _hold_while_unavailable(
            lambda: store.record_step(envelope.run_id, step.spec.name, stored,
                                      worker=delivery.worker, claimed_at=claimed_at,
                                      finish=finish, notify=notice is None),
            delivery, run_id=envelope.run_id, step=step.spec.task_name)
    if not recorded:
        status, output, error = store.step_state(envelope.run_id, step.spec.name)
        apply_outcome(step, envelope, status, output, delivery, error)
        if finalize:
            finalize_run(envelope, store, delivery.stream)
        return envelope.to_message()
    latency = (utcnow() - claimed_at).total_seconds() if claimed_at else None
    try:
        metrics.record_step(step.spec.workflow, step.spec.name,
                            outcome.model or step.spec.model, outcome.status.value,
                            len(outcome.attempts) + outcome.extra_attempts, latency,
                            outcome.cost_usd)
        if delivery.stream is not None:
            record_step_finished(delivery.stream, envelope.run_id, step.spec.name, stored,
                                 latency, None if finish is None else run_finished_event(
                                     envelope.run_id, finish.status.value, finish.error,
                                     store.ended_cost(envelope.run_id)),
                                 wait=_passed_elsewhere(delivery, finish, then), then=notice)
            notice = None  # the writer sends it
    finally:
        if notice is not None:  # the stream write never queued: the run still ended
            notice()
    if finish is not None:
        _log_finished(trial, finish)
    return trial.to_message()


def _passed_elsewhere(delivery: Delivery, finish: RunFinish | None,
                      then: NextClaim | None) -> bool:
    """Whether the step's outcome goes on to a step that may run in another process (its
    events must be stored first, see execute/live.py): not on the embedded default, not
    to a fused chain's next step in this message, not from the run's last step."""
    return not delivery.stream_in_process and finish is None and then is None


def _notice(store: Store, run_id: str, finish: RunFinish | None) -> Callable[[], None] | None:
    """The completion notice of a run this record ends (None: it does not end it)."""
    if finish is None:
        return None
    status = finish.status.value
    return lambda: store.completions.notify(run_id, status)


def _claimable(step: BoundStep, envelope: Envelope) -> bool:
    """False when ``step`` will be skipped given ``envelope`` (as run_step decides)."""
    if step.requires & envelope.blocked:
        return False
    return not (step.requires and step.requires <= envelope.unselected)


def _hold_while_unavailable(record: Callable[[], T], delivery: Delivery, *,
                            run_id: str, step: str) -> T:
    """Record a finished step, retrying for ``delivery.db_hold`` s while the DB is down.

    The step's work is done (perhaps a paid model call): keeping the slot a while to
    record it beats handing the step back, which runs it again. Recording is
    conditional, so a write that committed before its connection dropped is not
    recorded twice (the retry finds the step terminal and passes its outcome on).
    """
    if delivery.db_hold <= 0:
        return record()

    def warn(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("results database unreachable; holding a finished step to record it",
                    run_id=run_id, step=step, error=f"{type(error).__name__}: {error}",
                    retry_in_s=round(state.upcoming_sleep, 2), hold_s=delivery.db_hold)

    return first_then_retry(record, lambda: Retrying(
        retry=retry_if_exception(is_unavailable), stop=stop_after_delay(delivery.db_hold),
        wait=wait_exponential(multiplier=0.25, max=5), before_sleep=warn, reraise=True),
        is_unavailable)


def redacted(outcome: StepOutcome, delivery: Delivery) -> StepOutcome:
    """What is stored of an outcome: output, errors and attempts with secrets scrubbed."""
    redactor = delivery.redactor
    if redactor is None:
        return outcome
    return replace(
        outcome, output=redactor(outcome.output), error=redactor.text(outcome.error),
        attempts=[replace(a, error=redactor.text(a.error)) for a in outcome.attempts])


def run_finish(envelope: Envelope) -> RunFinish:
    """The run's terminal status, from what its last envelope says."""
    if envelope.failed:
        return RunFinish(RunStatus.FAILED, f"critical step(s) failed: "
                         f"{', '.join(sorted(envelope.failed))}", "StepFailed")
    return RunFinish(RunStatus.SUCCEEDED)


def finalize_run(envelope: Envelope, store: Store,
                 stream: RunStream | None = None) -> RunStatus:
    """Write the run's terminal status from what its last envelope says (and close its
    live ``stream``, if given)."""
    finish = run_finish(envelope)
    ended = store.finish_run(envelope.run_id, finish.status, error=finish.error,
                             error_type=finish.error_type, notify=stream is None)
    notice = _notice(store, envelope.run_id, finish) if ended and stream is not None \
        else None
    try:
        if stream is not None:
            run_finished(stream, envelope.run_id, finish.status.value, finish.error,
                         store.run_cost(envelope.run_id), then=notice)
            notice = None  # the writer sends it, after run_finished
    finally:
        if notice is not None:
            notice()
    _log_finished(envelope, finish)
    return finish.status


def _log_finished(envelope: Envelope, finish: RunFinish) -> None:
    log.debug("run finished", run_id=envelope.run_id, status=finish.status.value)


def apply_outcome(step: BoundStep, envelope: Envelope, status: StepStatus, output: Any,
                  delivery: Delivery, error: str | None = None, *,
                  keep_inline: bool = False) -> None:
    """What dependents see of a step: its output, None, or that it is unavailable.

    ``keep_inline``: the stored copy of ``output`` differs (redacted); never pass a reference.
    """
    spec = step.spec
    if status.produced_output:
        envelope.put(spec.output, output, source=spec.name, limit=delivery.inline_limit,
                     keep_inline=keep_inline)
    elif (status is StepStatus.FAILED and not spec.critical) or (
            status is StepStatus.SKIPPED and (error or "").startswith(POLICY_SKIP)):
        # lost without failing the run: dependents receive None (on_error skip included)
        envelope.put(spec.output, None, source=spec.name, limit=delivery.inline_limit)
    elif status is StepStatus.SKIPPED and (error or "").startswith(NOT_SELECTED):
        envelope.unselect(spec.output)
    else:  # failed critically, cancelled, or skipped because of a critical failure
        # (a cancelled run's steps stop here: nothing after them is claimed)
        envelope.blocked.add(spec.output)
        if status is StepStatus.FAILED:
            envelope.failed.add(spec.name)


def arguments(step: BoundStep, envelope: Envelope, store: Store, *,
              without: str | None = None) -> dict[str, Any]:
    """The step's arguments by parameter name (``without``: one left out, a map's list).

    A ``gather=`` parameter receives ``{depends_on name: output}``; a dependency lost
    without failing the run (non-critical failure, on_error skip, not selected) is None
    there, as it would be as a parameter of its own.
    """
    spec = step.spec
    sources = {param: name for param, name in step.sources.items() if param != without}
    kwargs = resolve(sources, spec.optional_params, envelope, store, spec.where)
    if spec.gather is not None:
        kwargs[spec.gather] = resolve(step.gathered, frozenset(), envelope, store, spec.where)
    return kwargs


def resolve(sources: dict[str, str], optional: frozenset[str], envelope: Envelope,
            store: Store, where: str) -> dict[str, Any]:
    """Arguments by parameter name from the envelope (refs read from the results DB)."""
    kwargs: dict[str, Any] = {}
    inputs: dict[str, Any] | None = None
    for param, name in sources.items():
        if name in envelope.inline:
            kwargs[param] = envelope.inline[name]
        elif name in envelope.refs:
            source = envelope.refs[name]
            if source == INPUT_SOURCE:
                inputs = inputs if inputs is not None else store.load_inputs(envelope.run_id)
                kwargs[param] = inputs[name]
            elif source == OUTPUT_SOURCE:
                kwargs[param] = store.load_output_named(envelope.run_id, name)
            else:
                kwargs[param] = store.load_output(envelope.run_id, source)
        elif param not in optional:
            raise KeyError(f"{where}: no value for parameter {param!r} ({name!r})")
    return kwargs
