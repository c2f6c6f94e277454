"""The ``ctx`` parameter: what a step may know and do about its own execution."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from orchestration.core import metrics
from orchestration.core.results import CallRecord
from orchestration.define.children import ChildRun, child_request
from orchestration.define.on_error import ErrorPolicy
from orchestration.define.workflow import Workflow
from orchestration.errors import BudgetExceeded, ConfigurationError, InputTimeout, WaitForInput
from orchestration.execute.intents import IntentModels, intent_models
from orchestration.execute.live import Live
from orchestration.execute.memory import ConversationMemory, MemoryBinding
from orchestration.llm.client import LLMClient
from orchestration.llm.resilience import Resilience
from orchestration.observe.tracing import AttemptSpan
from orchestration.store.memory import MemoryWrite
from orchestration.store.repository import Store


@dataclass(kw_only=True)
class StepContext:
    """Passed to a step that declares a ``ctx`` parameter.

    ``deadline`` is a ``time.monotonic()`` instant (None: no timeout); pass
    ``ctx.remaining()`` to anything that blocks. ``ctx.llm`` calls models with cost
    recorded on this step; ``ctx.memory`` reads and appends to the run's conversation.
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
    # Breakers, limits and providers, handed over by the delivery: never looked up here.
    services: Resilience | None
    store: Store
    map_index: int | None = None  # the element's index, in a map step
    on_error: ErrorPolicy | None = None  # the step's per-error policies, for ctx.llm
    _llm: LLMClient | None = None
    memory_binding: MemoryBinding | None = None  # the workflow's memory, for this run
    _memory: ConversationMemory | None = None
    reported_confidence: float | None = None  # set by ctx.confidence(), read by routes
    trace_note: str | None = None  # set by ctx.note(): the attempt's policy in the trace
    live: Live | None = None  # the run's live stream (None: streaming off)
    span: AttemptSpan | None = None  # this attempt's OpenTelemetry span (None: tracing off)

    @property
    def llm(self) -> LLMClient:
        """The model client bound to this step (its ``model=`` is the default model)."""
        if self._llm is None:
            if self.services is None:
                raise ConfigurationError(
                    f"step {self.step!r}: ctx.llm needs the model services, and this delivery "
                    "was given none (run the step through an Orchestrator)")
            self._llm = LLMClient(self, self.services)
        return self._llm

    @property
    def memory(self) -> ConversationMemory:
        """The run's conversation (``Workflow(memory=...)``): ``context()``, ``append()``."""
        if self._memory is None:
            if self.memory_binding is None:
                raise ConfigurationError(
                    f"step {self.step!r}: ctx.memory needs Workflow(..., memory=Memory(...)); "
                    "a map element has none (append in the step after the map)")
            self._memory = ConversationMemory(self.memory_binding, self)
        return self._memory

    def memory_write(self) -> MemoryWrite | None:
        """What this attempt appended (recorded with the step's outcome), or None."""
        return self._memory.pending() if self._memory is not None else None

    @property
    def intents(self) -> IntentModels:
        """The semantic routers' classifiers, trained once per process (``wf.router``)."""
        return intent_models()

    def emit(self, event_type: str, **fields: Any) -> None:
        """Append an event of this step to the run's stream (``handle.stream()``).

        Fields are redacted like stored outputs; a no-op with ``ORCH_STREAM=off``.
        """
        if self.live is not None:
            self.live.emit(event_type, attempt=self.attempt, **fields)

    def partial(self, value: Any) -> None:
        """Show a partial result before the step finishes (``partial_output``)."""
        if self.live is not None:
            self.live.partial(value)

    def on_token(self, text: str) -> None:
        """The token sink of ``ctx.llm.stream``: one ``token`` event per chunk."""
        if self.live is not None:
            self.live.token(text)

    def flush_tokens(self) -> None:
        """Write tokens held back (``ctx.llm.stream`` calls it when a stream ends)."""
        if self.live is not None:
            self.live.flush()

    def note(self, text: str) -> None:
        """Say what this attempt decided, for the trace (the attempt's ``policy``)."""
        self.trace_note = str(text)[:500]

    @property
    def log(self) -> Any:
        """A structlog logger bound to the run, step and attempt."""
        return structlog.get_logger("orchestration.step").bind(
            run_id=self.run_id, step=self.step, attempt=self.attempt
        )

    def run_child(self, workflow: Workflow, **inputs: Any) -> ChildRun:
        """Return this from the step to run ``workflow`` as a child and output its outputs.

        The child is a run of its own (parent link, own queues and policies); the step's
        output is the child's outputs by name. Its inputs are checked now.
        """
        return child_request(workflow, inputs)

    def wait_for_input(self, name: str, *, timeout: float | None = None) -> Any:
        """Park the run until a person delivers input ``name``; returns that input.

        The run shows ``waiting`` and holds no worker slot; ``orchestrate approve RUN_ID
        --data '{...}'`` (or ``orchestration.approve``) delivers the input and the step
        runs again from the start, this time receiving it. After ``timeout`` seconds
        the wait expires and the step fails with InputTimeout, so its fallback applies.
        """
        wait = self.store.waits.lookup(self.run_id, self.step, name)
        if wait is not None and wait.status == "delivered":
            return wait.data
        if wait is not None and wait.status == "expired":
            raise InputTimeout(f"no input {name!r} was delivered within {timeout} s")
        raise WaitForInput(name, timeout)

    def remaining(self) -> float | None:
        """Seconds left before this attempt's timeout, or None without a timeout."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def confidence(self, value: float) -> None:
        """Report how sure this attempt's answer is (0..1), for a step on a model route.

        Below the route's ``min_confidence`` the attempt escalates to the next tier. A
        step may instead return a dict with a numeric ``confidence`` key; this call wins.
        """
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ConfigurationError(f"step {self.step!r}: ctx.confidence() takes a number "
                                     f"in 0..1, got {value!r}")
        self.reported_confidence = float(value)

    def record_cost(self, usd: float, *, model: str | None = None) -> None:
        """Add spend (in USD) to this step; it is summed on the run and capped like calls.

        The report that takes the step past its ``max_cost``, or the run past its
        ``budget``, raises :class:`BudgetExceeded` (kind ``budget_exceeded``, so the
        step's ``on_error`` and fallback apply); the spend stays recorded either way.
        """
        self._add_cost(usd, model)
        spent = self.spent_before + self.cost_usd
        if self.max_cost is not None and spent > self.max_cost:
            raise BudgetExceeded(f"step {self.step!r} reported ${spent:.6f}, past its "
                                 f"max_cost ${self.max_cost:.6f}")
        if self.run_budget is not None:
            run_spent = self.run_cost() + self.cost_usd
            if run_spent > self.run_budget:
                raise BudgetExceeded(f"run {self.run_id} reported ${run_spent:.6f}, past its "
                                     f"budget ${self.run_budget:.6f}")

    def record_call(self, call: CallRecord) -> None:
        """Record one model call (its cost is added to this step)."""
        self.calls.append(call)
        # ctx.llm checks the budgets itself, around the call (see llm/client.py).
        self._add_cost(call.cost_usd, call.model if call.ok else None)
        metrics.record_call(call.model, call.ok, call.breaker, call.context_utilisation)
        if self.span is not None:
            self.span.model_call(call, self._system_of(call.model))

    def _system_of(self, model: str) -> str:
        """The provider kind of a model, for its call's span (``gen_ai.system``)."""
        catalogue = self.services.catalogue if self.services is not None else None
        if catalogue is None or model not in catalogue.models:
            return "local"  # the local answer of an unconfigured chain
        return catalogue.providers[catalogue.model(model).provider].kind

    def _add_cost(self, usd: float, model: str | None) -> None:
        self.cost_usd += float(usd)
        if model:
            self.models_used.append(model)
