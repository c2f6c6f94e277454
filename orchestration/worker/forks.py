"""Forks and joins in the step task: parallel branches without a chord (compile/canvas.py).

After a delivery has run its steps:

- with ``fork`` (the message before a parallel group): send every branch with its
  ``join``, except one on this message's queue, which runs here, in this delivery;
- with ``join`` (a branch's message): arrive at the join (store/joins.py). The arrival
  that completes it continues with the body: here when the body is one step message on
  this queue, else by sending the body.

What runs here runs under a :class:`~orchestration.worker.standin.StandIn` of its own
message: its own claim, record, retries and replacement, exactly as if it had been
sent. One thread drives it all in order (a queue of stand-ins, not recursion): a run of
a hundred forks in a row does not nest a hundred deliveries on the stack.

Crashes: the delivery is acknowledged only once everything it runs here is done or
sent. A worker that dies has it delivered again; its recorded steps pass their outcomes
on, the fork sends its branches again (each branch's claim makes a duplicate a no-op)
and the join is arrived at again (arrivals are idempotent; a complete join tells every
arrival, so the body is continued; its claim keeps it from running twice).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
from celery import Signature
from celery.exceptions import Reject

from orchestration.compile.canvas import FORK, JOIN, fusible, join_spec, with_join
from orchestration.compile.packing import BUNDLE_TASK, bundle
from orchestration.store.joins import JoinsUnavailable
from orchestration.worker.packs import run_each
from orchestration.worker.standin import StandIn, run_alone, send

__all__ = ["CONTINUE_TASK", "after_step", "continuation", "register_fork_tasks", "run_bundle"]

log = structlog.get_logger("orchestration.worker.forks")
CONTINUE_TASK = "orchestration.continue"
Execute = Callable[..., Any]
_local = threading.local()


def after_step(task: Any, envelope: Any, *, fork: dict[str, Any] | None,
               join: dict[str, Any] | None, execute: Execute) -> None:
    """Do what follows a delivery's steps: its join, or its fork (see the module).

    Raises :class:`JoinsUnavailable` when the join state cannot be reached (the delivery
    is handed back and arrives again later), ``Reject(requeue=True)`` when the broker
    refuses a branch or the body.
    """
    if join is not None:
        _arrive(task, envelope, join, execute)
    elif fork is not None:
        _fork(task, envelope, fork, execute)


def _fork(task: Any, envelope: Any, fork: dict[str, Any], execute: Execute) -> None:
    celery = task.orchestrator.celery
    size = len(fork["branches"])
    branches = [with_join(celery.signature(branch),
                          join_spec(fork["id"], index, size, fork["body"]))
                for index, branch in enumerate(fork["branches"])]
    queue = _queue(task)
    here = next((index for index, branch in enumerate(branches)
                 if _runs_here(task, branch, queue)), None)
    others = bundle([branch for index, branch in enumerate(branches) if index != here],
                    task.orchestrator.settings.pack_size, celery, args=(envelope,))
    if others:
        send(lambda: _publish(celery, others))
    if here is not None:
        _run_here(task, branches[here], (envelope,), f"b{here}", execute)


def _arrive(task: Any, envelope: Any, join: dict[str, Any], execute: Execute) -> None:
    joins = task.orchestrator.joins
    if joins is None:
        raise JoinsUnavailable(f"join {join['id']}: this process has no join state (a "
                               "branch sent by a deployment with a shared Redis: set "
                               "ORCH_REDIS_URL here too)")
    parts = joins.arrive(join["id"], join["index"], join["size"], envelope)
    if parts is None:
        return
    body = task.orchestrator.celery.signature(join["body"])
    if _runs_here(task, body, _queue(task)):
        _run_here(task, body, (parts,), "join", execute)
    else:
        send(lambda: body.apply_async((parts,)))


def _publish(celery: Any, signatures: list[Signature]) -> None:
    with celery.producer_or_acquire() as producer:
        for signature in signatures:
            signature.apply_async(producer=producer)


def _queue(task: Any) -> str | None:
    """The queue of the step(s) this delivery ran (fused steps share one), or the one
    this delivery came from (``orchestration.continue``)."""
    workflow, step = getattr(task, "workflow", None), getattr(task, "step_name", None)
    if workflow is not None and step is not None:
        queue: str = workflow.validate().steps[step].queue
        return queue
    routing: str | None = (task.request.delivery_info or {}).get("routing_key")
    return routing


def _runs_here(task: Any, signature: Signature, queue: str | None) -> bool:
    """One step message (not a chain, not an engine task) of a fusible step on ``queue``."""
    if queue is None or signature.subtask_type or signature.options.get("queue") != queue:
        return False
    target = task.orchestrator.celery.tasks.get(signature.task)
    workflow = getattr(target, "workflow", None)
    if workflow is None or getattr(target, "step_name", None) is None:
        return False
    bound = workflow.validate().steps[target.step_name]
    return workflow.limit is None and fusible(bound)


def _run_here(task: Any, signature: Signature, args: tuple[Any, ...], suffix: str,
              execute: Execute) -> None:
    """Run ``signature``'s message in this delivery, after what runs here already."""
    target = task.orchestrator.celery.tasks[signature.task]
    stand_in = StandIn(task, suffix, args, dict(signature.kwargs), target=target)
    pending: deque[StandIn] | None = getattr(_local, "pending", None)
    if pending is not None:  # a driver below on this thread's stack runs it next
        pending.append(stand_in)
        return
    _local.pending = pending = deque([stand_in])
    try:
        while pending:
            stand_in = pending.popleft()
            if not run_alone(stand_in, execute):  # the whole delivery goes back
                raise Reject(f"{stand_in.name} could not be sent on", requeue=True)
    finally:
        _local.pending = None


def continuation(host: Any, kwargs: dict[str, Any], queue: str) -> Signature | None:
    """What continues a fork or a join whose message was replaced (a map, a child run).

    The replacement passes the step's envelope on to this message, which does what the
    replaced one would have done after its steps.
    """
    carried = {key: kwargs[key] for key in (FORK, JOIN) if kwargs.get(key) is not None}
    if not carried:
        return None
    signature: Signature = host.celery.signature(
        CONTINUE_TASK, args=(), kwargs={"run_id": kwargs.get("run_id"), **carried},
        queue=queue, ignore_result=True)
    return signature


def run_bundle(task: Any, messages: Any, execute: Execute, concurrency: int) -> None:
    """Run every step message of a bundle (compile/packing.py) as its own, ``concurrency``
    at a time, as a pack's runs are (worker/packs.py).

    Raises ``Reject(requeue=True)`` when one could be neither run nor sent on alone: the
    bundle comes back whole (what was recorded passes its outcome on).
    """
    celery = task.orchestrator.celery
    refused: list[int] = []
    delivery = task.request  # read here: on the runners' threads it is empty

    def one(index: int, item: Any) -> None:
        name, args, kwargs = item if isinstance(item, list | tuple) and len(item) == 3 \
            else (None, None, None)
        target = celery.tasks.get(name) if isinstance(name, str) else None
        if getattr(target, "step_name", None) is None or not isinstance(args, list) \
                or not isinstance(kwargs, dict):
            # The others go on; the run this message was for is re-sent by the reconciler.
            log.error("malformed message in a bundle dropped", task_id=task.request.id,
                      index=index, step=name if isinstance(name, str) else None)
            return
        if not run_alone(StandIn(task, index, tuple(args), kwargs, target=target,
                                 outer=delivery), execute):
            refused.append(index)  # neither run nor sent on: the bundle is returned whole

    run_each(messages if isinstance(messages, list) else [], one, concurrency)
    if refused:
        raise Reject(f"{len(refused)} message(s) of the bundle could not be sent on",
                     requeue=True)


def register_fork_tasks(host: Any, execute: Execute) -> None:
    """Register ``orchestration.continue`` (see :func:`continuation`) and
    ``orchestration.bundle`` (see :func:`run_bundle`)."""

    def run_messages(task: Any, messages: Any = None) -> None:
        run_bundle(task, messages, execute, host.settings.pack_concurrency)

    host.celery.task(name=BUNDLE_TASK, bind=True, shared=False, acks_late=True,
                     orchestrator=host)(run_messages)

    def continue_after(task: Any, envelope: Any, run_id: str | None = None,
                       fork: dict[str, Any] | None = None,
                       join: dict[str, Any] | None = None) -> None:
        try:
            after_step(task, envelope, fork=fork, join=join, execute=execute)
        except JoinsUnavailable as exc:
            log.warning("join state unreachable; continuation sent again later",
                        run_id=run_id, error=str(exc), retries=task.request.retries)
            raise task.retry(countdown=min(30.0, 2.0 ** min(task.request.retries, 5)),
                             max_retries=None) from None

    host.celery.task(name=CONTINUE_TASK, bind=True, shared=False, acks_late=True,
                     orchestrator=host)(continue_after)
