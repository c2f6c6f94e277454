"""The embedded default: a Celery worker on the in-process broker, inside this process.

With no ``ORCH_BROKER_URL``, ``submit`` starts this worker on first use (threads pool,
``ORCH_EMBEDDED_CONCURRENCY`` threads) consuming every queue of the registered
workflows; run state still goes to the results DB (SQLite under ``./var/``), so a run
survives the process: when the next embedded process starts, it re-dispatches runs
left unfinished by a process that died (completed steps are not re-run).
"""

from __future__ import annotations

import fcntl
import logging
import threading
from pathlib import Path
from typing import IO, Any

import structlog
from celery.worker import WorkController

from orchestration.core import metrics
from orchestration.core.status import RunStatus
from orchestration.errors import ConfigurationError
from orchestration.store.engine import is_sqlite
from orchestration.submit.durability import redacted_loss
from orchestration.worker.host import WorkerHost

log = structlog.get_logger("orchestration.worker.embedded")
START_TIMEOUT = 30.0


class _Controller(WorkController):  # type: ignore[misc]
    """A WorkController that reports when its consumer is ready."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ready = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: Any) -> None:
        self.ready.set()


class EmbeddedWorker:
    """A Celery worker running in a background thread of this process."""

    def __init__(self, orchestrator: WorkerHost) -> None:
        self._orchestrator = orchestrator
        self._controller: _Controller | None = None
        self._thread: threading.Thread | None = None
        self._queues: set[str] = set()
        self._lock = threading.RLock()
        self._owner_lock: IO[str] | None = None

    @property
    def queues(self) -> frozenset[str]:
        """The queues consumed now."""
        return frozenset(self._queues)

    def start(self, queues: set[str] | None = None) -> None:
        """Start consuming the given queues plus those of every registered workflow."""
        orchestrator = self._orchestrator
        wanted = set(queues or ()) | {orchestrator.settings.default_queue}
        for workflow in orchestrator.workflows.values():
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
            controller = _Controller(
                app=app, pool="threads", concurrency=orchestrator.settings.embedded_concurrency,
                queues=sorted(wanted), hostname=f"embedded@{orchestrator.hostname}",
                loglevel=logging.INFO, without_heartbeat=True, without_mingle=True,
                without_gossip=True, optimization="fair",
            )
            thread = threading.Thread(target=controller.start, name="orchestration-embedded",
                                      daemon=True)
            thread.start()
            if not controller.ready.wait(START_TIMEOUT):
                raise ConfigurationError("the in-process worker did not start within "
                                         f"{START_TIMEOUT:g} s")
            self._controller, self._thread, self._queues = controller, thread, wanted
            if orchestrator.settings.metrics_port:
                metrics.serve(orchestrator.settings.metrics_port)

    def serve(self, queues: set[str], task_names: set[str] | None = None) -> None:
        """Make sure these queues are consumed and these tasks known to the worker.

        New tasks (a workflow defined after the worker started) are added to the running
        consumer; a new queue restarts the worker.
        """
        controller = self._controller
        if queues <= self._queues and controller is not None:
            consumer = controller.consumer
            if consumer is not None and not (task_names or set()) <= consumer.strategies.keys():
                with self._lock:
                    consumer.update_strategies()
            return
        with self._lock:
            if queues <= self._queues:
                return
            missing = queues | self._queues
            self._stop_controller()
            self.start(missing)

    def stop(self) -> None:
        """Stop the worker; messages not yet run stay in the in-process broker."""
        with self._lock:
            self._stop_controller()
            if self._owner_lock is not None:
                self._owner_lock.close()
                self._owner_lock = None

    def _stop_controller(self) -> None:
        controller, thread = self._controller, self._thread
        self._controller = self._thread = None
        if controller is not None:
            controller.stop(in_sighandler=False, exitcode=0)
        if thread is not None:
            thread.join(30)

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
