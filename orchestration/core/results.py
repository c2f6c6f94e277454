"""What callers get back: run handles, run results and step records."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from orchestration.core.status import RunStatus, StepStatus
from orchestration.errors import WaitTimeout

FLAT_POLL_SECONDS = 0.1

class RunStore(Protocol):
    """What a run handle reads and cancels through (the store floor's ``Store``)."""

    def run_status(self, run_id: str) -> RunStatus:
        """A run's current status."""

    def get_run(self, run_id: str) -> RunResult:
        """A run with its steps, as it is now."""

    def cancel_run(self, run_id: str, reason: str) -> list[str]:
        """Cancel one run; the ids of its unfinished child runs."""


@dataclass(frozen=True)
class CallRecord:
    """One model call made by a step attempt, for the trace.

    ``context_utilisation``: the prompt's tokens (as the provider reported them, else as
    estimated) over the model's context window.
    """

    model: str
    ok: bool
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    breaker: str | None = None
    error: str | None = None
    error_kind: str | None = None  # the failure's kind (timeout, model_unavailable, ...)
    policy: str | None = None  # the step's on_error entry that acted ("timeout: retry(3)")
    context_utilisation: float | None = None


def cancel_run(store: RunStore, run_id: str) -> list[str]:
    """Cancel a run and, recursively, its unfinished children."""
    cancelled: list[str] = []
    pending = [run_id]
    while pending:
        current = pending.pop()
        pending.extend(store.cancel_run(current, "cancelled" if current == run_id
                                        else f"cancelled with parent run {run_id}"))
        cancelled.append(current)
    return cancelled


@dataclass(frozen=True)
class StepRecord:
    """One step of a run as recorded: status, output, attempts, timing, cost, error."""

    name: str
    status: StepStatus
    output_name: str
    output: Any = None
    attempts: int = 0
    latency_ms: float | None = None
    cost_usd: float = 0.0
    error: str | None = None
    error_type: str | None = None
    model: str | None = None
    queue: str | None = None
    worker: str | None = None
    deliveries: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt_log: list[dict[str, Any]] = field(default_factory=list)
    gate: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cache_hit: bool = False
    crashes: int = 0  # deliveries whose worker died mid-step

    @property
    def retries(self) -> int:
        """Attempts beyond the first."""
        return max(0, self.attempts - 1)

    @property
    def policies(self) -> list[str | None]:
        """Per attempt, the ``on_error`` policy that acted on it (``"timeout: retry(3)"``)."""
        return [attempt.get("policy") for attempt in self.attempt_log]


@dataclass(frozen=True)
class RunResult:
    """A run read from the results database.

    ``outputs`` maps each step's output name to its output (``None`` for a step that
    failed non-critically or was skipped).
    """

    run_id: str
    workflow: str
    status: RunStatus
    inputs: dict[str, Any]
    steps: dict[str, StepRecord]
    error: str | None = None
    error_type: str | None = None
    cost_usd: float = 0.0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    parent_run_id: str | None = None

    @property
    def outputs(self) -> dict[str, Any]:
        """Every step's output by output name."""
        return {
            step.output_name: step.output if step.status.produced_output else None
            for step in self.steps.values()
        }

    @property
    def succeeded(self) -> bool:
        """True when the run ended ``succeeded``."""
        return self.status is RunStatus.SUCCEEDED

    @property
    def duration_s(self) -> float | None:
        """Seconds from creation to finish, once finished."""
        if self.created_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.created_at).total_seconds()


@dataclass(frozen=True)
class RunSummary:
    """One line of a run listing."""

    run_id: str
    workflow: str
    status: RunStatus
    created_at: datetime | None
    finished_at: datetime | None
    cost_usd: float
    error: str | None


class RunHandle:
    """A submitted run: poll it, wait for it, read it. Reads the results DB, never Celery."""

    def __init__(self, run_id: str, store: RunStore, *, existing: bool = False) -> None:
        self.run_id = run_id
        self._store = store
        self.existing = existing

    def status(self) -> RunStatus:
        """The run's current status."""
        return self._store.run_status(self.run_id)

    def result(self) -> RunResult:
        """The run as it is now (finished or not)."""
        return self._store.get_run(self.run_id)

    def cancel(self) -> list[str]:
        """Cancel the run and its unfinished child runs; returns every run id cancelled."""
        return cancel_run(self._store, self.run_id)

    def wait(self, timeout: float | None = 60.0, *, poll: float = 0.002,
             max_poll: float = 0.05) -> RunResult:
        """Block until the run is terminal and return it.

        Polls the run's status (one indexed read) every ``poll`` seconds for the first
        0.1 s, then less often, up to every ``max_poll`` seconds: a short run is seen
        finished within a few ms, and a long one costs few reads. Raises
        :class:`~orchestration.errors.WaitTimeout` after ``timeout`` seconds; the run goes on.
        """
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        interval = poll
        while True:
            if self._store.run_status(self.run_id).is_terminal:
                return self._store.get_run(self.run_id)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"run {self.run_id} is still {self.status().value} after {timeout} s; "
                    f"inspect it with `orchestrate show {self.run_id}`"
                )
            time.sleep(interval if deadline is None
                       else min(interval, max(0.0, deadline - time.monotonic())))
            if time.monotonic() - started > FLAT_POLL_SECONDS:
                interval = min(interval * 1.2, max_poll)

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id}>"
