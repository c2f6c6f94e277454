"""Lifecycle states of runs and steps, as stored in the results database."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """Where a run is in its lifecycle: ``pending -> running -> succeeded | failed``."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"  # parked until a person delivers input (holds no worker slot)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True once the run can no longer change by itself."""
        return self in TERMINAL_RUN_STATUSES


class StepStatus(StrEnum):
    """Where a step is: ``pending -> running [-> retrying -> running]* -> <terminal>``.

    ``fallback`` is terminal and successful: the step failed but its fallback answered.
    ``skipped`` means a dependency failed critically, so the step never ran.
    """

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FALLBACK = "fallback"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True once the step's outcome is recorded for good."""
        return self in TERMINAL_STEP_STATUSES

    @property
    def produced_output(self) -> bool:
        """True when dependents receive a real output from this step."""
        return self in (StepStatus.SUCCEEDED, StepStatus.FALLBACK)


TERMINAL_RUN_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})
TERMINAL_STEP_STATUSES = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.FALLBACK, StepStatus.FAILED, StepStatus.SKIPPED,
     StepStatus.CANCELLED}
)
# A step in one of these states may be (re)started by a delivery of its message.
CLAIMABLE_STEP_STATUSES = frozenset(
    {StepStatus.PENDING, StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.WAITING}
)
