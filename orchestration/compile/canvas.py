"""Compile a workflow's decomposition into Celery canvas.

``Series`` becomes a ``chain``, ``Parallel`` a ``group``; Celery turns a group followed
by anything into a chord. The first signatures carry the run's first envelope; every
later one receives its predecessor's result. The run is finalised by its last step
when the plan ends in a single step, else by an extra ``orchestration.finalize`` task
routed to the queue of a last step (a queue that is known to have workers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from celery import chain, group
from celery.canvas import Signature, _chord

from orchestration.define.graph import Node, Parallel, Plan, Series, plan_nodes
from orchestration.define.step import BoundStep

FINALIZE_TASK = "orchestration.finalize"


def build_canvas(plan: Plan, steps: Mapping[str, BoundStep], message: dict[str, Any],
                 run_id: str, celery: Any, *, priority: int | None = None,
                 version: str | None = None) -> Signature:
    """The canvas of one run: every step once, in the plan's order, then finalisation.

    ``priority``: the broker's ``priority`` property for every message of the run (see
    :mod:`orchestration.core.priority`); Celery keeps a signature's options through
    chains and chord callbacks, and the worker's own publishes inherit it.
    ``version``: the run's workflow version, in every step message's kwargs (a worker
    carrying another version parks the message: worker/versions.py).
    """
    options: dict[str, Any] = {} if priority is None else {"priority": priority}
    sign = partial(_sign, celery, version, options)
    last = plan_nodes(plan)[-1]
    ends_in_step = isinstance(plan, Node) or (
        isinstance(plan, Series) and isinstance(plan.parts[-1], Node)
    )
    canvas = _build(plan, steps, message, run_id, sign, first=True,
                    finalizer=last if ends_in_step else None, keep_result=False)
    if ends_in_step:
        return canvas
    finalize = sign(FINALIZE_TASK, args=(), kwargs={"run_id": run_id},
                    queue=steps[last].queue, ignore_result=True)
    return chain(canvas, finalize)


def _sign(celery: Any, version: str | None, options: dict[str, Any], name: str,
          **fields: Any) -> Signature:
    """A signature; a step's (not finalize's) names the run's workflow version."""
    if version is not None and name != FINALIZE_TASK:
        fields["kwargs"] = {**fields.get("kwargs", {}), "version": version}
    return celery.signature(name, **fields, **options)


def with_priority(signature: Any, priority: int) -> Any:
    """``signature`` with every message in it (chains, groups, chord bodies) at ``priority``.

    For canvases a worker builds mid-run (a map's chunks, a child run, the rest of a
    fused chain): Celery fills a task's default priority in before it would inherit the
    current message's, so the run's priority is set explicitly.
    """
    if isinstance(signature, list | tuple):
        for part in signature:
            with_priority(part, priority)
        return signature
    if isinstance(signature, _chord):
        with_priority(signature.tasks, priority)
        with_priority(signature.body, priority)
    elif isinstance(signature, chain | group):
        with_priority(signature.tasks, priority)
    signature.options["priority"] = priority
    return signature


def _build(plan: Plan, steps: Mapping[str, BoundStep], message: dict[str, Any], run_id: str,
           sign: Callable[..., Signature], *, first: bool, finalizer: str | None,
           keep_result: bool) -> Signature:
    # Only results a chord collects are read back from the result backend: a chain hands
    # its result to the next message directly. Not storing the others saves a backend
    # write per step and the client's result subscription on submit.
    if isinstance(plan, Node):
        step = steps[plan.name]
        kwargs: dict[str, Any] = {"run_id": run_id}
        if plan.name == finalizer:
            kwargs["finalize"] = True
        args = (message,) if first else ()
        return sign(step.spec.task_name, args=args, kwargs=kwargs, queue=step.queue,
                    ignore_result=not keep_result)
    if isinstance(plan, Series):
        runs = _fusible_runs(plan.parts, steps)
        last = len(runs) - 1
        parts = [
            _fused(run, steps, message, run_id, sign, first=first and index == 0,
                   finalizer=finalizer, keep_result=keep_result and index == last)
            if isinstance(run, list) else
            _build(run, steps, message, run_id, sign, first=first and index == 0,
                   finalizer=finalizer, keep_result=keep_result and index == last)
            for index, run in enumerate(runs)
        ]
        return parts[0] if len(parts) == 1 else chain(*parts)
    if isinstance(plan, Parallel):
        # A group is always a chord header here (the plan ends with a step or finalize).
        return group(*[_build(part, steps, message, run_id, sign, first=first, finalizer=None,
                              keep_result=True)
                       for part in plan.parts])
    raise TypeError(f"not a plan: {plan!r}")


def fusible(step: BoundStep) -> bool:
    """A step that can share a message with its neighbours.

    A map replaces its message; a step with its own max_parallel may wait for a permit
    (parked with its message), and a batched step waits for its batch: each keeps a
    message of its own.
    """
    spec = step.spec
    return spec.map is None and spec.limit is None and spec.batch_size is None


def _fusible_runs(parts: tuple[Plan, ...],
                  steps: Mapping[str, BoundStep]) -> list[Plan | list[str]]:
    """Consecutive single steps on one queue become one fused run (a list of names).

    One message then runs them in order, each with its own claim, policies and record:
    the broker round trips of a chain on one queue disappear, nothing else changes.
    """
    runs: list[Plan | list[str]] = []
    for part in parts:
        if isinstance(part, Node) and fusible(steps[part.name]):
            previous = runs[-1] if runs else None
            if isinstance(previous, list) and steps[previous[-1]].queue == steps[part.name].queue:
                previous.append(part.name)
                continue
            runs.append([part.name])
            continue
        runs.append(part)
    return runs


def _fused(names: list[str], steps: Mapping[str, BoundStep], message: dict[str, Any],
           run_id: str, sign: Callable[..., Signature], *, first: bool, finalizer: str | None,
           keep_result: bool) -> Signature:
    if len(names) == 1:
        return _build(Node(names[0]), steps, message, run_id, sign, first=first,
                      finalizer=finalizer, keep_result=keep_result)
    head = steps[names[0]]
    kwargs: dict[str, Any] = {"run_id": run_id, "fused": names}
    if finalizer in names:
        kwargs["finalize"] = True
    return sign(head.spec.task_name, args=(message,) if first else (), kwargs=kwargs,
                queue=head.queue, ignore_result=not keep_result)
