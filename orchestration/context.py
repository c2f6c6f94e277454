"""The ``ctx`` parameter: what a step may know and do about its own execution."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from orchestration.llm import LLMClient
    from orchestration.resilience import Resilience


@dataclass
class StepContext:
    """Passed to a step that declares a ``ctx`` parameter.

    ``deadline`` is a ``time.monotonic()`` instant (None: no timeout); pass
    ``ctx.remaining()`` to anything that blocks. ``ctx.llm`` calls models with cost
    recorded on this step.
    """

    run_id: str
    workflow: str
    step: str
    attempt: int
    deadline: float | None = None
    model: str | None = None
    cost_usd: float = 0.0
    models_used: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    calls: list[CallRecord] = field(default_factory=list)
    max_cost: float | None = None
    spent_before: float = 0.0  # this step's cost in earlier attempts and deliveries
    run_budget: float | None = None
    run_cost: Callable[[], float] = field(default=lambda: 0.0)  # recorded spend of the run
    services: Resilience | None = None
    _llm: LLMClient | None = None

    @property
    def llm(self) -> LLMClient:
        """The model client bound to this step (its ``model=`` is the default model)."""
        if self._llm is None:
            from orchestration.llm import LLMClient

            services = self.services
            if services is None:
                from orchestration.app import default_orchestrator

                services = default_orchestrator().resilience
            self._llm = LLMClient(self, services)
        return self._llm

    @property
    def log(self) -> Any:
        """A structlog logger bound to the run, step and attempt."""
        return structlog.get_logger("orchestration.step").bind(
            run_id=self.run_id, step=self.step, attempt=self.attempt
        )

    def remaining(self) -> float | None:
        """Seconds left before this attempt's timeout, or None without a timeout."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def record_cost(self, usd: float, *, model: str | None = None) -> None:
        """Add spend (in USD) to this step; it is summed on the run."""
        self.cost_usd += float(usd)
        if model:
            self.models_used.append(model)

    def record_call(self, call: CallRecord) -> None:
        """Record one model call (its cost is added to this step)."""
        self.calls.append(call)
        self.record_cost(call.cost_usd, model=call.model if call.ok else None)


@dataclass(frozen=True)
class CallRecord:
    """One model call made by a step attempt, for the trace."""

    model: str
    ok: bool
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    breaker: str | None = None
    error: str | None = None
