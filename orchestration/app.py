"""Process wiring: settings, the Celery app, the results store and the workflow registry.

``celery -A orchestration worker`` finds the Celery app of the default orchestrator,
built from ``ORCH_*`` settings. Nothing connects at import time: the store opens its
engine on first use, the broker on first publish.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from celery import Celery

from orchestration.core.clock import utcnow
from orchestration.core.completion import Completions, LocalCompletions
from orchestration.core.envelope import Envelope
from orchestration.core.logs import configure_logging
from orchestration.core.redaction import Redactor
from orchestration.core.results import RunHandle
from orchestration.core.settings import Settings
from orchestration.core.status import RunStatus, StepStatus
from orchestration.core.stream_events import WAITING_FOR_INPUT, event
from orchestration.define.host import current_default, default_host, install_default
from orchestration.errors import (
    ConfigurationError,
    WaitForInput,
    WorkflowDefinitionError,
)
from orchestration.execute.live import flush, run_finished, safe_append
from orchestration.execute.permits import LocalPermits, Permits, RedisPermits, Renewer
from orchestration.execute.runtime import Delivery
from orchestration.llm.catalogue import load_catalogue
from orchestration.llm.resilience import Resilience
from orchestration.observe import tracing
from orchestration.pipelines import load_pipelines
from orchestration.store.completion_redis import RedisCompletions
from orchestration.store.joins import Joins, joins_for
from orchestration.store.repository import StepOutcome, Store
from orchestration.store.run_stream import RedisRunStream, RunStream, SQLRunStream
from orchestration.store.workers import Released, WorkerInfo
from orchestration.submit import permits as permit_waits
from orchestration.submit import submission
from orchestration.submit.durability import Reconciled, reconcile, redispatch, resume
from orchestration.submit.waits import approve
from orchestration.worker import redis_transport, step_task, versions
from orchestration.worker import signals as worker_signals
from orchestration.worker.batching import register_batch_tasks, sweep_batches
from orchestration.worker.celery_config import celery_config, worker_overrides
from orchestration.worker.embedded import EmbeddedWorker
from orchestration.worker.engine_tasks import (
    DISPATCH_RUNS_TASK,
    EXPIRE_WAITS_TASK,
    register_engine_tasks,
    resume_signature,
)
from orchestration.worker.forks import register_fork_tasks
from orchestration.worker.heartbeat import Heartbeat
from orchestration.worker.inprocess import private_memory_transport

if TYPE_CHECKING:
    from orchestration.define.compiling import CompiledWorkflow
    from orchestration.define.step import BoundStep, StepSpec
    from orchestration.define.workflow import Workflow

log = structlog.get_logger("orchestration.app")


class Orchestrator:
    """One deployment's wiring; workflows register their steps on it as Celery tasks."""

    def __init__(self, settings: Settings | None = None, *, name: str = "orchestration") -> None:
        self.settings = settings or Settings()
        self.redactor = Redactor(self.settings.redact_fields)
        configure_logging(self.settings.log_level, json=self.settings.log_json,
                          redactor=self.redactor)
        # Celery's headers and events get a summary of a step's envelope (worker/publishing.py).
        self.celery = Celery(name, set_as_current=False,
                             amqp="orchestration.worker.publishing:StepAMQP",
                             events="orchestration.worker.publishing:StepEvents",
                             task_cls="orchestration.worker.publishing:StepTask")
        self._apply_settings()
        self.workflows: dict[str, Workflow] = {}
        self._store: Store | None = None
        self._resilience: Resilience | None = None
        self._joins: tuple[Settings, Joins | None] | None = None
        self._permits: Permits | None = None
        self._renewer: Renewer | None = None
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
        register_batch_tasks(self)
        register_fork_tasks(self, step_task.execute_step)
        tracing.configure(self.settings)  # OpenTelemetry, only when configured

    # -- wiring ------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The results store (opened, and migrated if needed, on first use)."""
        store = self._store
        if store is None:
            if self.settings.shared_redis_url:
                self.resilience  # noqa: B018 - built first: it takes self._lock too
            with self._lock:
                if self._store is None:
                    self._store = Store(self.settings.database_url,
                                        group_commit=self.settings.group_commit)
                    self._store.ensure_schema()
                    # Runs' streams: in the shared Redis if any, else in the results DB.
                    self._store.run_stream = self._redis_stream() \
                        if self.settings.shared_redis_url else SQLRunStream(
                            self._store.engine, self._store.reader,
                            maxlen=self.settings.stream_maxlen, ttl=self.settings.stream_ttl)
                    self._store.completions = self._completions()
                store = self._store
        return store

    @property
    def run_stream(self) -> RunStream:
        """Runs' live event streams: Redis Streams with a shared Redis, else the results DB."""
        return self.store.run_stream

    def _completions(self) -> Completions:
        """Run completion notices: through the shared Redis, or within this process (the
        embedded worker ends every run here; a separate worker without Redis: polling)."""
        url = self.settings.shared_redis_url
        if url:
            return RedisCompletions(url, self.resilience.redis,
                                    timeout=self.settings.redis_timeout)
        return LocalCompletions(complete=self.settings.embedded)

    def _redis_stream(self) -> RunStream:
        redis_client = self.resilience.redis
        assert redis_client is not None  # a shared Redis is configured
        return RedisRunStream(redis_client, maxlen=self.settings.stream_maxlen,
                              ttl=self.settings.stream_ttl,
                              max_block=self.settings.redis_timeout / 2)

    @property
    def joins(self) -> Joins | None:
        """Where parallel branches join (store/joins.py); None: groups are chords."""
        if self._joins is None or self._joins[0] is not self.settings:
            client = self.resilience.redis if self.settings.shared_redis_url else None
            self._joins = (self.settings, joins_for(self.settings, client))
        return self._joins[1]

    @property
    def resilience(self) -> Resilience:
        """Breakers, rate limits, latencies and providers shared by this process's steps."""
        resilience = self._resilience
        if resilience is None:
            with self._lock:
                if self._resilience is None:
                    self._resilience = Resilience(self.catalogue,
                                                  self.settings.shared_redis_url,
                                                  self.settings.redis_timeout)
                resilience = self._resilience
        return resilience

    @property
    def permits(self) -> Permits:
        """max_parallel permits: in the shared Redis, or this process's memory (embedded)."""
        permits = self._permits
        if permits is None:
            client = self.resilience.redis
            if client is None and not self.settings.embedded:
                raise ConfigurationError(
                    "max_parallel needs permits shared by every worker: set ORCH_REDIS_URL "
                    "(or use a Redis broker); without it each process would count alone")
            with self._lock:
                if self._permits is None:
                    lease = self.settings.permit_lease
                    self._permits = (RedisPermits(client, lease) if client is not None
                                     else LocalPermits(lease))
                permits = self._permits
        return permits

    @property
    def renewer(self) -> Renewer:
        """Renews the permits this process's running steps hold."""
        renewer = self._renewer
        if renewer is None:
            permits = self.permits
            with self._lock:
                if self._renewer is None:
                    self._renewer = Renewer(permits)
                renewer = self._renewer
        return renewer

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
        step_task.register_step(self, workflow, spec)

    def load_pipelines(self) -> list[Workflow]:
        """Load every pipeline file of ``ORCH_PIPELINES`` as a workflow ([] when unset).

        Workers call this at start-up, after importing ``ORCH_IMPORTS`` (a pipeline may
        route to those workflows), and so does the CLI; loading unchanged files again
        returns the workflows already registered. A bad file raises PipelineError.
        Models are not checked against this process's catalogue here (a worker for other
        models may run with a catalogue of its own); ``orchestrate pipeline validate``
        checks them.
        """
        folder = self.settings.pipelines
        return [] if folder is None else load_pipelines(folder, orchestrator=self,
                                                        check_models=False)

    # -- submitting (orchestration/submit/submission.py) -------------------------------

    def submit(self, workflow: Workflow, inputs: dict[str, Any], *,
               idempotency_key: str | None = None, priority: int | None = None) -> RunHandle:
        """Validate, write and enqueue one run of ``workflow``."""
        return submission.submit(self, workflow, inputs, idempotency_key=idempotency_key,
                                 priority=priority)

    def submit_many(self, workflow: Workflow, batch: Iterable[Mapping[str, Any]], *,
                    defer: bool = False, priority: int | None = None) -> list[RunHandle]:
        """Validate, write and enqueue many runs of ``workflow``."""
        return submission.submit_many(self, workflow, batch, defer=defer, priority=priority)

    def dispatch(self, workflow: Workflow, run_id: str, inputs: dict[str, Any], *,
                 stored: Any = None) -> None:
        """Enqueue a written run's canvas."""
        submission.dispatch(self, workflow, run_id, inputs, stored=stored)

    def canvas(self, workflow: Workflow, run_id: str, inputs: dict[str, Any], *,
               stored: Any = None, followed: bool = False) -> Any:
        """The Celery canvas of one run of ``workflow`` (not sent)."""
        return submission.canvas(self, workflow, run_id, inputs, stored=stored,
                                 followed=followed)

    def create_child(self, workflow: Workflow, parent_run: str, parent_step: str,
                     inputs: dict[str, Any]) -> str:
        """Write a child run of ``parent_run``; returns its id."""
        return submission.create_child(self, workflow, parent_run, parent_step, inputs)

    def delivery(self, task: Any) -> Delivery:
        """What a step task knows about its delivery and may use."""
        return Delivery(worker=task.request.hostname, task_id=task.request.id,
                        inline_limit=self.settings.inline_output_limit,
                        inline_retry_limit=self.settings.inline_retry_limit,
                        services=self.resilience, max_crashes=self.settings.max_crashes,
                        redactor=self._redactor_of(task.name), holder=self.instance_id,
                        db_hold=self.settings.db_outage_hold,
                        dead_after=self.settings.worker_dead_after,
                        stream=self.run_stream if self.settings.stream else None,
                        stream_in_process=self.settings.embedded,
                        async_threads=self.settings.async_threads,
                        event_loop=self.settings.event_loop)

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
        if self.settings.stream:
            safe_append(self.run_stream, run_id, [event(
                WAITING_FOR_INPUT, run_id, step=bound.spec.name, name=signal.name)])

    def resume(self, run_id: str, inputs: dict[str, Any] | None = None, *,
               upgrade: bool = False) -> RunHandle:
        """Continue a failed or cancelled run from its last good steps; its handle (same id).

        ``upgrade``: a run of another version moves to this process's (same steps only).
        """
        return RunHandle(resume(self, run_id, inputs, upgrade=upgrade), self.store)

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
        if self.settings.stream:
            run_finished(self.run_stream, run_id, RunStatus.FAILED.value,
                         self.redactor.text(error), self.store.run_cost(run_id))

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
                    redispatch=self._redispatch_released, wake=self._wake_permit_waiters,
                    batches=lambda: sweep_batches(self),
                    versions=lambda: {name: [version] for name, version
                                      in versions.carried(self.workflows.values()).items()},
                    parked=lambda queues: versions.sweep(self, queues))
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

    def _wake_permit_waiters(self) -> None:
        if self._permits is not None or any(
                workflow.limit is not None or any(step.limit is not None
                                                  for step in workflow.steps.values())
                for workflow in self.workflows.values()):
            permit_waits.sweep(self)

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
            # that ends a threads worker (kombu#582/#970; orchestration/worker/redis_transport.py).
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
            if self._store is not None:  # what its steps queued and did not wait for
                flush(self._store.run_stream)
        self.stop_heartbeat()
        if self._resilience is not None:
            self._resilience.close()
        if self._store is not None:
            self._store.completions.close()
        self.reset_store()


def default_orchestrator() -> Orchestrator:
    """The process's orchestrator, built from ``ORCH_*`` settings (``-A orchestration`` runs it)."""
    orchestrator = default_host()
    if not isinstance(orchestrator, Orchestrator):
        raise ConfigurationError(f"the default host is a {type(orchestrator).__name__}, "
                                 "not an Orchestrator")
    return orchestrator


def _default() -> Orchestrator | None:
    """The default orchestrator if one was built (signal handlers never build one)."""
    orchestrator = current_default()
    return orchestrator if isinstance(orchestrator, Orchestrator) else None


# Names what builds the default; nothing is built (nor connected) until first use.
install_default(Orchestrator)


def install_signals() -> None:
    """Connect the worker-process signal handlers for the default orchestrator (once).

    Importing this module connects nothing: ``orchestration.celery`` (what
    ``celery -A orchestration`` loads) calls this, so a process that only submits runs
    never has handlers on Celery's signals.
    """
    worker_signals.install(current=_default, build=default_orchestrator)
