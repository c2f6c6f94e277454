"""What the step hot path passes to and gets from the store: claims, outcomes, attempts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orchestration.core.status import RunStatus, StepStatus
from orchestration.store.memory import MemoryWrite

__all__ = ["AttemptRecord", "Claim", "ClaimRequest", "RunFinish", "StepOutcome"]


@dataclass(frozen=True)
class ClaimRequest:
    """Who claims a step (``Store.claim_step``'s arguments, to claim it later)."""

    worker: str | None
    task_id: str | None
    first: bool = True
    holder: str | None = None
    released: int | None = None
    alive_since: datetime | None = None


@dataclass(frozen=True)
class Claim:
    """The answer to "may this delivery run the step?".

    ``proceed`` is False when the step already reached a terminal state (a duplicate
    delivery, or a step completed before a resume); ``status``/``output`` then say how.
    ``attempts`` counts attempts already made by earlier deliveries.
    """

    proceed: bool
    status: StepStatus
    attempts: int
    output: Any = None
    run_status: RunStatus = RunStatus.RUNNING
    claimed_at: datetime | None = None
    cost_usd: float = 0.0
    error: str | None = None
    crashes: int = 0
    delivery: int = 0  # this delivery's number (the step's delivery count after the claim)
    held_elsewhere: bool = False  # a live worker runs the step under another message


@dataclass(frozen=True)
class RunFinish:
    """A run's terminal status, written by its last step or the finalize task."""

    status: RunStatus
    error: str | None = None
    error_type: str | None = None

    def params(self, run_id: str, now: datetime) -> dict[str, Any]:
        """Bind parameters of the FINISH_RUN statement."""
        return {"b_run": run_id, "b_status": self.status.value, "b_error": self.error,
                "b_error_type": self.error_type, "b_now": now}


@dataclass
class AttemptRecord:
    """One attempt's trace, written with the step's outcome."""

    attempt: int
    status: str
    started_at: datetime
    finished_at: datetime
    error: str | None = None
    error_type: str | None = None
    model: str | None = None
    cost_usd: float = 0.0
    gate: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    breaker: str | None = None
    map_index: int | None = None
    calls: list[dict[str, Any]] | None = None
    error_kind: str | None = None  # a failed attempt's ErrorKind (timeout, ...)
    policy: str | None = None  # the on_error entry that acted, "model_unavailable: skip"

    @property
    def latency_ms(self) -> float:
        """Wall time of the attempt in milliseconds."""
        return (self.finished_at - self.started_at).total_seconds() * 1000


@dataclass
class StepOutcome:
    """The terminal (or retrying) state of a step, recorded in one transaction."""

    status: StepStatus
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    cost_usd: float = 0.0
    model: str | None = None
    extra_attempts: int = 0  # attempts already recorded elsewhere (map elements)
    cache_hit: bool = False
    memory: MemoryWrite | None = None  # conversation turns, written with the outcome
