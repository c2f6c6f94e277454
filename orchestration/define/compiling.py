"""Compiling a workflow's declarations: bind parameters, check the graph, fix the version.

:func:`compile_workflow` turns the declared steps of a workflow into a
:class:`CompiledWorkflow`: every parameter bound to a step output or a workflow input,
dependencies resolved, cycles refused, the inputs a run needs, and a version that
changes when the steps do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from orchestration.define.fingerprint import code_hash, stable
from orchestration.define.graph import Decomposition, decompose, find_cycle
from orchestration.define.inputs import RESERVED_INPUTS
from orchestration.define.memory import Memory
from orchestration.define.step import BoundStep, StepSpec, gathered_outputs
from orchestration.define.throughput import Limit, check_step_key
from orchestration.define.triggers import Schedule, Trigger, check_starters
from orchestration.errors import WorkflowDefinitionError


@dataclass(frozen=True)
class CompiledWorkflow:
    """A validated workflow: bound steps, required inputs, and its decomposition."""

    version: str
    steps: dict[str, BoundStep]
    inputs: frozenset[str]
    required_inputs: frozenset[str]
    decomposition: Decomposition


class Declared(Protocol):
    """What compiling reads from a workflow (``Workflow`` provides it)."""

    name: str
    budget: float | None
    declared_inputs: frozenset[str] | None
    memory: Memory | None
    limit: Limit | None
    version_label: str | None  # Workflow(version=...): code changes keep the version

    @property
    def steps(self) -> Mapping[str, StepSpec]:
        """The declared steps by name, in declaration order."""

    @property
    def triggers(self) -> tuple[Trigger, ...]:
        """The workflow's event triggers."""

    @property
    def schedules(self) -> tuple[Schedule, ...]:
        """The workflow's schedules."""

    def queue_of(self, spec: StepSpec) -> str:
        """The queue a step runs on."""


def compile_workflow(workflow: Declared) -> CompiledWorkflow:
    """Bind and check a workflow's steps (raises WorkflowDefinitionError)."""
    specs = workflow.steps
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


def _checkdeclared_inputs(workflow: Declared, by_output: Mapping[str, StepSpec]) -> None:
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


def _bind_params(workflow: Declared, spec: StepSpec, params: tuple[str, ...],
                 by_output: Mapping[str, StepSpec], inputs: set[str],
                 required: set[str]) -> tuple[list[str], dict[str, str]]:
    """Bind each parameter to a step output or a workflow input; returns (upstream, sources)."""
    specs = workflow.steps
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


def _resolve_depends(workflow: Declared, spec: StepSpec,
                     by_output: Mapping[str, StepSpec]) -> list[str]:
    names = []
    for dep in spec.depends_on:
        target = workflow.steps.get(dep) or by_output.get(dep)
        if target is None:
            raise WorkflowDefinitionError(
                f"{spec.where}: depends_on names {dep!r}, which is no step or output of "
                f"workflow {workflow.name!r}"
            )
        names.append(target.name)
    return names


def _version(workflow: Declared, deps: dict[str, list[str]]) -> str:
    """A hash of the steps' shape and code; with ``version=`` declared, ``<label>-<shape>``.

    A declared label says that code changes are compatible: they keep the version, so
    runs in flight continue on workers with the new code. The shape (steps, outputs,
    parameters, dependencies, queues, policies) still changes it (docs/upgrades.md).
    """
    label = workflow.version_label
    shape = [
        (spec.name, spec.output, sorted(deps[spec.name]), spec.params, spec.retries,
         spec.critical, workflow.queue_of(spec), spec.model, spec.map, spec.min_success,
         stable(spec.timeout, code=label is None), stable(spec.fallback, code=label is None),
         spec.max_cost)
        + ((getattr(spec.fn, "__qualname__", ""), code_hash(spec.fn)) if label is None else ())
        # Only when set, so that the versions of workflows without it do not change.
        + ((str(spec.on_error),) if spec.on_error is not None else ())
        + ((f"gather={spec.gather}",) if spec.gather is not None else ())
        for spec in workflow.steps.values()
    ]
    digest = hashlib.sha256(repr(shape).encode()).hexdigest()
    return digest[:16] if label is None else f"{label}-{digest[:8]}"
