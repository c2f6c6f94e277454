"""The deployment a workflow runs on, as the floors below the composition root see it.

``Host`` is what a :class:`Workflow` and the engine's lower floors need from the
deployment; the ``Orchestrator`` (``orchestration.app``) implements it and installs
itself as the default (the shape of dramatiq's ``set_broker``/``get_broker``). Nothing
here imports the composition root: it installs a factory, and the default is built
from it on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from orchestration.errors import ConfigurationError

if TYPE_CHECKING:
    from orchestration.core.results import RunHandle
    from orchestration.core.settings import Settings
    from orchestration.define.step import StepSpec
    from orchestration.define.workflow import CompiledWorkflow, Workflow
    from orchestration.store.repository import Store


class Host(Protocol):
    """What workflows and the engine's floors need from a deployment."""

    settings: Settings
    workflows: dict[str, Workflow]

    @property
    def store(self) -> Store:
        """The results store."""

    @property
    def celery(self) -> Any:
        """The Celery application steps are registered on."""

    def register(self, workflow: Workflow) -> None:
        """Make a workflow known to this deployment."""

    def register_step(self, workflow: Workflow, spec: StepSpec) -> None:
        """Register a declared step as a Celery task."""

    def before_dispatch(self, compiled: CompiledWorkflow) -> None:
        """Get ready to send a run of this workflow (the embedded worker serves it)."""

    def defer_dispatch(self, workflow: Workflow, run_ids: list[str]) -> None:
        """Have workers send the canvases of written runs."""

    def submit(self, workflow: Workflow, inputs: dict[str, Any], *,
               idempotency_key: str | None = None) -> RunHandle:
        """Validate, write and enqueue one run."""

    def submit_many(self, workflow: Workflow, batch: Iterable[Mapping[str, Any]], *,
                    defer: bool = False) -> list[RunHandle]:
        """Validate, write and enqueue many runs."""

    def dispatch(self, workflow: Workflow, run_id: str, inputs: dict[str, Any], *,
                 stored: Any = None) -> None:
        """Enqueue a written run's canvas."""

    def canvas(self, workflow: Workflow, run_id: str, inputs: dict[str, Any], *,
               stored: Any = None) -> Any:
        """The Celery canvas of one run (not sent)."""

    def create_child(self, workflow: Workflow, parent_run: str, parent_step: str,
                     inputs: dict[str, Any]) -> str:
        """Write a child run of ``parent_run``; its id."""


_factory: Callable[[], Host] | None = None
_default: Host | None = None
_lock = threading.Lock()


def install_default(factory: Callable[[], Host]) -> None:
    """Name what builds the process's default host (the composition root calls this)."""
    global _factory
    _factory = factory


def set_default(host: Host | None) -> None:
    """Make ``host`` the process's default (None: build it again on next use)."""
    global _default
    with _lock:
        _default = host


def current_default() -> Host | None:
    """The default host if one was built, else None (never builds one)."""
    return _default


def default_host() -> Host:
    """The process's default host, built on first use by the installed factory."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                if _factory is None:
                    raise ConfigurationError(
                        "no default orchestrator: import orchestration (or pass app=)")
                _default = _factory()
    return _default
