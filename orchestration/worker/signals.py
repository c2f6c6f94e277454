"""Celery's worker-process signals: schema check, heartbeat, logging, forked children.

Nothing here is connected at import: the composition root calls :func:`install` with
how to find (and build) the default orchestrator, and only ``orchestration.celery``
(what ``celery -A orchestration`` loads) asks it to.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import structlog
from celery import signals

from orchestration.core import metrics
from orchestration.core.logs import CeleryLogFilter, configure_celery_logger
from orchestration.core.redaction import Redactor
from orchestration.core.settings import Settings
from orchestration.define.workflow import Workflow
from orchestration.execute.live import flush_all
from orchestration.observe import tracing
from orchestration.store.engine import is_unavailable
from orchestration.store.repository import Store
from orchestration.worker.versions import version_queues

log = structlog.get_logger("orchestration.app")


class WorkerProcess(Protocol):
    """What the signal handlers need from the orchestrator of a worker process."""

    settings: Settings
    redactor: Redactor
    hostname: str
    workflows: dict[str, Workflow]

    @property
    def celery(self) -> Any:
        """The Celery application."""

    @property
    def store(self) -> Store:
        """The results store."""

    def reset_store(self, *, forked: bool = False) -> None:
        """Drop pooled DB connections."""

    def start_heartbeat(self, name: str, queues: Callable[[], Iterable[str]]) -> Any:
        """Beat for this worker; sweep dead workers' steps."""

    def as_worker(self) -> None:
        """Switch to a worker's settings (patient reconnects)."""

    def stop_heartbeat(self) -> None:
        """Stop beating."""

    def load_pipelines(self) -> Any:
        """Load the deployment's pipeline files (ORCH_PIPELINES) as workflows."""


_find: Callable[[], WorkerProcess | None] | None = None
_build: Callable[[], WorkerProcess] | None = None
_lock = threading.Lock()


def install(*, current: Callable[[], WorkerProcess | None],
            build: Callable[[], WorkerProcess]) -> None:
    """Connect the handlers (once): ``current`` finds the default orchestrator if built,
    ``build`` builds it."""
    global _find, _build
    with _lock:
        first = _find is None
        _find, _build = current, build
        if not first:
            return
        signals.celeryd_init.connect(_on_celeryd_init, weak=False)
        signals.worker_init.connect(_on_worker_init, weak=False)
        signals.worker_process_init.connect(_on_worker_process_init, weak=False)
        signals.worker_ready.connect(_on_worker_ready, weak=False)
        signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
        signals.after_setup_logger.connect(_on_setup_logger, weak=False)
        signals.after_setup_task_logger.connect(_on_setup_logger, weak=False)
        signals.worker_process_shutdown.connect(_on_worker_process_shutdown, weak=False)


def _current() -> WorkerProcess | None:
    return _find() if _find is not None else None


def _built() -> WorkerProcess:
    assert _build is not None, "handlers run only after install()"
    return _build()


def _on_celeryd_init(**_: Any) -> None:
    # Sent only by the `celery worker` command, never by the in-process worker.
    orchestrator = _built()
    if orchestrator.settings.embedded:
        raise SystemExit(
            "orchestration: no ORCH_BROKER_URL is set, so the broker is the in-process one and a "
            "separate worker would never receive work. Set ORCH_BROKER_URL=redis://... for "
            "workers, or run workflows in one process (the embedded default)."
        )
    orchestrator.as_worker()


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    orchestrator = _current()
    if orchestrator is not None and getattr(sender, "app", None) is orchestrator.celery:
        if not orchestrator.settings.embedded:
            # After Celery imported ORCH_IMPORTS, before the pool forks: every process of
            # this worker knows the pipelines' steps. A bad file stops the worker here.
            orchestrator.load_pipelines()
        try:
            orchestrator.store.ensure_schema()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            # Start anyway (steps are handed back until it answers), but say so loudly.
            log.error("results database unreachable at start-up: this worker will hand "
                      "every step back to the broker until it answers",
                      error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        # Close the migration's connections before the pool forks its children.
        orchestrator.reset_store()


def _on_setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    # Celery configures its own handlers; scrub them, and match ORCH_LOG_JSON.
    if logger is None:
        return
    orchestrator = _built()
    as_json = bool(orchestrator.settings.log_json)
    configure_celery_logger(logger, orchestrator.redactor, json=as_json)
    for name in ("celery.app.trace", "celery.worker.strategy", "celery.worker.request"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(CeleryLogFilter(orchestrator.redactor))


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    orchestrator = _current()
    if orchestrator is None or getattr(sender, "app", None) is not orchestrator.celery:
        return
    task_consumer = getattr(sender, "task_consumer", None)
    queues = sorted(queue.name for queue in getattr(task_consumer, "queues", None) or ())
    # Messages of runs of this worker's versions, parked by workers of other versions
    # and sent on by its heartbeat (worker/versions.py).
    for name in version_queues(orchestrator.workflows.values(), queues):
        sender.add_task_queue(name)
        queues.append(name)
    orchestrator.start_heartbeat(str(getattr(sender, "hostname", orchestrator.hostname)),
                                 lambda: queues)
    if orchestrator.settings.metrics_port:
        metrics.serve(orchestrator.settings.metrics_port)


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    # Only the `celery worker` of the default app: an embedded process's per-queue
    # consumers stop (and a dead one is replaced) while it lives; its shutdown() stops it.
    orchestrator = _current()
    if (orchestrator is not None and getattr(sender, "app", None) is orchestrator.celery
            and not orchestrator.settings.embedded):
        orchestrator.stop_heartbeat()


def _on_worker_process_shutdown(pid: int | None = None, **_: Any) -> None:
    tracing.flush()  # a pool child exits without atexit: export its buffered spans now
    flush_all()  # and write the run-stream events its steps did not wait for
    # prometheus-client's multiprocess mode keeps a dead child's gauges unless told.
    if pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _on_worker_process_init(**_: Any) -> None:
    orchestrator = _current()
    if orchestrator is not None:
        orchestrator.reset_store(forked=True)
