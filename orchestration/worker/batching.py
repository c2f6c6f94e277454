"""Batched steps on Celery: buffer a run's element, flush batches, recover lost ones.

- **join** (a step task met :class:`JoinBatch`): the element and the run's message are
  written to the buffer (``store/batches.py``) and the message is dropped, so a waiting
  element holds no worker slot. When the buffer holds ``batch_size`` elements a flush is
  sent at once; the first element of a forming batch sends one due ``batch_wait`` s later.
- **flush** (``orchestration.batch_flush``, sent to the step's queue, so a worker that
  has the function runs it): takes due batches under a lease, calls them
  (``execute/batching.py``), records each run's step (at most once: recording is
  conditional), sends each run's message again, then forgets the elements.
- **sweep** (every worker's heartbeat): sends a flush for a step whose batch is overdue
  (a flush message lost with its worker) or whose holder died or lease ran out, and sends
  again the messages of elements recorded by a worker that died before sending them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import structlog

from orchestration.core import metrics
from orchestration.core.clock import utcnow
from orchestration.define.on_error import ESCALATION_INPUT
from orchestration.define.step import BoundStep
from orchestration.define.workflow import Host
from orchestration.execute.attempts import Delivery
from orchestration.execute.batching import JoinBatch, run_batch
from orchestration.execute.live import flush, record_step_finished
from orchestration.execute.runtime import redacted
from orchestration.store.batches import Batches, Taken
from orchestration.worker.engine_tasks import resume_signature
from orchestration.worker.host import WorkerHost

log = structlog.get_logger("orchestration.worker.batching")
BATCH_FLUSH_TASK = "orchestration.batch_flush"
DEFAULT_LEASE = 30.0  # seconds a taken batch is leased without a liveness window
SENDING_LEASE = 60.0  # seconds before a recorded element's message is sent again
MIN_COUNTDOWN = 0.05


class LeaseLost(Exception):
    """Another holder took this batch (its lease had run out): stop calling it."""


def register_batch_tasks(host: WorkerHost) -> None:
    """Register ``orchestration.batch_flush`` (its host set on the task class)."""
    host.celery.task(name=BATCH_FLUSH_TASK, bind=True, shared=False, acks_late=True,
                     orchestrator=host)(batch_flush)


def batches(host: Host) -> Batches:
    """The batch buffer of the host's results store."""
    return Batches(host.store.engine, host.store.reader)


def join_batch(host: WorkerHost, task: Any, bound: BoundStep, signal: JoinBatch) -> None:
    """Buffer the element; send a flush now (batch full) or at its ``batch_wait``."""
    spec = bound.spec
    assert spec.batch_size is not None
    redactor = host.delivery(task).redactor
    resume = resume_signature(task)
    kwargs = signal.kwargs
    if redactor is not None:
        # Stored like everything stored: deny-listed values are kept as [REDACTED].
        resume, kwargs = redactor(resume), redactor(kwargs)
    run_id = signal.run_id
    waiting = batches(host).join(spec.task_name, run_id, spec.name, kwargs=kwargs,
                                 resume=resume, prior_attempts=signal.prior_attempts,
                                 claimed_at=signal.claimed_at, now=utcnow())
    log.debug("element joined a batch", run_id=run_id, step=spec.task_name, waiting=waiting)
    if waiting >= spec.batch_size:
        send_flush(host, bound)
    elif waiting == 1:
        send_flush(host, bound, countdown=spec.batch_wait)


def send_flush(host: Host, bound: BoundStep, countdown: float = 0.0) -> None:
    """Send a flush of ``bound``'s batches to its queue (``countdown``: a timed one)."""
    host.celery.signature(BATCH_FLUSH_TASK, args=(bound.spec.task_name,),
                          kwargs={"timed": bool(countdown)}, queue=bound.queue).apply_async(
        countdown=max(countdown, MIN_COUNTDOWN) if countdown else None)


def batch_flush(task: Any, step: str, timed: bool = False) -> int:
    """Run every batch of ``step`` that is due; how many batch calls were made."""
    host: WorkerHost = task.orchestrator
    return flush_step(host, host.bound_step(step), host.delivery(task), timed=timed)


def flush_step(host: Host, bound: BoundStep, delivery: Delivery, *, timed: bool = False) -> int:
    """Take and run the due batches of one step; schedule a flush for what still waits.

    A flush that ran a batch, or a timed one that came early, sends a timed flush for
    the elements still waiting; a flush sent for a full batch that another flush took
    sends none (the flush that took it does).
    """
    spec = bound.spec
    assert spec.batch_size is not None
    buffer, lease = batches(host), lease_of(delivery)
    holder = delivery.holder or "unknown"
    ran = 0
    while True:
        now = utcnow()
        taken = buffer.take(spec.task_name, size=spec.batch_size, wait=spec.batch_wait,
                            now=now, holder=holder, lease=lease,
                            alive_since=now - timedelta(seconds=delivery.dead_after))
        if taken is None:
            break
        try:
            ran += run_taken(host, bound, taken, delivery, lease)
        except LeaseLost:
            log.warning("batch taken over by another worker (lease ran out)",
                        step=spec.task_name, batch=taken.batch_id)
        except Exception:
            # Not the step failing (run_batch records that): the engine or the results DB.
            # The elements go back to the buffer at once rather than after the lease.
            log.exception("batch call broke off; its elements go back to the buffer",
                          step=spec.task_name, batch=taken.batch_id)
            with contextlib.suppress(Exception):  # the DB down too: the lease covers it
                buffer.release(taken.batch_id, holder=holder)
            raise
    after = buffer.next_due(spec.task_name, spec.batch_wait, utcnow())
    if after is not None and (ran or (timed and after > 0)):
        send_flush(host, bound, countdown=after or MIN_COUNTDOWN)
    return ran


def run_taken(host: Host, bound: BoundStep, taken: Taken, delivery: Delivery,
              lease: float) -> int:
    """Call a taken batch, record each run's step, send the runs' messages on."""
    spec, store, buffer = bound.spec, host.store, batches(host)
    holder = delivery.holder or "unknown"

    def renew() -> None:
        if not buffer.renew(taken.batch_id, holder=holder, now=utcnow(), lease=lease):
            raise LeaseLost(taken.batch_id)

    with renewing(buffer, taken.batch_id, holder, lease):
        results = run_batch(bound, taken.elements, store, delivery, renew=renew)
    sent, parked = list(taken.settled), []
    recording = []
    for element in taken.elements:
        result = results[element.id]
        outcome = redacted(result.outcome, delivery)
        if result.escalated:  # a person decides: the run waits with its message parked
            store.record_step(element.run_id, element.step_name, outcome,
                              worker=delivery.worker)
            store.waits.park(element.run_id, element.step_name, ESCALATION_INPUT,
                             deadline=None, resume=element.resume, now=utcnow())
            parked.append(element)
        else:
            recording.append((element, outcome))
    # Every run's step in one transaction (each recorded at most once, as ever).
    recorded = store.record_steps([(element.run_id, element.step_name, outcome,
                                    element.claimed_at) for element, outcome in recording],
                                  worker=delivery.worker)
    now = utcnow()
    for (element, outcome), fresh in zip(recording, recorded, strict=True):
        if fresh:
            latency = (now - element.claimed_at).total_seconds() if element.claimed_at \
                else None
            metrics.record_step(spec.workflow, spec.name, outcome.model or spec.model,
                                outcome.status.value, len(outcome.attempts), latency,
                                outcome.cost_usd)
            if delivery.stream is not None:  # one wait for all, below
                record_step_finished(delivery.stream, element.run_id, element.step_name,
                                     outcome, latency, wait=False)
        sent.append(element)
    if delivery.stream is not None and recording:
        flush(delivery.stream)  # every run's events stored before its message goes on
    buffer.done([element.id for element in sent], now=utcnow(), lease=SENDING_LEASE)
    buffer.forget([element.id for element in parked])
    send_on(host, sent)
    log.info("batch called", step=spec.task_name, elements=len(taken.elements),
             settled=len(taken.settled))
    return 1 if taken.elements else 0


def send_on(host: Host, elements: list[Any]) -> None:
    """Send the runs' parked messages again, then forget their elements."""
    for element in elements:
        host.celery.signature(element.resume).apply_async()
    batches(host).forget([element.id for element in elements])


def sweep_batches(host: Host) -> None:
    """Heartbeat chore: flush overdue or orphaned batches; send messages left unsent."""
    steps = {bound.spec.task_name: bound for workflow in list(host.workflows.values())
             for bound in workflow.validate().steps.values()
             if bound.spec.batch_size is not None}
    if not steps:
        return
    buffer, now = batches(host), utcnow()
    interval = host.settings.heartbeat_interval
    # Overdue by more than a couple of beats: the flush that was due is lost.
    slack = max(5.0, 2 * interval)
    due = buffer.due_steps({name: bound.spec.batch_wait + slack
                            for name, bound in steps.items()}, now=now,
                           alive_since=now - timedelta(seconds=host.settings.worker_dead_after))
    for name in due:
        bound = steps[name]
        workflow = host.workflows[bound.spec.workflow]
        host.before_dispatch(workflow.validate())  # the embedded worker serves its queue
        log.warning("batch overdue or its worker died; sending a flush", step=name)
        send_flush(host, bound)
    unsent = buffer.unsent(now, lease=SENDING_LEASE)
    if unsent:
        log.warning("sending again the messages of batched runs whose sender died",
                    runs=len(unsent))
        send_on(host, unsent)


def lease_of(delivery: Delivery) -> float:
    """How long a taken batch is leased: the worker liveness window (renewed meanwhile)."""
    return delivery.dead_after if delivery.dead_after > 0 else DEFAULT_LEASE


@contextlib.contextmanager
def renewing(buffer: Batches, batch_id: str, holder: str, lease: float) -> Iterator[None]:
    """Renew a held batch's lease every quarter lease while the block runs.

    A holder that stops renewing (its process killed, be it a pool child whose main
    process lives on) loses the batch once the lease lapses; another worker takes it.
    """
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(lease / 4):
            try:
                if not buffer.renew(batch_id, holder=holder, now=utcnow(), lease=lease):
                    return
            except Exception as exc:  # the DB down: the next beat tries again
                log.warning("could not renew a batch's lease", batch=batch_id,
                            error=f"{type(exc).__name__}: {exc}".splitlines()[0])

    thread = threading.Thread(target=keep, name="orchestration-batch-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
