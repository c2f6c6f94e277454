"""Compile a workflow's decomposition into Celery canvas.

``Series`` becomes a ``chain``, ``Parallel`` a ``group``; Celery turns a group followed
by anything into a chord. The first signatures carry the run's first envelope; every
later one receives its predecessor's result. The run is finalised by its last step
when the plan ends in a single step, else by an extra ``orchestration.finalize`` task
routed to the queue of a last step (a queue that is known to have workers).

With ``joins`` (the deployment has a join state shared by its workers: store/joins.py),
a parallel group at the run's top level whose branches are one message each is a
*fork* instead of a chord. The message before it carries ``kwargs["fork"]``: the
branches' signatures and the *body* (everything after the group, as one signature).
Having run its steps, that message's worker sends the branches, each with
``kwargs["join"]`` (the join's id, the branch's index, the size, the body), and runs a
branch on its own queue itself, in the same delivery (worker/forks.py). Each branch
arrives at the join when done; the one completing it continues with the body, running
it in its own delivery when the body is on its queue. A diamond then costs two
messages where a chord costs four and the chord's bookkeeping. A group that starts a
run is sent as its branches, each with its join. Groups nested in a branch, branches
of several messages, and groups after a step that keeps a message of its own (a map,
a permit, a batch) stay chords.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any
from uuid import uuid4

from celery import chain, group
from celery.canvas import Signature, _chord

from orchestration.compile.packing import bundle
from orchestration.define.graph import Node, Parallel, Plan, Series, plan_nodes
from orchestration.define.step import BoundStep

FINALIZE_TASK = "orchestration.finalize"
FORK, JOIN = "fork", "join"


def build_canvas(plan: Plan, steps: Mapping[str, BoundStep], message: dict[str, Any],
                 run_id: str, celery: Any, *, priority: int | None = None,
                 version: str | None = None, joins: bool = False,
                 bundle_size: int = 1) -> Signature:
    """The canvas of one run: every step once, in the plan's order, then finalisation.

    ``priority``: the broker's ``priority`` property for every message of the run (see
    :mod:`orchestration.core.priority`); Celery keeps a signature's options through
    chains and chord callbacks, and the worker's own publishes inherit it.
    ``version``: the run's workflow version, in every step message's kwargs (a worker
    carrying another version parks the message: worker/versions.py).
    ``joins``: compile top-level parallel groups as forks (see the module);
    ``bundle_size``: the branches of a group that starts the run, on one queue, go this
    many to a message (compile/packing.py ``bundle``).
    """
    options: dict[str, Any] = {} if priority is None else {"priority": priority}
    sign = partial(_sign, celery, version, options)
    last = plan_nodes(plan)[-1]
    ends_in_step = isinstance(plan, Node) or (
        isinstance(plan, Series) and isinstance(plan.parts[-1], Node)
    )
    finalizer = last if ends_in_step else None
    tail = None if ends_in_step else sign(FINALIZE_TASK, args=(), kwargs={"run_id": run_id},
                                          queue=steps[last].queue, ignore_result=True)
    if joins:
        return _Forks(steps, message, run_id, sign, finalizer,
                      partial(bundle, size=bundle_size, celery=celery)).top(plan, tail,
                                                                             first=True)
    canvas = _build(plan, steps, message, run_id, sign, first=True, finalizer=finalizer,
                    keep_result=False)
    return canvas if tail is None else chain(canvas, tail)


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


class _Forks:
    """The top level of a run compiled with forks for its parallel groups (see module)."""

    def __init__(self, steps: Mapping[str, BoundStep], message: dict[str, Any], run_id: str,
                 sign: Callable[..., Signature], finalizer: str | None,
                 bundled: Callable[[list[Signature]], list[Signature]]) -> None:
        self.steps, self.message, self.run_id = steps, message, run_id
        self.sign, self.finalizer, self.bundled = sign, finalizer, bundled

    def build(self, plan: Plan, *, first: bool) -> Signature:
        return _build(plan, self.steps, self.message, self.run_id, self.sign, first=first,
                      finalizer=self.finalizer, keep_result=False)

    def top(self, plan: Plan, tail: Signature | None, *, first: bool) -> Signature:
        """``plan`` then ``tail``, its first forkable group a fork (the rest, recursively)."""
        parts = plan.parts if isinstance(plan, Series) else (plan,)
        for index, part in enumerate(parts):
            if not (isinstance(part, Parallel) and self._forkable(part)):
                continue
            if index == 0 and not first:
                continue  # a group right after a group (a chord's body): no message to fork
            if index > 0 and not self._one_message_end(parts[index - 1]):
                continue
            rest = parts[index + 1:]
            body = self.top(Series(tuple(rest)) if len(rest) > 1 else rest[0], tail, first=False) \
                if rest else tail
            assert body is not None  # a run ending in a group ends with its finalisation
            branches = [self.build(branch, first=index == 0) for branch in part.parts]
            fork_id = uuid4().hex
            if index == 0:  # the run starts with the group: send the branches with their join
                sent = self.bundled([with_join(branch, join_spec(fork_id, number,
                                                                 len(branches), body))
                                     for number, branch in enumerate(branches)])
                return sent[0] if len(sent) == 1 else group(*sent)
            head = parts[:index]
            canvas = self.build(Series(tuple(head)) if len(head) > 1 else head[0], first=first)
            last = canvas.tasks[-1] if isinstance(canvas, chain) else canvas
            last["kwargs"][FORK] = {"id": fork_id, "branches": [dict(b) for b in branches],
                                    "body": dict(body)}
            return canvas
        canvas = self.build(plan, first=first)
        return canvas if tail is None else chain(canvas, tail)

    def _forkable(self, part: Parallel) -> bool:
        """Every branch is one message: a step, or steps fused on one queue."""
        for branch in part.parts:
            names = [branch] if isinstance(branch, Node) else list(
                branch.parts if isinstance(branch, Series) else ())
            if not names or not all(isinstance(n, Node) and fusible(self.steps[n.name])
                                    for n in names):
                return False
            if len({self.steps[n.name].queue for n in names if isinstance(n, Node)}) != 1:
                return False
        return True

    def _one_message_end(self, part: Plan) -> bool:
        """``part`` ends in one message of fusible steps, which can carry the fork."""
        return isinstance(part, Node) and fusible(self.steps[part.name])


def join_spec(fork_id: str, index: int, size: int, body: Signature | dict[str, Any]
              ) -> dict[str, Any]:
    """What a branch's message carries to arrive at its join (see the module)."""
    return {"id": fork_id, "index": index, "size": size, "body": dict(body)}


def with_join(branch: Signature, join: dict[str, Any]) -> Signature:
    """A copy of a branch's signature that arrives at ``join`` when done."""
    joined = branch.clone()
    joined["kwargs"] = {**joined.get("kwargs", {}), JOIN: join}
    return joined
