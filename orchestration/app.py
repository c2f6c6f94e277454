"""Process wiring: settings, the Celery app, the results store and the workflow registry.

``celery -A orchestration worker`` finds the Celery app of the default orchestrator,
built from ``ORCH_*`` settings. Nothing connects at import time: the store opens its
engine on first use, the broker on first publish.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from celery import Celery, chain, signals
from celery.exceptions import Ignore, Reject

from config.celery import celery_config, worker_overrides
from config.settings import Settings
from orchestration import redis_transport
from orchestration.catalogue import load_catalogue
from orchestration.durability import Reconciled, reconcile, redispatch, resume
from orchestration.engine_tasks import (
    DISPATCH_RUNS_TASK,
    EXPIRE_WAITS_TASK,
    approve,
    child_canvas,
    register_engine_tasks,
    resume_signature,
)
from orchestration.envelope import Envelope, is_envelope
from orchestration.errors import (
    ConfigurationError,
    HeldElsewhere,
    Reschedule,
    ResultsDatabaseUnavailable,
    WaitForInput,
    WorkflowDefinitionError,
)
from orchestration.heartbeat import Heartbeat
from orchestration.inprocess import private_memory_transport
from orchestration.logs import CeleryLogFilter, configure_celery_logger, configure_logging
from orchestration.maps import map_canvas, run_chunk
from orchestration.redaction import Redactor
from orchestration.resilience import Resilience
from orchestration.runtime import Delivery, StartChild, StartMap, run_step
from orchestration.status import RunStatus, StepStatus
from orchestration.store.engine import is_unavailable
from orchestration.store.repository import StepOutcome, Store, utcnow
from orchestration.store.workers import Released, WorkerInfo

if TYPE_CHECKING:
    from orchestration.embedded import EmbeddedWorker
    from orchestration.step import BoundStep, StepSpec
    from orchestration.workflow import CompiledWorkflow, Workflow

log = structlog.get_logger("orchestration.app")
HAND_BACK_MAX_DELAY = 30.0  # seconds: the longest countdown of a step handed back


class Orchestrator:
    """One deployment's wiring; workflows register their steps on it as Celery tasks."""

    def __init__(self, settings: Settings | None = None, *, name: str = "orchestration") -> None:
        self.settings = settings or Settings()
        self.redactor = Redactor(self.settings.redact_fields)
        configure_logging(self.settings.log_level, json=self.settings.log_json,
                          redactor=self.redactor)
        # Celery's headers and events get a summary of a step's envelope (publishing.py).
        self.celery = Celery(name, set_as_current=False,
                             amqp="orchestration.publishing:StepAMQP",
                             events="orchestration.publishing:StepEvents",
                             task_cls="orchestration.publishing:StepTask")
        self._apply_settings()
        self.workflows: dict[str, Workflow] = {}
        self._store: Store | None = None
        self._resilience: Resilience | None = None
        # Loaded now so a bad catalogue fails at start-up, not at the first model call.
        self.catalogue = load_catalogue(self.settings.models_file)
        self._embedded: EmbeddedWorker | None = None
        self._lock = threading.Lock()
        self.hostname = f"{socket.gethostname()}:{os.getpid()}"
        # This process's worker instance: steps it claims name it as their holder, and
        # its heartbeat (when it runs a worker) tells the others it is alive. Forked pool
        # children inherit it: they live and die with their main process.
        self.instance_id = uuid.uuid4().hex
        self.heartbeat: Heartbeat | None = None
        self.started_at = utcnow()
        register_engine_tasks(self)

    # -- wiring ------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The results store (opened, and migrated if needed, on first use)."""
        store = self._store
        if store is None:
            with self._lock:
                if self._store is None:
                    self._store = Store(self.settings.database_url)
                    self._store.ensure_schema()
                store = self._store
        return store

    @property
    def resilience(self) -> Resilience:
        """Breakers, rate limits, latencies and providers shared by this process's steps."""
        resilience = self._resilience
        if resilience is None:
            with self._lock:
                if self._resilience is None:
                    self._resilience = Resilience(self.catalogue,
                                                  self.settings.shared_redis_url)
                resilience = self._resilience
        return resilience

    def reset_store(self, *, forked: bool = False) -> None:
        """Drop pooled DB connections; in a forked child, without closing the parent's."""
        if self._store is not None:
            if forked:
                self._store.after_fork()
            else:
                self._store.dispose()

    def register(self, workflow: Workflow) -> None:
        """Make a workflow known to this process (CLI look-ups, embedded recovery)."""
        existing = self.workflows.get(workflow.name)
        if existing is not None and existing is not workflow:
            raise WorkflowDefinitionError(f"two workflows named {workflow.name!r}")
        self.workflows[workflow.name] = workflow

    def register_step(self, workflow: Workflow, spec: StepSpec) -> None:
        """Register a step as the Celery task ``<workflow>.<step>`` on its queue."""
        orchestrator = self

        def execute(task: Any, message: Any, run_id: str | None = None,
                    finalize: bool = False, chunk: dict[str, Any] | None = None,
                    params: dict[str, Any] | None = None,
                    fused: list[str] | None = None,
                    released: dict[str, int] | None = None) -> Any:
            steps = workflow.validate().steps
            store, delivery = orchestrator.store, orchestrator.delivery(task)
            if not is_envelope(message):
                # Never crash the worker on a bad message: record it and drop it.
                log.error("malformed step message rejected", task=spec.task_name,
                          task_id=task.request.id, message_type=type(message).__name__)
                raise Reject("malformed step message", requeue=False)
            names = fused or [spec.name]
            current = names[0]
            try:
                if chunk is not None:
                    with _step_context(run_id, steps[spec.name], task):
                        return run_chunk(steps[spec.name], message, chunk, store, delivery)
                for index, current in enumerate(names):
                    bound = steps[current]
                    last = index == len(names) - 1
                    with _step_context(run_id, bound, task):
                        message = run_step(bound, message, store, delivery,
                                           finalize=finalize and last,
                                           params=(params or {}).get(current),
                                           released=(released or {}).get(current))
                return message
            except (StartMap, StartChild) as signal:
                rest = names[names.index(current) + 1:]
                replacement = (child_canvas(orchestrator, steps[current], signal)
                               if isinstance(signal, StartChild) else
                               map_canvas(steps[current], signal.envelope, signal.items,
                                          finalize=signal.finalize,
                                          claimed_at=store.get_step_started(
                                              signal.envelope.run_id, current),
                                          app=orchestrator.celery))
                if rest:
                    replacement = chain(replacement, _rest_of(orchestrator, workflow, rest,
                                                              run_id, finalize))
                raise task.replace(replacement) from None
            except HeldElsewhere as signal:
                # The worker holding the step continues the run: this message stops here.
                log.info("step held by a live worker under another message; delivery dropped",
                         step=signal.step, task_id=task.request.id)
                raise Ignore() from None
            except WaitForInput as signal:
                # The stored message is this whole (fused) one: on resume, steps before
                # the waiting one pass their recorded outputs on.
                orchestrator.park(task, steps[current], message, signal)
                raise Ignore() from None
            except Reschedule as signal:
                # ctx.params set by on_retry travel with the message to the next attempt.
                kwargs = {**task.request.kwargs, "params": {current: signal.params}}
                raise task.retry(countdown=signal.delay, max_retries=None,
                                 kwargs=kwargs) from None
            except ResultsDatabaseUnavailable as exc:
                raise hand_back(task, exc, exc.step, exc.released) from None
            except Exception as exc:
                raise _engine_error(orchestrator, task, message, current, exc) from None

        execute.__name__ = spec.name
        self.celery.task(name=spec.task_name, bind=True, shared=False, max_retries=None,
                         acks_late=True)(execute)
        # Route by task name too, for anything that sends a step without the compiler.
        routes = dict(self.celery.conf.task_routes or {})
        routes[spec.task_name] = {"queue": workflow.queue_of(spec)}
        self.celery.conf.task_routes = routes

    def delivery(self, task: Any) -> Delivery:
        """What a step task knows about its delivery and may use."""
        return Delivery(worker=task.request.hostname, task_id=task.request.id,
                        inline_limit=self.settings.inline_output_limit,
                        inline_retry_limit=self.settings.inline_retry_limit,
                        services=self.resilience, max_crashes=self.settings.max_crashes,
                        redactor=self._redactor_of(task.name), holder=self.instance_id,
                        db_hold=self.settings.db_outage_hold,
                        dead_after=self.settings.worker_dead_after)

    def _redactor_of(self, task_name: str) -> Redactor:
        workflow = self.workflows.get(task_name.partition(".")[0])
        return workflow.redactor if workflow is not None else self.redactor

    def bound_step(self, task_name: str) -> BoundStep:
        """The bound step of a ``<workflow>.<step>`` task name."""
        workflow_name, _, step = task_name.partition(".")
        return self.workflows[workflow_name].validate().steps[step]

    def park(self, task: Any, bound: BoundStep, message: Any, signal: WaitForInput) -> None:
        """Park a step waiting for a person: record how to continue; arm the timeout."""
        run_id = Envelope.from_message(message).run_id
        now = utcnow()
        deadline = now + timedelta(seconds=signal.timeout) if signal.timeout else None
        # The stored message is redacted like everything stored: a step that waits for a
        # person receives deny-listed inputs as [REDACTED] when it resumes.
        self.store.waits.park(run_id, bound.spec.name, signal.name, deadline=deadline,
                              resume=self._redactor_of(bound.spec.task_name)(
                                  resume_signature(task)), now=now)
        if signal.timeout:
            self.celery.signature(EXPIRE_WAITS_TASK, queue=bound.queue).apply_async(
                countdown=signal.timeout)

    def resume(self, run_id: str, inputs: dict[str, Any] | None = None) -> str:
        """Continue a failed or cancelled run from its last good steps (same run id)."""
        return resume(self, run_id, inputs)

    def reconcile(self, idle_seconds: float | None = None) -> Reconciled:
        """Re-dispatch runs that made no progress; expire overdue human waits."""
        return reconcile(self, idle_seconds=idle_seconds)

    def defer_dispatch(self, workflow: Workflow, run_ids: list[str]) -> None:
        """Have workers send the canvases of written runs (500 runs per message)."""
        compiled = workflow.validate()
        self.before_dispatch(compiled)
        queue = next(iter(compiled.steps.values())).queue
        with self.celery.producer_or_acquire() as producer:
            for start in range(0, len(run_ids), 500):
                self.celery.signature(DISPATCH_RUNS_TASK, args=(
                    workflow.name, run_ids[start:start + 500]), queue=queue).apply_async(
                    producer=producer)

    def approve(self, run_id: str, data: Any, name: str | None = None) -> int:
        """Deliver a person's input to a waiting run (see ``ctx.wait_for_input``)."""
        return approve(self, run_id, data, name)

    def fail_run(self, message: Any, step: str, exc: BaseException) -> None:
        """Record an engine error on the step and end its run ``failed``."""
        run_id = Envelope.from_message(message).run_id
        error = f"engine error in step {step!r}: {type(exc).__name__}: {exc}"
        self.store.record_step(run_id, step, StepOutcome(
            StepStatus.FAILED, error=error, error_type=type(exc).__qualname__))
        self.store.finish_run(run_id, RunStatus.FAILED, error=error,
                              error_type=type(exc).__qualname__)

    # -- worker liveness ---------------------------------------------------------------

    def start_heartbeat(self, name: str, queues: Callable[[], Iterable[str]]) -> Heartbeat:
        """Beat for this process's worker and sweep steps held by dead workers.

        ``queues`` says which queues the worker consumes now (read at every beat).
        """
        with self._lock:
            heartbeat, created = self.heartbeat, False
            if heartbeat is None:
                heartbeat = self.heartbeat = Heartbeat(
                    lambda: self.store,
                    WorkerInfo(self.instance_id, name, socket.gethostname(), os.getpid(), ()),
                    interval=self.settings.heartbeat_interval,
                    dead_after=self.settings.worker_dead_after,
                    workflows=lambda: list(self.workflows), queues=queues,
                    redispatch=self._redispatch_released)
                created = True
        if created:  # outside the lock: the first beat opens the store, which takes it
            heartbeat.start()
        return heartbeat

    def stop_heartbeat(self) -> None:
        """Stop beating (a clean shutdown)."""
        with self._lock:
            heartbeat, self.heartbeat = self.heartbeat, None
        if heartbeat is not None:
            heartbeat.stop()

    def _redispatch_released(self, run: Released) -> None:
        redispatch(self, run.run_id, run.workflow, run.version, run.inputs,
                   why=f"its worker died while running {', '.join(run.steps)}")

    # -- embedded default --------------------------------------------------------------

    def before_dispatch(self, compiled: CompiledWorkflow) -> None:
        """With the embedded broker, make sure the in-process worker serves these queues."""
        if not self.settings.embedded:
            return
        queues = {bound.queue for bound in compiled.steps.values()}
        names = {bound.spec.task_name for bound in compiled.steps.values()}
        self.embedded_worker().serve(queues, names)

    def embedded_worker(self) -> EmbeddedWorker:
        """The in-process worker of the embedded default (started on first use)."""
        if not self.settings.embedded:
            raise ConfigurationError("the in-process worker only runs with the embedded broker")
        with self._lock:
            if self._embedded is None:
                from orchestration.embedded import EmbeddedWorker

                worker = EmbeddedWorker(self)
                worker.start()
                self._embedded = worker
                recover = True
            else:
                recover = False
            worker = self._embedded
        if recover:
            self.start_heartbeat(f"embedded@{self.hostname}", lambda: worker.queues)
            worker.recover()
        return worker

    def _apply_settings(self) -> None:
        config = celery_config(self.settings)
        if self.settings.embedded:
            # Queues of our own: another orchestrator in this process must not share them.
            config["broker_transport"] = private_memory_transport()
        elif urlsplit(self.settings.broker_url or "").scheme == "redis":
            # A broker lost under a worker must be a lost connection, not an AttributeError
            # that ends a threads worker (kombu#582/#970; orchestration/redis_transport.py).
            redis_transport.install()
        self.celery.conf.update(config)

    def reconfigure(self, settings: Settings) -> None:
        """Point this orchestrator at other settings (tests); stops its in-process worker."""
        self.shutdown()
        self.settings = settings
        self.catalogue = load_catalogue(settings.models_file)
        self._resilience = None
        self._apply_settings()
        self._drop_connections()
        self._store = None

    def as_worker(self) -> None:
        """Switch to a worker's settings (``celery worker`` only): patient reconnects."""
        self.celery.conf.update(worker_overrides(self.settings))
        self._drop_connections()

    def _drop_connections(self) -> None:
        # Drop this app's cached connection pools and backend so new settings apply;
        # closing them instead would close kombu pools other apps may share.
        self.celery._pool = None
        self.celery.amqp._producer_pool = None
        self.celery._local.__dict__.pop("backend", None)
        self.celery.__dict__.pop("backend", None)
        self.celery._backend_cache = None  # where a thread-safe backend is kept

    def shutdown(self) -> None:
        """Stop the in-process worker (if any) and close DB connections."""
        with self._lock:
            worker, self._embedded = self._embedded, None
        if worker is not None:
            worker.stop()
        self.stop_heartbeat()
        if self._resilience is not None:
            self._resilience.close()
        self.reset_store()


def _step_context(run_id: str | None, bound: BoundStep, task: Any) -> Any:
    return structlog.contextvars.bound_contextvars(
        run_id=run_id, step=bound.spec.task_name, queue=bound.queue, model=bound.spec.model,
        task_id=task.request.id)


def _engine_error(orchestrator: Orchestrator, task: Any, message: Any, step: str,
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


def hand_back(task: Any, error: BaseException, step: str, released: int | None) -> BaseException:
    """Give a step whose results DB is unreachable back to the broker, never dropping it.

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
    log.warning("results database unreachable; step handed back to the broker",
                run_id=run_id, step=step, task_id=task.request.id, retry_in_s=delay,
                handbacks=handbacks,
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


def _rest_of(orchestrator: Orchestrator, workflow: Workflow, names: list[str],
             run_id: str | None, finalize: bool) -> Any:
    """The signature of fused steps left after one replaced its message (map, child)."""
    head = workflow.validate().steps[names[0]]
    kwargs: dict[str, Any] = {"run_id": run_id, "finalize": finalize}
    if len(names) > 1:
        kwargs["fused"] = names
    return orchestrator.celery.signature(head.spec.task_name, args=(), kwargs=kwargs,
                                         queue=head.queue)


_default: Orchestrator | None = None
_default_lock = threading.Lock()


def default_orchestrator() -> Orchestrator:
    """The process's orchestrator, built from ``ORCH_*`` settings (``-A orchestration`` runs it)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Orchestrator()
    return _default


def _on_celeryd_init(**_: Any) -> None:
    # Sent only by the `celery worker` command, never by the in-process worker.
    orchestrator = default_orchestrator()
    if orchestrator.settings.embedded:
        raise SystemExit(
            "orchestration: no ORCH_BROKER_URL is set, so the broker is the in-process one and a "
            "separate worker would never receive work. Set ORCH_BROKER_URL=redis://... for "
            "workers, or run workflows in one process (the embedded default)."
        )
    orchestrator.as_worker()


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if _default is not None and app is _default.celery:
        try:
            _default.store.ensure_schema()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            # Start anyway (steps are handed back until it answers), but say so loudly.
            log.error("results database unreachable at start-up: this worker will hand "
                      "every step back to the broker until it answers",
                      error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        # Close the migration's connections before the pool forks its children.
        _default.reset_store()


def _on_setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    # Celery configures its own handlers; scrub them, and match ORCH_LOG_JSON.
    if logger is None:
        return
    orchestrator = default_orchestrator()
    as_json = bool(orchestrator.settings.log_json)
    configure_celery_logger(logger, orchestrator.redactor, json=as_json)
    for name in ("celery.app.trace", "celery.worker.strategy", "celery.worker.request"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(CeleryLogFilter(orchestrator.redactor))


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    if _default is None or getattr(sender, "app", None) is not _default.celery:
        return
    task_consumer = getattr(sender, "task_consumer", None)
    queues = sorted(queue.name for queue in getattr(task_consumer, "queues", None) or ())
    _default.start_heartbeat(str(getattr(sender, "hostname", _default.hostname)),
                             lambda: queues)
    if _default.settings.metrics_port:
        from orchestration import metrics

        metrics.serve(_default.settings.metrics_port)


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    # Only the `celery worker` of the default app: an embedded process's per-queue
    # consumers stop (and a dead one is replaced) while it lives; its shutdown() stops it.
    if (_default is not None and getattr(sender, "app", None) is _default.celery
            and not _default.settings.embedded):
        _default.stop_heartbeat()


def _on_worker_process_shutdown(pid: int | None = None, **_: Any) -> None:
    # prometheus-client's multiprocess mode keeps a dead child's gauges unless told.
    if pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _on_worker_process_init(**_: Any) -> None:
    if _default is not None:
        _default.reset_store(forked=True)


signals.celeryd_init.connect(_on_celeryd_init, weak=False)
signals.worker_init.connect(_on_worker_init, weak=False)
signals.worker_process_init.connect(_on_worker_process_init, weak=False)
signals.worker_ready.connect(_on_worker_ready, weak=False)
signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
signals.after_setup_logger.connect(_on_setup_logger, weak=False)
signals.after_setup_task_logger.connect(_on_setup_logger, weak=False)
signals.worker_process_shutdown.connect(_on_worker_process_shutdown, weak=False)
