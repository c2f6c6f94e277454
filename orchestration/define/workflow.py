"""Workflows: declare steps with ``@workflow.task``, validate, submit runs."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, overload

import structlog

from orchestration.core.durations import parse_duration
from orchestration.core.names import queue_name, workflow_name
from orchestration.core.redaction import Redactor
from orchestration.core.results import RunHandle, RunResult
from orchestration.core.settings import Settings
from orchestration.define.compiling import CompiledWorkflow, compile_workflow
from orchestration.define.host import default_host
from orchestration.define.inputs import RESERVED_INPUTS, check_run_inputs, declared_inputs
from orchestration.define.intents import Router, declare_router
from orchestration.define.memory import Memory, as_memory
from orchestration.define.policies import check_plain_function
from orchestration.define.step import (
    Step,
    StepSpec,
    build_spec,
)
from orchestration.define.throughput import as_limit
from orchestration.define.triggers import (
    Schedule,
    Trigger,
    check_mapped,
    default_name,
    make_schedule,
    make_trigger,
)
from orchestration.define.versions import version_label
from orchestration.define.vocabulary import check_workflow_options
from orchestration.errors import WorkflowDefinitionError
from orchestration.store.joins import Joins
from orchestration.store.repository import Store

log = structlog.get_logger("orchestration.define.workflow")


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

    @property
    def joins(self) -> Joins | None:
        """Where parallel branches join; None: parallel groups are chords."""

    def register(self, workflow: Workflow) -> None:
        """Make a workflow known to this deployment."""

    def register_step(self, workflow: Workflow, spec: StepSpec) -> None:
        """Register a declared step as a Celery task."""

    def before_dispatch(self, compiled: CompiledWorkflow) -> None:
        """Get ready to send a run of this workflow (the embedded worker serves it)."""

    def defer_dispatch(self, workflow: Workflow, run_ids: list[str]) -> None:
        """Have workers send the canvases of written runs."""

    def submit(self, workflow: Workflow, inputs: dict[str, Any], *,
               idempotency_key: str | None = None, priority: int | None = None) -> RunHandle:
        """Validate, write and enqueue one run."""

    def submit_many(self, workflow: Workflow, batch: Iterable[Mapping[str, Any]], *,
                    defer: bool = False, priority: int | None = None) -> list[RunHandle]:
        """Validate, write and enqueue many runs."""

    def dispatch(self, workflow: Workflow, run_id: str, inputs: dict[str, Any], *,
                 stored: Any = None) -> None:
        """Enqueue a written run's canvas."""

    def canvas(self, workflow: Workflow, run_id: str, inputs: dict[str, Any], *,
               stored: Any = None, followed: bool = False) -> Any:
        """The Celery canvas of one run (not sent)."""

    def create_child(self, workflow: Workflow, parent_run: str, parent_step: str,
                     inputs: dict[str, Any]) -> str:
        """Write a child run of ``parent_run``; its id."""



class Workflow:
    """A DAG of Python steps, run on Celery workers with state in the results database.

    ``queue`` is the default queue of its steps; ``inputs`` (optional) declares the
    workflow's inputs, making any parameter that nothing provides a definition error.
    ``memory`` (a :class:`~orchestration.define.memory.Memory`) keeps a conversation's
    turns across runs, keyed by one of the inputs (``ctx.memory`` in steps).
    ``retention`` (``"30d"``, seconds, or ``"off"``: forever) is how long its finished
    runs are kept, instead of ``ORCH_RETENTION``. ``version`` (e.g. ``"2"``) declares
    that code changes are compatible: only a change of shape makes a new version
    (docs/upgrades.md); without it any change of a step's code does.
    """

    def __init__(self, name: str, *, queue: str | None = None,
                 inputs: list[str] | None = None, budget: float | None = None,
                 redact: Callable[[Any], Any] | None = None,
                 orchestrator: Host | None = None, app: Host | None = None,
                 memory: Memory | None = None, max_parallel: int | None = None,
                 concurrency_key: str | None = None, retention: float | str | None = None,
                 version: str | None = None, **unknown: Any) -> None:
        workflow_name(name)
        check_workflow_options(name, unknown, ("queue", "inputs", "budget", "redact",
                                               "orchestrator", "memory", "max_parallel",
                                               "concurrency_key", "retention", "version"))
        if queue is not None:
            queue_name(queue, "queue", f"workflow {name!r}")
        # ``app`` is the old name of ``orchestrator`` (kept working); "app" alone now
        # means the Celery application, ``orchestrator.celery``.
        host = orchestrator or app or default_host()
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float)
                                   or not 0 <= budget < math.inf):
            raise WorkflowDefinitionError(f"workflow {name!r}: budget must be a finite USD "
                                          f"amount >= 0, got {budget!r}")
        self.name = name
        self.version_label = version_label(name, version)
        self.queue = queue
        self.budget = float(budget) if budget is not None else None
        if redact is not None and not callable(redact):
            raise WorkflowDefinitionError(f"workflow {name!r}: redact must be a callable")
        if redact is not None:
            check_plain_function(redact, "its redact hook", f"workflow {name!r}")
        self.redact = redact
        self.declared_inputs = declared_inputs(name, inputs)
        self.memory = as_memory(memory, name)
        # Seconds its finished runs are kept: None, the deployment's ORCH_RETENTION;
        # "off" (inf), forever.
        try:
            kept = parse_duration(retention, "retention")
        except ValueError as exc:
            raise WorkflowDefinitionError(f"workflow {name!r}: {exc}") from None
        self.retention = None if retention is None else (math.inf if kept is None else kept)
        # Runs executing at once, fleet-wide (per value of the concurrency_key input).
        self.limit = as_limit(max_parallel, concurrency_key, f"workflow {name!r}")
        if self.limit is not None and self.limit.key is not None and \
                self.declared_inputs is not None and self.limit.key not in self.declared_inputs:
            raise WorkflowDefinitionError(
                f"workflow {name!r}: concurrency_key={self.limit.key!r} must be one of its "
                f"inputs ({', '.join(self.declared_inputs)})")
        if self.memory is not None:
            self.memory.check_declared(name, self.declared_inputs)
        self.orchestrator = host
        self._specs: dict[str, StepSpec] = {}
        self._compiled: CompiledWorkflow | None = None
        self._lock = threading.Lock()
        self._triggers: tuple[Trigger, ...] = ()
        self._schedules: tuple[Schedule, ...] = ()
        host.register(self)

    @property
    def app(self) -> Host:
        """The old name of :attr:`orchestrator` (kept so existing code works)."""
        return self.orchestrator

    # -- definition --------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[..., Any], /) -> Step: ...
    @overload
    def task(self, fn: None = None, /, **options: Any) -> Callable[[Callable[..., Any]], Step]: ...

    def task(self, fn: Callable[..., Any] | None = None, /,
             **options: Any) -> Step | Callable[[Callable[..., Any]], Step]:
        """Declare a step: ``@wf.task`` or ``@wf.task(retries=3, timeout=30, ...)``.

        Options: ``name``, ``output``, ``depends_on``, ``retries``, ``backoff``, ``timeout``,
        ``fallback``, ``critical``, ``queue``, ``model``, ``max_cost``, ``on_error``
        (per-error-kind actions, e.g. ``{"timeout": "retry(3)"}``: see
        :mod:`orchestration.define.on_error`), ``gather`` (the parameter that receives
        ``{name: output}`` of every ``depends_on`` entry). Unknown options and bad values raise
        :class:`WorkflowDefinitionError` here.
        """
        def decorate(function: Callable[..., Any]) -> Step:
            spec = build_spec(self.name, function, options)
            self._add(spec)
            return Step(spec)

        return decorate(fn) if fn is not None else decorate

    def router(self, name: str, **options: Any) -> Router:
        """A semantic routing step: see :func:`orchestration.define.intents.declare_router`."""
        return declare_router(self, name, options)

    def _add(self, spec: StepSpec) -> None:
        with self._lock:
            if spec.name in self._specs:
                raise WorkflowDefinitionError(
                    f"workflow {self.name!r}: two steps named {spec.name!r} "
                    "(use name= to tell them apart)"
                )
            for other in self._specs.values():
                if other.output == spec.output:
                    raise WorkflowDefinitionError(
                        f"workflow {self.name!r}: steps {other.name!r} and {spec.name!r} "
                        f"both output {spec.output!r}"
                    )
            self._specs[spec.name] = spec
            self._compiled = None
        self.orchestrator.register_step(self, spec)

    # -- what starts runs besides submit ------------------------------------------------

    def on_event(self, event: str, *, inputs: Mapping[str, Any] | None = None,
                 filter: Mapping[str, Any] | None = None, dedupe: str | None = None,
                 name: str | None = None, priority: int | None = None) -> Trigger:
        """Start a run of this workflow when event ``event`` is received.

        ``inputs`` maps run inputs to payload paths (``{"text": "$.ticket.description"}``)
        or to constants; ``filter`` maps payload paths to the value each must equal;
        ``dedupe`` is the payload path of the key that makes two deliveries one event
        (default: the event id). ``name`` (default ``<workflow>_on_<event>``) is unique
        among the deployment's triggers and schedules; ``priority`` is its runs' (as for
        :meth:`submit`). Mapped inputs are checked against the workflow's inputs by
        :meth:`validate`.
        """
        trigger_name = name if name is not None else default_name(self.name, "on", event)
        trigger = make_trigger(trigger_name, event=event, workflow=self.name, inputs=inputs,
                               filter=filter, dedupe=dedupe, priority=priority,
                               where=f"workflow {self.name!r}, trigger {trigger_name!r}")
        given = set(trigger.inputs) | set(trigger.constants)
        check_mapped(self.name, "trigger", trigger.name, given, self.declared_inputs,
                     RESERVED_INPUTS)
        with self._lock:
            _check_unique_name(self, trigger.name, "trigger")
            self._triggers += (trigger,)
            self._compiled = None
        return trigger

    def schedule(self, cron: str, *, inputs: Mapping[str, Any] | None = None,
                 overlap: str = "skip", name: str | None = None,
                 priority: int | None = None) -> Schedule:
        """Start a run of this workflow on a cron expression (UTC) with ``inputs``.

        ``overlap`` (``skip`` / ``allow`` / ``queue``) says what a tick does while this
        schedule's previous run is still going. ``name`` (default ``<workflow>_schedule``,
        then ``_2``, ...) is unique among the deployment's triggers and schedules;
        ``priority`` is its runs' (as for :meth:`submit`).
        """
        schedule_name = name
        if schedule_name is None:
            count = len(self._schedules) + 1
            schedule_name = f"{default_name(self.name, 'schedule', '')}" + (
                f"_{count}" if count > 1 else "")
        scheduled = make_schedule(schedule_name, cron=cron, workflow=self.name,
                                  inputs=inputs, overlap=overlap, priority=priority,
                                  where=f"workflow {self.name!r}, schedule {schedule_name!r}")
        check_mapped(self.name, "schedule", scheduled.name, set(scheduled.inputs),
                     self.declared_inputs, RESERVED_INPUTS)
        with self._lock:
            _check_unique_name(self, scheduled.name, "schedule")
            self._schedules += (scheduled,)
            self._compiled = None
        return scheduled

    @property
    def triggers(self) -> tuple[Trigger, ...]:
        """The event triggers that start runs of this workflow, in declaration order."""
        return self._triggers

    @property
    def schedules(self) -> tuple[Schedule, ...]:
        """The cron schedules that start runs of this workflow, in declaration order."""
        return self._schedules

    @property
    def redactor(self) -> Redactor:
        """What scrubs this workflow's stored inputs, outputs and errors."""
        return Redactor(self.orchestrator.settings.redact_fields, hook=self.redact)

    @property
    def steps(self) -> Mapping[str, StepSpec]:
        """The declared steps by name, in declaration order."""
        return dict(self._specs)

    def queue_of(self, spec: StepSpec) -> str:
        """The queue a step's messages go to: its queue, its model's, or the default."""
        if spec.queue:
            return spec.queue
        if spec.model:
            return f"model.{spec.model}"
        return self.queue or self.orchestrator.settings.default_queue

    # -- validation --------------------------------------------------------------------

    def validate(self) -> CompiledWorkflow:
        """Check the whole graph (names, cycles, bindings); cached until a step is added."""
        compiled = self._compiled
        if compiled is not None:
            return compiled
        with self._lock:
            if self._compiled is None:
                self._compiled = compile_workflow(self)
            return self._compiled

    # -- running -----------------------------------------------------------------------

    def submit(self, *, idempotency_key: str | None = None, priority: int | None = None,
               **inputs: Any) -> RunHandle:
        """Validate the inputs, write the run row and enqueue the run; returns a handle.

        With an ``idempotency_key`` that already started a run, that run's handle is
        returned and nothing is enqueued. ``priority``: 0 (normal, the default) to 9 (the
        most urgent); every message of the run carries it, so it overtakes waiting runs
        of lower priority on Redis and RabbitMQ (the embedded default ignores it).
        Raises :class:`InvalidInput` (nothing written).
        """
        return self.orchestrator.submit(self, inputs, idempotency_key=idempotency_key,
                                        priority=priority)

    def submit_many(self, batch: Iterable[Mapping[str, Any]], *,
                    defer: bool = False, priority: int | None = None) -> list[RunHandle]:
        """Submit many runs: one transaction for all their rows, then their messages.

        Every input set is checked first (InvalidInput names the offending position and
        nothing is written). ``defer=True`` publishes one ``orchestration.dispatch_runs``
        message per 500 runs and lets a worker build and send their canvases (the runs
        are durable, and ``pending``, until then). No idempotency keys in bulk.
        ``priority`` as for :meth:`submit`, for every run of the batch (not with ``defer``).
        """
        return self.orchestrator.submit_many(self, batch, defer=defer, priority=priority)

    def run(self, *, timeout: float | None = 60.0, **inputs: Any) -> RunResult:
        """Submit and wait: the finished run (whatever its status)."""
        return self.submit(**inputs).wait(timeout=timeout)

    def dispatch(self, run_id: str, inputs: dict[str, Any], *,
                 stored: Any = None) -> None:
        """Enqueue the run's canvas (steps already terminal in the DB will not re-run)."""
        self.orchestrator.dispatch(self, run_id, inputs, stored=stored)

    def canvas(self, run_id: str, inputs: dict[str, Any], *, stored: Any = None,
               followed: bool = False) -> Any:
        """The Celery canvas of one run (not sent); see ``submit.submission.canvas``."""
        return self.orchestrator.canvas(self, run_id, inputs, stored=stored, followed=followed)

    def create_child(self, parent_run: str, parent_step: str, inputs: dict[str, Any]) -> str:
        """Write a child run of ``parent_run`` (once per parent step); returns its id."""
        return self.orchestrator.create_child(self, parent_run, parent_step, inputs)

    def check_inputs(self, compiled: CompiledWorkflow, inputs: dict[str, Any]) -> dict[str, Any]:
        """The inputs, checked (required present, declared, JSON); InvalidInput if not."""
        check_run_inputs(self.name, inputs, required=compiled.required_inputs,
                         declared=self.declared_inputs,
                         limit=self.orchestrator.settings.max_input_bytes)
        if self.memory is not None:
            self.memory.conversation(self.name, inputs)
        return dict(inputs)

    def __repr__(self) -> str:
        return f"<Workflow {self.name} ({len(self._specs)} steps)>"


def _check_unique_name(workflow: Workflow, name: str, what: str) -> None:
    """Trigger and schedule names are one namespace per deployment (events name them)."""
    for other in [*workflow.orchestrator.workflows.values(), workflow]:
        for kind, taken in (("trigger", other.triggers), ("schedule", other.schedules)):
            if any(item.name == name for item in taken):
                raise WorkflowDefinitionError(
                    f"workflow {workflow.name!r}: {what} name {name!r} is taken by a "
                    f"{kind} of workflow {other.name!r}; pass name= to tell them apart")
