"""The Celery app for ``celery -A orchestration worker`` (Celery looks for ``<pkg>.celery``).

It is the default orchestrator's app, configured from ``ORCH_*`` settings; workers import
the workflow modules listed in ``ORCH_IMPORTS``.
"""

from orchestration.app import default_orchestrator, install_signals

install_signals()
app = default_orchestrator().celery

__all__ = ["app"]
