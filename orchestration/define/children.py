"""Sub-workflows: a step starts another workflow as a child run and receives its outputs.

A step returns ``ctx.run_child(other, **inputs)``. The runtime writes the child run (its
own row, a parent link, its own queues and policies) and replaces the parent step's
message with the child's canvas followed by ``orchestration.child_done``, which records
the parent step from the child's outcome and passes the parent's envelope on. The parent
holds no worker slot while the child runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestration.define.workflow import Workflow
from orchestration.errors import InvalidInput

CHILD_DONE_TASK = "orchestration.child_done"


@dataclass(frozen=True)
class ChildRun:
    """What ``ctx.run_child`` returns: return it from the step to start the child."""

    workflow: Workflow
    inputs: dict[str, Any]


def child_request(workflow: Workflow, inputs: dict[str, Any]) -> ChildRun:
    """Check the child's inputs now (a bad child fails the parent's attempt, not later)."""
    if not isinstance(workflow, Workflow):
        raise InvalidInput(f"run_child takes a Workflow, got {workflow!r}")
    compiled = workflow.validate()
    return ChildRun(workflow, workflow.check_inputs(compiled, inputs))


def child_idempotency_key(parent_run: str, step: str) -> str:
    """One child per parent step, however often the parent step is delivered."""
    return f"child:{parent_run}:{step}"
