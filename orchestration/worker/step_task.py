"""The step task: one Celery task per step, ``<workflow>.<step>``, on the step's queue.

The task body is a module-level function; what it runs for is set on its task class when
the step is registered (``orchestrator``, ``workflow``, ``step_name``), so the body
closes over nothing. It runs one delivery (or a fused run of steps, or a map chunk)
through ``execute/`` and turns the control-flow signals into Celery's moves.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import structlog
from celery import chain
from celery.exceptions import Ignore, Reject

from orchestration.compile.canvas import FORK, JOIN, with_priority
from orchestration.core.envelope import Envelope, is_envelope
from orchestration.define.step import BoundStep, StepSpec
from orchestration.define.workflow import Workflow
from orchestration.errors import (
    HeldElsewhere,
    Reschedule,
    ResultsDatabaseUnavailable,
    WaitForInput,
)
from orchestration.execute.batching import JoinBatch
from orchestration.execute.live import flush
from orchestration.execute.maps import map_canvas, run_chunk
from orchestration.execute.runtime import Delivery, NextClaim, StartChild, StartMap, run_step
from orchestration.observe import tracing
from orchestration.store.engine import is_unavailable
from orchestration.store.joins import JoinsUnavailable
from orchestration.worker import versions
from orchestration.worker.batching import join_batch
from orchestration.worker.engine_tasks import child_canvas
from orchestration.worker.forks import after_step, continuation
from orchestration.worker.host import WorkerHost
from orchestration.worker.limits import is_limited, permits_for
from orchestration.worker.packs import run_pack

log = structlog.get_logger("orchestration.app")
HAND_BACK_MAX_DELAY = 30.0  # seconds: the longest countdown of a step handed back


def register_step(host: WorkerHost, workflow: Workflow, spec: StepSpec) -> None:
    """Register a step as the Celery task ``<workflow>.<step>`` on its queue."""
    host.celery.task(name=spec.task_name, bind=True, shared=False, max_retries=None,
                     acks_late=True, orchestrator=host, workflow=workflow,
                     step_name=spec.name)(execute_step)
    # Route by task name too, for anything that sends a step without the compiler.
    routes = dict(host.celery.conf.task_routes or {})
    routes[spec.task_name] = {"queue": workflow.queue_of(spec)}
    host.celery.conf.task_routes = routes


def execute_step(task: Any, message: Any = None, run_id: str | None = None,
                 finalize: bool = False, chunk: dict[str, Any] | None = None,
                 params: dict[str, Any] | None = None,
                 fused: list[str] | None = None,
                 released: dict[str, int] | None = None, version: str | None = None,
                 pack: list[Any] | None = None, fork: dict[str, Any] | None = None,
                 join: dict[str, Any] | None = None) -> Any:
    """Run one delivery of a step (or of fused steps, or one map chunk).

    ``version``: the run's workflow version; a worker carrying another one parks the
    message for a worker of that version (worker/versions.py) and runs nothing.
    ``pack``: several runs' messages in one (compile/packing.py): each runs as its own.
    ``fork``, ``join``: what follows the steps (parallel branches: worker/forks.py).
    """
    if pack is not None and message is None:
        run_pack(task, execute_step, pack, {"finalize": finalize, "fused": fused,
                                            "version": version},
                 task.orchestrator.settings.pack_concurrency)
        return None
    workflow: Workflow = task.workflow
    compiled = workflow.validate()
    steps = compiled.steps
    if not is_envelope(message):
        # Never crash the worker on a bad message: record it and drop it.
        log.error("malformed step message rejected", task=task.name,
                  task_id=task.request.id, message_type=type(message).__name__)
        raise Reject("malformed step message", requeue=False)
    if version is not None and version != compiled.version:
        try:
            versions.park(task.orchestrator, task, workflow, version, message)
        except Exception as exc:  # the results DB down: handed back, never run here
            raise _engine_error(task.orchestrator, task, message, task.step_name,
                                exc) from None
        raise Ignore()
    names = fused or [task.step_name]
    current = names[0]
    first = steps[current]
    with (permits_for(task, workflow, first, message, finalize and chunk is None)
          if is_limited(workflow, first) else nullcontext()), tracing.received(task.request):
        result = _execute(task, message, steps, names, run_id, finalize, chunk, params,
                          released)
    if fork is not None or join is not None:
        try:
            after_step(task, result, fork=fork, join=join, execute=execute_step)
        except JoinsUnavailable as exc:
            raise hand_back(task, exc, names[-1], None, what="join state") from None
    return result


def _settle_stream(delivery: Delivery) -> None:
    """The run goes on elsewhere (a retry, a replacement, a wait): the steps this message
    finished did not wait for their events (execute/live.py); store them before another
    process can write the next step's."""
    if delivery.stream is not None and not delivery.stream_in_process:
        flush(delivery.stream)


def _execute(task: Any, message: Any, steps: dict[str, BoundStep], names: list[str],
             run_id: str | None, finalize: bool, chunk: dict[str, Any] | None,
             params: dict[str, Any] | None, released: dict[str, int] | None) -> Any:
    orchestrator: WorkerHost = task.orchestrator
    store, delivery = orchestrator.store, orchestrator.delivery(task)
    current = names[0]
    try:
        if chunk is not None:
            with _step_context(run_id, steps[task.step_name], task):
                return run_chunk(steps[task.step_name], message, chunk, store, delivery)
        then: NextClaim | None = None
        try:
            for index, current in enumerate(names):
                last = index == len(names) - 1
                claim = then.claim if then is not None else None
                # The next fused step is claimed in the transaction recording this one.
                then = None if last else NextClaim(steps[names[index + 1]],
                                                   (released or {}).get(names[index + 1]))
                with _step_context(run_id, steps[current], task):
                    message = run_step(steps[current], message, store, delivery,
                                       finalize=finalize and last,
                                       params=(params or {}).get(current),
                                       released=(released or {}).get(current),
                                       claim=claim, then=then)
        except BaseException:
            _settle_stream(delivery)
            raise
        return message
    except (StartMap, StartChild) as signal:
        raise task.replace(_replacement(task, signal, names, current, run_id,
                                        finalize)) from None
    except HeldElsewhere as signal:
        # The worker holding the step continues the run: this message stops here.
        log.info("step held by a live worker under another message; delivery dropped",
                 step=signal.step, task_id=task.request.id)
        raise Ignore() from None
    except JoinBatch as signal:
        # Buffered with its run's message: called later with other runs' elements.
        try:
            join_batch(orchestrator, task, steps[current], signal)
        except Exception as exc:  # the results DB down: handed back, not dropped
            raise _engine_error(orchestrator, task, message, current, exc) from None
        raise Ignore() from None
    except WaitForInput as signal:
        # The stored message is this whole (fused) one: on resume, steps before
        # the waiting one pass their recorded outputs on.
        orchestrator.park(task, steps[current], message, signal)
        raise Ignore() from None
    except Reschedule as signal:
        # ctx.params set by on_retry travel with the message to the next attempt.
        kwargs = {**task.request.kwargs, "params": {current: signal.params}}
        raise task.retry(countdown=signal.delay, max_retries=None, kwargs=kwargs) from None
    except ResultsDatabaseUnavailable as exc:
        raise hand_back(task, exc, exc.step, exc.released) from None
    except Exception as exc:
        raise _engine_error(orchestrator, task, message, current, exc) from None


def _replacement(task: Any, signal: StartMap | StartChild, names: list[str], current: str,
                 run_id: str | None, finalize: bool) -> Any:
    """What replaces this message: the map's chord or the child run, then the rest."""
    orchestrator: WorkerHost = task.orchestrator
    workflow: Workflow = task.workflow
    steps = workflow.validate().steps
    rest = names[names.index(current) + 1:]
    replacement = (child_canvas(orchestrator, steps[current], signal)
                   if isinstance(signal, StartChild) else
                   versions.stamp(map_canvas(steps[current], signal.envelope, signal.items,
                                             finalize=signal.finalize,
                                             claimed_at=orchestrator.store.get_step_started(
                                                 signal.envelope.run_id, current),
                                             celery=orchestrator.celery),
                                  workflow.name, workflow.validate().version))
    carried = task.request.kwargs or {}
    if rest:
        after = _rest_of(orchestrator, workflow, rest, run_id, finalize)
        after["kwargs"].update({key: carried[key] for key in (FORK, JOIN)
                                if carried.get(key) is not None})
        replacement = chain(replacement, after)
    else:  # the fork or join this message carried follows the replacement
        follow = continuation(orchestrator, carried, steps[current].queue)
        replacement = replacement if follow is None else chain(replacement, follow)
    priority = (task.request.delivery_info or {}).get("priority")
    return with_priority(replacement, priority) if isinstance(priority, int) else replacement


@contextmanager
def _step_context(run_id: str | None, bound: BoundStep, task: Any) -> Iterator[None]:
    """The step's fields on every log line inside, then the previous values back.

    Set and reset by token: structlog's ``bound_contextvars`` first copies every context
    variable of the thread to save the old values, a tenth of a one-call run's GIL time
    on a threads worker (py-spy)."""
    tokens = structlog.contextvars.bind_contextvars(
        run_id=run_id, step=bound.spec.task_name, queue=bound.queue, model=bound.spec.model,
        task_id=task.request.id)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def _engine_error(orchestrator: WorkerHost, task: Any, message: Any, step: str,
                  exc: Exception) -> BaseException:
    """What to raise for an unexpected error in a step task: hand back, or fail the run."""
    if is_unavailable(exc):
        return hand_back(task, exc, step, None)
    try:
        orchestrator.fail_run(message, step, exc)
    except Exception as record_exc:
        if is_unavailable(record_exc):
            return hand_back(task, record_exc, step, None)
        log.exception("could not record an engine error; the reconciler must end this run",
                      step=step)
    return exc


def hand_back(task: Any, error: BaseException, step: str, released: int | None, *,
              what: str = "results database") -> BaseException:
    """Give a step whose results DB (or ``what``) is unreachable back to the broker, never
    dropping it.

    The message is sent again with a countdown (doubling up to 30 s, for as long as the
    outage lasts) naming the delivery it released, so its next claim is not counted as
    a crash. If the broker refuses that too, this message is rejected back to its queue.
    """
    handbacks = task.request.retries + 1
    delay = min(HAND_BACK_MAX_DELAY, 2.0 ** min(task.request.retries, 5))
    cause = error.__cause__ if isinstance(error, ResultsDatabaseUnavailable) else error
    args = task.request.args or ()
    run_id = (task.request.kwargs or {}).get("run_id") or (
        Envelope.from_message(args[0]).run_id if args and is_envelope(args[0]) else None)
    log.warning(f"{what} unreachable; step handed back to the broker", run_id=run_id,
                step=step, task_id=task.request.id, retry_in_s=delay, handbacks=handbacks,
                error=f"{type(cause).__name__}: {cause}".splitlines()[0])
    kwargs = dict(task.request.kwargs or {})
    if released is not None:
        kwargs["released"] = {**(kwargs.get("released") or {}), step: released}
    try:
        retry: BaseException = task.retry(countdown=delay, max_retries=None, kwargs=kwargs,
                                          throw=False)
        return retry
    except Reject:
        # Celery could not publish the retry (broker down too): keep this message instead.
        log.warning("broker refused the hand-back; message returned to its queue",
                    step=step, task_id=task.request.id)
        rejected: BaseException = Reject("results database and broker unreachable",
                                         requeue=True)
        return rejected


def _rest_of(orchestrator: WorkerHost, workflow: Workflow, names: list[str],
             run_id: str | None, finalize: bool) -> Any:
    """The signature of fused steps left after one replaced its message (map, child)."""
    head = workflow.validate().steps[names[0]]
    kwargs: dict[str, Any] = {"run_id": run_id, "finalize": finalize,
                              "version": workflow.validate().version}
    if len(names) > 1:
        kwargs["fused"] = names
    return orchestrator.celery.signature(head.spec.task_name, args=(), kwargs=kwargs,
                                         queue=head.queue)
