"""What the worker floor needs from its deployment, beyond what workflows need."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from orchestration.define.workflow import Host

if TYPE_CHECKING:
    from orchestration.define.step import BoundStep
    from orchestration.errors import WaitForInput
    from orchestration.execute.attempts import Delivery
    from orchestration.submit.durability import Reconciled


class WorkerHost(Host, Protocol):
    """A :class:`Host` that also runs steps: the ``Orchestrator`` implements it."""

    hostname: str
    started_at: datetime

    def delivery(self, task: Any) -> Delivery:
        """What a step task knows about its delivery and may use."""

    def bound_step(self, task_name: str) -> BoundStep:
        """The bound step of a ``<workflow>.<step>`` task name."""

    def reconcile(self, idle_seconds: float | None = None) -> Reconciled:
        """Re-dispatch runs that made no progress; expire overdue human waits."""

    def park(self, task: Any, bound: BoundStep, message: Any, signal: WaitForInput) -> None:
        """Park a step waiting for a person."""

    def fail_run(self, message: Any, step: str, exc: BaseException) -> None:
        """Record an engine error on the step and end its run ``failed``."""
