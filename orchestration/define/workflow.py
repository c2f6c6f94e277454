"""Workflows: declare steps with ``@workflow.task``, validate, submit runs."""

from __future__ import annotations

import hashlib
import math
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

import structlog

from orchestration.compile.canvas import build_canvas
from orchestration.core.envelope import Envelope, check_json, dumps
from orchestration.core.names import MAX_NAME, identifier, queue_name, workflow_name
from orchestration.core.redaction import Redactor, changed_by_redaction
from orchestration.core.results import RunHandle, RunResult
from orchestration.define.children import child_idempotency_key
from orchestration.define.graph import Decomposition, decompose, find_cycle
from orchestration.define.policies import check_plain_function
from orchestration.define.step import CTX_PARAM, BoundStep, Step, StepSpec, build_spec
from orchestration.errors import InvalidInput, SubmitFailed, WorkflowDefinitionError
from orchestration.store.discard import discard_unstarted
from orchestration.store.repository import PlannedStep

if TYPE_CHECKING:
    from orchestration.app import Orchestrator

RESERVED_INPUTS = frozenset({"idempotency_key", CTX_PARAM})
log = structlog.get_logger("orchestration.define.workflow")


@dataclass(frozen=True)
class CompiledWorkflow:
    """A validated workflow: bound steps, required inputs, and its decomposition."""

    version: str
    steps: dict[str, BoundStep]
    inputs: frozenset[str]
    required_inputs: frozenset[str]
    decomposition: Decomposition


class Workflow:
    """A DAG of Python steps, run on Celery workers with state in the results database.

    ``queue`` is the default queue of its steps; ``inputs`` (optional) declares the
    workflow's inputs, making any parameter that nothing provides a definition error.
    """

    def __init__(self, name: str, *, queue: str | None = None,
                 inputs: list[str] | None = None, budget: float | None = None,
                 redact: Callable[[Any], Any] | None = None,
                 app: Orchestrator | None = None) -> None:
        workflow_name(name)
        if queue is not None:
            queue_name(queue, "queue", f"workflow {name!r}")
        if app is None:
            from orchestration.app import default_orchestrator

            app = default_orchestrator()
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
        self.declared_inputs = _declared_inputs(name, inputs)
        self.app = app
        self._specs: dict[str, StepSpec] = {}
        self._compiled: CompiledWorkflow | None = None
        self._lock = threading.Lock()
        app.register(self)

    # -- definition --------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[..., Any], /) -> Step: ...
    @overload
    def task(self, fn: None = None, /, **options: Any) -> Callable[[Callable[..., Any]], Step]: ...

    def task(self, fn: Callable[..., Any] | None = None, /,
             **options: Any) -> Step | Callable[[Callable[..., Any]], Step]:
        """Declare a step: ``@wf.task`` or ``@wf.task(retries=3, timeout=30, ...)``.

        Options: ``name``, ``output``, ``depends_on``, ``retries``, ``backoff``, ``timeout``,
        ``fallback``, ``critical``, ``queue``, ``model``, ``max_cost``. Unknown options and
        bad values raise :class:`WorkflowDefinitionError` here.
        """
        def decorate(function: Callable[..., Any]) -> Step:
            spec = build_spec(self.name, function, options)
            self._add(spec)
            return Step(spec)

        return decorate(fn) if fn is not None else decorate

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
        self.app.register_step(self, spec)

    @property
    def redactor(self) -> Redactor:
        """What scrubs this workflow's stored inputs, outputs and errors."""
        return Redactor(self.app.settings.redact_fields, hook=self.redact)

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
        return self.queue or self.app.settings.default_queue

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

    def submit(self, *, idempotency_key: str | None = None, **inputs: Any) -> RunHandle:
        """Validate the inputs, write the run row and enqueue the run; returns a handle.

        With an ``idempotency_key`` that already started a run, that run's handle is
        returned and nothing is enqueued. Raises :class:`InvalidInput` (nothing written).
        """
        compiled = self.validate()
        encoded = self.check_inputs(compiled, inputs)
        _check_idempotency_key(self.name, idempotency_key)
        store = self.app.store
        run_id = str(uuid.uuid4())
        planned = [
            PlannedStep(name, bound.spec.output, bound.queue, bound.spec.model,
                        bound.spec.critical)
            for name, bound in compiled.steps.items()
        ]
        stored = self.redactor(encoded)
        # Built before the row is written: whatever fails here leaves nothing behind.
        canvas = self.canvas(run_id, encoded, stored=stored)
        stored_id = store.create_run(run_id, self.name, compiled.version, stored, planned,
                                     idempotency_key=idempotency_key,
                                     redacted=sorted(changed_by_redaction(encoded, stored)))
        if stored_id != run_id:
            return RunHandle(stored_id, store, existing=True)
        self._send([run_id], canvas.apply_async)
        return RunHandle(run_id, store)

    def submit_many(self, batch: Iterable[Mapping[str, Any]], *,
                    defer: bool = False) -> list[RunHandle]:
        """Submit many runs: one transaction for all their rows, then their messages.

        Every input set is checked first (InvalidInput names the offending position and
        nothing is written). ``defer=True`` publishes one ``orchestration.dispatch_runs``
        message per 500 runs and lets a worker build and send their canvases (the runs
        are durable, and ``pending``, until then). No idempotency keys in bulk.
        """
        compiled = self.validate()
        runs: list[tuple[str, dict[str, Any]]] = []
        for position, inputs in enumerate(batch):
            try:
                runs.append((str(uuid.uuid4()), self.check_inputs(compiled, dict(inputs))))
            except InvalidInput as exc:
                raise InvalidInput(f"run {position} of the batch: {exc}") from None
        if not runs:
            return []
        store = self.app.store
        stored = {run_id: self.redactor(inputs) for run_id, inputs in runs}
        changed = {run_id: sorted(changed_by_redaction(inputs, stored[run_id]))
                   for run_id, inputs in runs}
        store.create_runs(self.name, compiled.version, list(stored.items()),
                          self._planned(compiled), redacted=changed)
        # A deferred run's canvas is built from its stored inputs: only runs whose stored
        # copy is exact can be deferred; the others are sent from here.
        direct = [(run_id, inputs) for run_id, inputs in runs
                  if not defer or changed[run_id]]

        def send() -> None:
            if defer and len(direct) < len(runs):
                sent = {run_id for run_id, _ in direct}
                self.app.defer_dispatch(self, [run_id for run_id, _ in runs
                                               if run_id not in sent])
            if direct:
                self.app.before_dispatch(compiled)
                with self.app.celery.producer_or_acquire() as producer:
                    for run_id, inputs in direct:
                        self.canvas(run_id, inputs, stored=stored[run_id]).apply_async(
                            producer=producer)

        self._send([run_id for run_id, _ in runs], send)
        return [RunHandle(run_id, store) for run_id, _ in runs]

    def _send(self, run_ids: list[str], send: Callable[[], Any]) -> None:
        """Publish written runs; if that fails, remove them so that none runs later.

        The submission contract (README, "Submitting runs"): when submit raises
        :class:`SubmitFailed`, nothing was created unless the error names the runs.
        """
        try:
            send()
        except Exception as exc:
            raise self._unwind(run_ids, exc) from exc

    def _unwind(self, run_ids: list[str], cause: Exception) -> SubmitFailed:
        store = self.app.store
        count = f"{len(run_ids)} run(s)" if len(run_ids) > 1 else f"run {run_ids[0]}"
        detail = " ".join(str(cause).split())
        detail = f"{type(cause).__name__}: {detail}" if detail else type(cause).__name__
        what = f"workflow {self.name!r}: the broker did not take {count} ({detail})"
        try:
            started = discard_unstarted(store.engine, run_ids)
        except Exception as exc:
            log.error("a run that could not be enqueued could not be removed either",
                      workflow=self.name, run_ids=run_ids, error=repr(exc))
            return SubmitFailed(
                f"{what}, and removing the run rows failed ({type(exc).__name__}: {exc}): "
                f"run(s) {', '.join(run_ids)} exist, pending, and the reconciler starts them "
                f"after {self.app.settings.reconcile_after:g} s without progress unless you "
                "cancel them (orchestrate cancel RUN). A retry with the same idempotency_key "
                "returns the existing run instead of creating another.",
                remaining=tuple(run_ids))
        if not started:
            return SubmitFailed(f"{what}; nothing was created (the run rows were removed), so "
                                "submitting again is safe")
        # A message that did get through was already taken by a worker: that run cannot
        # be removed; cancel it so that nothing more of it runs.
        for run_id in started:
            try:
                store.cancel_run(run_id, "cancelled: its submit failed on the broker")
            except Exception as exc:
                log.error("could not cancel a run whose submit failed", run_id=run_id,
                          error=repr(exc))
        return SubmitFailed(
            f"{what}; nothing was created except run(s) {', '.join(started)}, which a worker "
            "had already started from a message that got through: they were cancelled (a "
            "step already running finishes its attempt); the others were removed",
            remaining=tuple(started))

    def _planned(self, compiled: CompiledWorkflow) -> list[PlannedStep]:
        return [PlannedStep(name, bound.spec.output, bound.queue, bound.spec.model,
                            bound.spec.critical) for name, bound in compiled.steps.items()]

    def run(self, *, timeout: float | None = 60.0, **inputs: Any) -> RunResult:
        """Submit and wait: the finished run (whatever its status)."""
        return self.submit(**inputs).wait(timeout=timeout)

    def dispatch(self, run_id: str, inputs: dict[str, Any], *,
                 stored: Any = None) -> None:
        """Enqueue the run's canvas (steps already terminal in the DB will not re-run)."""
        self.canvas(run_id, inputs, stored=stored).apply_async()

    def canvas(self, run_id: str, inputs: dict[str, Any], *, stored: Any = None) -> Any:
        """The Celery canvas of one run (not sent).

        ``stored``: the run's inputs as stored (redacted; computed here if not given).
        A large input whose stored copy differs travels inline, never by reference.
        """
        compiled = self.validate()
        self.app.before_dispatch(compiled)
        envelope = Envelope.for_inputs(
            run_id, inputs, self.app.settings.inline_output_limit,
            stored=(lambda: stored) if stored is not None else (lambda: self.redactor(inputs)))
        return build_canvas(compiled.decomposition.plan, compiled.steps,
                            envelope.to_message(), run_id, self.app.celery)

    def create_child(self, parent_run: str, parent_step: str, inputs: dict[str, Any]) -> str:
        """Write a child run of ``parent_run`` (once per parent step); returns its id."""
        compiled = self.validate()
        run_id = str(uuid.uuid4())
        planned = [PlannedStep(name, bound.spec.output, bound.queue, bound.spec.model,
                               bound.spec.critical) for name, bound in compiled.steps.items()]
        stored = self.redactor(inputs)
        return self.app.store.create_run(
            run_id, self.name, compiled.version, stored, planned,
            parent_run_id=parent_run,
            idempotency_key=child_idempotency_key(parent_run, parent_step),
            redacted=sorted(changed_by_redaction(inputs, stored)))

    def check_inputs(self, compiled: CompiledWorkflow, inputs: dict[str, Any]) -> dict[str, Any]:
        """The inputs, checked (required present, declared, JSON); InvalidInput if not."""
        for key in inputs:
            if not isinstance(key, str):
                raise InvalidInput(f"workflow {self.name!r}: input names are strings, "
                                   f"got {key!r}")
        reserved = sorted(set(inputs) & RESERVED_INPUTS)
        if reserved:
            raise InvalidInput(f"workflow {self.name!r}: {reserved[0]!r} is reserved, not an "
                               "input (idempotency_key is an argument of submit())")
        missing = sorted(compiled.required_inputs - set(inputs))
        if missing:
            raise InvalidInput(f"workflow {self.name!r}: missing input(s) {', '.join(missing)}")
        if self.declared_inputs is not None:
            unknown = sorted(set(inputs) - self.declared_inputs)
            if unknown:
                raise InvalidInput(f"workflow {self.name!r}: unknown input(s) {', '.join(unknown)}"
                                   f" (declared: {', '.join(sorted(self.declared_inputs))})")
        limit = self.app.settings.max_input_bytes
        for key, value in inputs.items():
            try:
                check_json(value)
                size = len(dumps(value).encode())
            except (TypeError, ValueError) as exc:
                raise InvalidInput(
                    f"workflow {self.name!r}: input {key!r} is not JSON-serialisable "
                    f"({type(value).__name__}): {exc}"
                ) from None
            if size > limit:
                raise InvalidInput(f"workflow {self.name!r}: input {key!r} is {size} bytes of "
                                   f"JSON, over the limit of {limit} (ORCH_MAX_INPUT_BYTES)")
        return dict(inputs)

    def __repr__(self) -> str:
        return f"<Workflow {self.name} ({len(self._specs)} steps)>"


def _declared_inputs(name: str, inputs: object) -> frozenset[str] | None:
    if inputs is None:
        return None
    # A bare string would be taken letter by letter: inputs="text" declares t, e, x.
    if isinstance(inputs, str) or not isinstance(inputs, list | tuple | set | frozenset):
        raise WorkflowDefinitionError(f"workflow {name!r}: inputs must be a list of names, "
                                      f"got {inputs!r}")
    return frozenset(identifier(item, "input name", f"workflow {name!r}") for item in inputs)


def _check_idempotency_key(workflow: str, key: object) -> None:
    if key is None:
        return
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_NAME:
        raise InvalidInput(f"workflow {workflow!r}: idempotency_key must be a non-empty string "
                           f"of at most {MAX_NAME} characters, got {key!r:.80}")


def _compile(workflow: Workflow) -> CompiledWorkflow:
    specs = workflow._specs
    if not specs:
        raise WorkflowDefinitionError(f"workflow {workflow.name!r} has no steps")
    by_output = {spec.output: spec for spec in specs.values()}
    _check_declared_inputs(workflow, by_output)
    deps: dict[str, list[str]] = {}
    sources: dict[str, dict[str, str]] = {}
    inputs: set[str] = set(workflow.declared_inputs or ())
    required: set[str] = set()
    when_sources: dict[str, dict[str, str]] = {}
    for spec in specs.values():
        upstream, sources[spec.name] = _bind_params(workflow, spec, spec.params, by_output,
                                                    inputs, required)
        # A when= predicate binds like the step: what it reads, the step depends on.
        when_upstream, when_sources[spec.name] = _bind_params(
            workflow, spec, spec.when_params, by_output, inputs, required)
        upstream += when_upstream + _resolve_depends(workflow, spec, by_output)
        if spec.name in upstream:
            raise WorkflowDefinitionError(f"{spec.where} depends on itself")
        deps[spec.name] = list(dict.fromkeys(upstream))
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
            when_sources=when_sources[spec.name],
        )
        for spec in specs.values()
    }
    return CompiledWorkflow(
        version=_version(workflow, deps), steps=steps, inputs=frozenset(inputs),
        required_inputs=frozenset(required), decomposition=decompose(deps),
    )


def _check_declared_inputs(workflow: Workflow, by_output: Mapping[str, StepSpec]) -> None:
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
         _stable(spec.timeout), _stable(spec.fallback), spec.max_cost,
         getattr(spec.fn, "__qualname__", ""), _code_hash(spec.fn))
        for spec in workflow._specs.values()
    ]
    return hashlib.sha256(repr(shape).encode()).hexdigest()[:16]


def _code_hash(fn: Callable[..., Any]) -> str:
    code = getattr(fn, "__code__", None)
    return hashlib.sha256(_code_fingerprint(code).encode()).hexdigest()[:12] if code else ""


def _stable(policy: object) -> str:
    """A description of a policy that is the same in every process (no addresses)."""
    if policy is None:
        return ""
    target = getattr(policy, "_target", None) or getattr(policy, "compute", None)
    if callable(target):
        return f"{type(policy).__name__}:{getattr(target, '__qualname__', '')}:{_code_hash(target)}"
    return repr(policy)


def _code_fingerprint(code: Any) -> str:
    # Bytecode alone misses changed constants and called names (x + 1 vs helper(x) + 2).
    consts = [_code_fingerprint(c) if hasattr(c, "co_code") else repr(c) for c in code.co_consts]
    return repr((code.co_code, consts, code.co_names))
