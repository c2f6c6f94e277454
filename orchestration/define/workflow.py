"""Workflows: declare steps with ``@workflow.task``, validate, submit runs."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, overload

import structlog

from orchestration.core.names import queue_name, workflow_name
from orchestration.core.redaction import Redactor
from orchestration.core.results import RunHandle, RunResult
from orchestration.core.settings import Settings
from orchestration.define.fingerprint import code_hash, stable
from orchestration.define.graph import Decomposition, decompose, find_cycle
from orchestration.define.host import default_host
from orchestration.define.inputs import RESERVED_INPUTS, check_run_inputs, declared_inputs
from orchestration.define.intents import Router, declare_router
from orchestration.define.memory import Memory, as_memory
from orchestration.define.policies import check_plain_function
from orchestration.define.step import (
    BoundStep,
    Step,
    StepSpec,
    build_spec,
    gathered_outputs,
)
from orchestration.define.throughput import as_limit, check_step_key
from orchestration.define.triggers import (
    Schedule,
    Trigger,
    check_mapped,
    check_starters,
    default_name,
    make_schedule,
    make_trigger,
)
from orchestration.define.vocabulary import check_workflow_options
from orchestration.errors import WorkflowDefinitionError
from orchestration.store.repository import Store

log = structlog.get_logger("orchestration.define.workflow")


@dataclass(frozen=True)
class CompiledWorkflow:
    """A validated workflow: bound steps, required inputs, and its decomposition."""

    version: str
    steps: dict[str, BoundStep]
    inputs: frozenset[str]
    required_inputs: frozenset[str]
    decomposition: Decomposition


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
               idempotency_key: str | None = None, priority: int | None = None) -> RunHandle:
        """Validate, write and enqueue one run."""

    def submit_many(self, workflow: Workflow, batch: Iterable[Mapping[str, Any]], *,
                    defer: bool = False, priority: int | None = None) -> list[RunHandle]:
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



class Workflow:
    """A DAG of Python steps, run on Celery workers with state in the results database.

    ``queue`` is the default queue of its steps; ``inputs`` (optional) declares the
    workflow's inputs, making any parameter that nothing provides a definition error.
    ``memory`` (a :class:`~orchestration.define.memory.Memory`) keeps a conversation's
    turns across runs, keyed by one of the inputs (``ctx.memory`` in steps).
    """

    def __init__(self, name: str, *, queue: str | None = None,
                 inputs: list[str] | None = None, budget: float | None = None,
                 redact: Callable[[Any], Any] | None = None,
                 orchestrator: Host | None = None, app: Host | None = None,
                 memory: Memory | None = None, max_parallel: int | None = None,
                 concurrency_key: str | None = None, **unknown: Any) -> None:
        workflow_name(name)
        check_workflow_options(name, unknown, ("queue", "inputs", "budget", "redact",
                                               "orchestrator", "memory", "max_parallel",
                                               "concurrency_key"))
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
        self.queue = queue
        self.budget = float(budget) if budget is not None else None
        if redact is not None and not callable(redact):
            raise WorkflowDefinitionError(f"workflow {name!r}: redact must be a callable")
        if redact is not None:
            check_plain_function(redact, "its redact hook", f"workflow {name!r}")
        self.redact = redact
        self.declared_inputs = declared_inputs(name, inputs)
        self.memory = as_memory(memory, name)
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
                self._compiled = _compile(self)
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

    def canvas(self, run_id: str, inputs: dict[str, Any], *, stored: Any = None) -> Any:
        """The Celery canvas of one run (not sent); see ``submit.submission.canvas``."""
        return self.orchestrator.canvas(self, run_id, inputs, stored=stored)

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


def _compile(workflow: Workflow) -> CompiledWorkflow:
    specs = workflow._specs
    if not specs:
        raise WorkflowDefinitionError(f"workflow {workflow.name!r} has no steps")
    by_output = {spec.output: spec for spec in specs.values()}
    _checkdeclared_inputs(workflow, by_output)
    deps: dict[str, list[str]] = {}
    sources: dict[str, dict[str, str]] = {}
    inputs: set[str] = set(workflow.declared_inputs or ())
    required: set[str] = set()
    when_sources: dict[str, dict[str, str]] = {}
    for spec in specs.values():
        params = tuple(param for param in spec.params if param != spec.gather)
        upstream, sources[spec.name] = _bind_params(workflow, spec, params, by_output,
                                                    inputs, required)
        # A when= predicate binds like the step: what it reads, the step depends on.
        when_upstream, when_sources[spec.name] = _bind_params(
            workflow, spec, spec.when_params, by_output, inputs, required)
        upstream += when_upstream + _resolve_depends(workflow, spec, by_output)
        if spec.name in upstream:
            raise WorkflowDefinitionError(f"{spec.where} depends on itself")
        deps[spec.name] = list(dict.fromkeys(upstream))
    if workflow.memory is not None:  # every run names its conversation
        required.add(workflow.memory.key)
    if workflow.limit is not None and workflow.limit.key is not None:
        required.add(workflow.limit.key)  # every run names its partition of the limit
        inputs.add(workflow.limit.key)
    for spec in specs.values():
        check_step_key(spec.limit, spec.params, inputs, spec.where)
    cycle = find_cycle(deps)
    if cycle:
        raise WorkflowDefinitionError(
            f"workflow {workflow.name!r} has a cycle: {' -> '.join(cycle)}"
        )
    steps = {
        spec.name: BoundStep(
            spec=spec, queue=workflow.queue_of(spec), sources=sources[spec.name],
            requires=frozenset(specs[up].output for up in deps[spec.name]),
            upstream=frozenset(deps[spec.name]), run_budget=workflow.budget,
            when_sources=when_sources[spec.name], memory=workflow.memory,
            gathered=gathered_outputs(spec, specs, by_output, {*inputs, *by_output}),
        )
        for spec in specs.values()
    }
    check_starters(workflow.name, workflow.triggers, workflow.schedules, frozenset(inputs),
                   frozenset(required))
    return CompiledWorkflow(
        version=_version(workflow, deps), steps=steps, inputs=frozenset(inputs),
        required_inputs=frozenset(required), decomposition=decompose(deps),
    )


def _check_unique_name(workflow: Workflow, name: str, what: str) -> None:
    """Trigger and schedule names are one namespace per deployment (events name them)."""
    for other in [*workflow.orchestrator.workflows.values(), workflow]:
        for kind, taken in (("trigger", other.triggers), ("schedule", other.schedules)):
            if any(item.name == name for item in taken):
                raise WorkflowDefinitionError(
                    f"workflow {workflow.name!r}: {what} name {name!r} is taken by a "
                    f"{kind} of workflow {other.name!r}; pass name= to tell them apart")


def _checkdeclared_inputs(workflow: Workflow, by_output: Mapping[str, StepSpec]) -> None:
    declared = workflow.declared_inputs
    if declared is None:
        return
    clash = sorted(declared & set(by_output))
    if clash:
        raise WorkflowDefinitionError(
            f"workflow {workflow.name!r}: {clash[0]!r} is both an input and a step output"
        )
    reserved = sorted(declared & RESERVED_INPUTS)
    if reserved:
        raise WorkflowDefinitionError(f"workflow {workflow.name!r}: {reserved[0]!r} is reserved")


def _bind_params(workflow: Workflow, spec: StepSpec, params: tuple[str, ...],
                 by_output: Mapping[str, StepSpec], inputs: set[str],
                 required: set[str]) -> tuple[list[str], dict[str, str]]:
    """Bind each parameter to a step output or a workflow input; returns (upstream, sources)."""
    specs = workflow._specs
    declared = workflow.declared_inputs
    upstream: list[str] = []
    sources: dict[str, str] = {}
    for param in params:
        if param in by_output:
            upstream.append(by_output[param].name)
        elif param in specs and specs[param].output != param:
            raise WorkflowDefinitionError(
                f"{spec.where}: parameter {param!r} names step {param!r}, whose output is "
                f"called {specs[param].output!r}; rename the parameter"
            )
        elif param in RESERVED_INPUTS:
            raise WorkflowDefinitionError(f"{spec.where}: parameter name {param!r} is reserved")
        elif declared is not None and param not in declared:
            if param in spec.optional_params:
                continue
            raise WorkflowDefinitionError(
                f"{spec.where}: parameter {param!r} is provided by no step output and no "
                "workflow input"
            )
        else:
            inputs.add(param)
            if param not in spec.optional_params:
                required.add(param)
        sources[param] = param
    return upstream, sources


def _resolve_depends(workflow: Workflow, spec: StepSpec,
                     by_output: Mapping[str, StepSpec]) -> list[str]:
    names = []
    for dep in spec.depends_on:
        target = workflow._specs.get(dep) or by_output.get(dep)
        if target is None:
            raise WorkflowDefinitionError(
                f"{spec.where}: depends_on names {dep!r}, which is no step or output of "
                f"workflow {workflow.name!r}"
            )
        names.append(target.name)
    return names


def _version(workflow: Workflow, deps: dict[str, list[str]]) -> str:
    shape = [
        (spec.name, spec.output, sorted(deps[spec.name]), spec.params, spec.retries,
         spec.critical, workflow.queue_of(spec), spec.model, spec.map, spec.min_success,
         stable(spec.timeout), stable(spec.fallback), spec.max_cost,
         getattr(spec.fn, "__qualname__", ""), code_hash(spec.fn))
        # Only when set, so that the versions of workflows without it do not change.
        + ((str(spec.on_error),) if spec.on_error is not None else ())
        + ((f"gather={spec.gather}",) if spec.gather is not None else ())
        for spec in workflow._specs.values()
    ]
    return hashlib.sha256(repr(shape).encode()).hexdigest()[:16]
