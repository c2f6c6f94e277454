"""The embedded default: Celery workers on the in-process broker, inside this process.

With no ``ORCH_BROKER_URL``, ``submit`` starts this worker on first use. Like a
deployment with one worker per queue, every queue gets its own consumer and its own
threads pool (``ORCH_EMBEDDED_CONCURRENCY`` threads, or the queue's entry in
``ORCH_EMBEDDED_QUEUE_CONCURRENCY``): hung steps on one queue never hold up another.
A queue that appears later (a workflow defined after the start) gets a consumer of its
own; the running ones are never restarted, because the in-process broker drops the
messages a stopped consumer had taken. A consumer that dies is replaced, and a
reconciler thread re-dispatches any run that still makes no progress.

Run state still goes to the results DB (SQLite under ``./var/``), so a run survives the
process: when the next embedded process starts, it re-dispatches runs left unfinished
by a process that died (completed steps are not re-run).
"""

from __future__ import annotations

import fcntl
import logging
import threading
from pathlib import Path
from typing import IO, Any

import structlog
from celery.worker import WorkController
from celery.worker.consumer.tasks import Tasks

from orchestration.core import metrics
from orchestration.core.status import RunStatus
from orchestration.errors import ConfigurationError
from orchestration.store.engine import is_sqlite
from orchestration.submit.durability import redacted_loss
from orchestration.worker.host import WorkerHost

log = structlog.get_logger("orchestration.worker.embedded")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
RESTART_DELAY = 1.0  # seconds before a consumer that died is replaced

# Celery reads the queues a consumer takes from the app, which every queue's consumer
# here shares: choosing the queue and creating the consumer must not interleave.
_SELECT_LOCK = threading.Lock()


class _Controller(WorkController):  # type: ignore[misc]
    """A WorkController for one queue that reports when its consumer is ready."""

    def __init__(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self.queue = queue
        self.ready = threading.Event()
        super().__init__(*args, queues=[queue], **kwargs)
        # Celery's task step consumes the queues selected on the app, which every
        # queue's controller here shares: select this one's queue as it starts.
        # (Replacing the step class instead would break the steps that require it.)
        step = next(step for step in self.consumer.blueprint.order if isinstance(step, Tasks))
        start = step.start

        def start_on_own_queue(consumer: Any) -> None:
            with _SELECT_LOCK:
                consumer.app.amqp.queues.select([queue])
                start(consumer)

        step.start = start_on_own_queue

    def setup_queues(self, include: Any, exclude: Any = None) -> None:
        with _SELECT_LOCK:
            super().setup_queues(include, exclude)

    def on_consumer_ready(self, consumer: Any) -> None:
        self.ready.set()


class _QueueWorker:
    """One queue's consumer and threads pool, in a thread; replaced if it dies."""

    def __init__(self, app: Any, queue: str, concurrency: int, hostname: str) -> None:
        self.queue, self.concurrency = queue, concurrency
        self._options = {"app": app, "pool": "threads", "concurrency": concurrency,
                         "hostname": hostname,
                         "loglevel": logging.INFO, "without_heartbeat": True,
                         "without_mingle": True, "without_gossip": True,
                         "optimization": "fair"}
        self.controller: _Controller | None = None
        self._built = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"orchestration-embedded[{queue}]")

    def start(self) -> None:
        """Start consuming; raises ConfigurationError if not ready in time."""
        self._thread.start()
        self._built.wait(START_TIMEOUT)
        controller = self.controller
        for _ in range(int(START_TIMEOUT / 0.05)):  # unless its thread ended (a failed start)
            if controller is None or controller.ready.wait(0.05) or not self._thread.is_alive():
                break
        if controller is None or not controller.ready.is_set():
            self.stop()
            raise ConfigurationError(f"the in-process worker for queue {self.queue!r} did not "
                                     f"start within {START_TIMEOUT:g} s")

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                controller = self.controller = _Controller(self.queue, **self._options)
            except Exception:
                log.exception("could not start the in-process worker of a queue",
                              queue=self.queue)
                if not self._built.is_set():
                    return  # the first start: start() reports it
                controller = None
            finally:
                self._built.set()
            if controller is not None:
                if self._stopping.is_set():  # stop() came before it started
                    return
                controller.start()  # returns when stopped, or when its consumer died
                if self._stopping.is_set():
                    return
                # The messages it had taken are lost with it (the reconciler re-dispatches
                # their runs); without a consumer, every later run on the queue would wait.
                log.error("the in-process worker of a queue stopped unexpectedly; "
                          "replacing it", queue=self.queue, exitcode=controller.exitcode)
            if self._stopping.wait(RESTART_DELAY):
                return

    def update_strategies(self) -> None:
        """Make tasks registered since the start known to the consumer."""
        controller = self.controller
        consumer = controller.consumer if controller is not None else None
        if consumer is not None:
            consumer.update_strategies()

    def knows(self, task_names: set[str]) -> bool:
        """True when the consumer has a strategy for every one of these tasks."""
        controller = self.controller
        consumer = controller.consumer if controller is not None else None
        return consumer is None or task_names <= consumer.strategies.keys()

    def stop(self) -> None:
        """Warm shutdown: running steps finish; waits up to STOP_TIMEOUT."""
        self._stopping.set()
        controller = self.controller
        if controller is not None:
            # Stopping a controller before its blueprint runs does nothing: let it start.
            for _ in range(int(START_TIMEOUT / 0.05)):
                if controller.ready.wait(0.05) or not self._thread.is_alive():
                    break
            controller.stop(in_sighandler=False, exitcode=0)
            # The in-process broker's consumer waits up to 2 s for a message before it
            # looks at its state again: wake it so it sees the stop now.
            wakeup = getattr(self._options["app"].conf.broker_transport, "wakeup", None)
            if wakeup is not None:
                wakeup.interrupt()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(STOP_TIMEOUT)


class EmbeddedWorker:
    """Celery workers running in background threads of this process, one per queue."""

    def __init__(self, orchestrator: WorkerHost) -> None:
        self._orchestrator = orchestrator
        self._workers: dict[str, _QueueWorker] = {}
        self._queues: frozenset[str] = frozenset()
        self._lock = threading.RLock()
        self._owner_lock: IO[str] | None = None
        self._stopping = threading.Event()
        self._reconciler: threading.Thread | None = None

    @property
    def queues(self) -> frozenset[str]:
        """The queues consumed now."""
        return self._queues

    def concurrency(self, queue: str) -> int:
        """Threads of a queue's pool: its own setting, else ORCH_EMBEDDED_CONCURRENCY."""
        settings = self._orchestrator.settings
        return settings.embedded_queue_concurrency.get(queue, settings.embedded_concurrency)

    def start(self, queues: set[str] | None = None) -> None:
        """Start consuming the given queues plus those of every registered workflow."""
        orchestrator = self._orchestrator
        wanted = set(queues or ()) | {orchestrator.settings.default_queue}
        for workflow in list(orchestrator.workflows.values()):
            try:
                wanted |= {bound.queue for bound in workflow.validate().steps.values()}
            except Exception:  # an invalid workflow fails on its own submit, not here
                continue
        with self._lock:
            app = orchestrator.celery
            app.finalize()
            # Celery's in-process task tracer resolves tasks through the current app.
            app.set_current()
            app.set_default()
            self._add_queues(wanted)
            if self._reconciler is None:
                self._reconciler = threading.Thread(target=self._reconcile_forever,
                                                    daemon=True,
                                                    name="orchestration-embedded-reconcile")
                self._reconciler.start()
            if orchestrator.settings.metrics_port:
                metrics.serve(orchestrator.settings.metrics_port)

    def _add_queues(self, queues: set[str]) -> None:
        """Start a consumer for each queue not consumed yet (caller holds the lock)."""
        app = self._orchestrator.celery
        for queue in sorted(queues - self._workers.keys()):
            worker = _QueueWorker(app, queue, self.concurrency(queue),
                                  f"embedded@{self._orchestrator.hostname}")
            # One at a time: each controller's start selects its queue on the shared app.
            worker.start()
            self._workers[queue] = worker
            self._queues = frozenset(self._workers)

    def serve(self, queues: set[str], task_names: set[str] | None = None) -> None:
        """Make sure these queues are consumed and these tasks known to the workers.

        New tasks (a workflow defined after the start) are added to the running
        consumers; a new queue gets a consumer of its own, and no running one stops.
        """
        names = task_names or set()
        workers = list(self._workers.values())
        if queues <= self._queues and all(worker.knows(names) for worker in workers):
            return
        with self._lock:
            if self._stopping.is_set():
                return
            self._add_queues(queues)
            for worker in self._workers.values():
                if not worker.knows(names):
                    worker.update_strategies()

    def stop(self) -> None:
        """Stop every worker; messages not yet run stay in the in-process broker."""
        with self._lock:
            self._stopping.set()
            stoppers = [threading.Thread(target=worker.stop, daemon=True)
                        for worker in self._workers.values()]
            for stopper in stoppers:  # warm shutdowns, side by side
                stopper.start()
            for stopper in stoppers:
                stopper.join(STOP_TIMEOUT)
            self._workers.clear()
            self._queues = frozenset()
            if self._owner_lock is not None:
                self._owner_lock.close()
                self._owner_lock = None

    def _reconcile_forever(self) -> None:
        """Every ORCH_RECONCILE_INTERVAL, re-dispatch runs whose messages were lost."""
        orchestrator = self._orchestrator
        while not self._stopping.wait(orchestrator.settings.reconcile_interval):
            try:
                orchestrator.reconcile()
            except Exception:
                log.exception("the in-process reconciler failed; it tries again next interval")

    def recover(self) -> int:
        """Re-dispatch runs left unfinished by an embedded process that died.

        Only the process that holds the embedded owner lock recovers, so two live
        embedded processes sharing a database never re-dispatch each other's runs.
        """
        orchestrator = self._orchestrator
        url = orchestrator.settings.database_url
        if not is_sqlite(url) or not self._acquire_owner_lock(url):
            return 0
        # Runs this process created are its own, live ones: only older ones are stranded.
        stranded = orchestrator.store.unfinished_runs(
            workflows=list(orchestrator.workflows), created_before=orchestrator.started_at
        )
        for run_id, workflow_name, version, inputs in stranded:
            workflow = orchestrator.workflows[workflow_name]
            if workflow.validate().version != version:
                orchestrator.store.finish_run(
                    run_id, RunStatus.FAILED, error_type="WorkflowChanged",
                    error=f"workflow {workflow_name!r} changed since this run started "
                          f"(version {version}, now {workflow.validate().version}); "
                          "not resumed automatically")
                continue
            lost = redacted_loss(orchestrator, run_id, workflow_name, version, inputs)
            if lost:  # re-dispatched from the stored copies, its steps would get [REDACTED]
                orchestrator.store.finish_run(
                    run_id, RunStatus.FAILED, error_type="Unrecoverable",
                    error=f"left unfinished by a previous process and cannot be "
                          f"re-dispatched: {lost}")
                continue
            log.warning("re-dispatching a run left unfinished by a previous process",
                        run_id=run_id, workflow=workflow_name)
            workflow.dispatch(run_id, inputs)
        return len(stranded)

    def _acquire_owner_lock(self, url: str) -> bool:
        from sqlalchemy.engine import make_url

        database = make_url(url).database
        if not database or database == ":memory:":
            return False
        handle = open(Path(f"{database}.embedded-lock"), "a")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._owner_lock = handle
        return True
