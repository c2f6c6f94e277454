"""Workflows of the reliability tests (``test_reliability.py``): fatal steps, poison messages.

Imported by the test process and every worker (through ``ORCH_IMPORTS``). The same
workflows exist once per pool, each on a queue that only that test module's worker of
that pool serves (``REL_QUEUES``): a step raising ``SystemExit`` must not be able to
hold a slot of the session's shared workers if the fix regresses.

- ``rel_<pool>_fatal.blow_up(kind)``: raises ``SystemExit``, ``KeyboardInterrupt`` or a
  bare ``BaseException`` (``kind``), with one retry; counts its calls.
- ``rel_<pool>_rescued.blow_up(kind)``: the same with a fallback, and a step after it.
- ``rel_<pool>_healthy.ping(text)``: proves the worker still serves its queue.
"""

from __future__ import annotations

from types import SimpleNamespace

from orchestration import Backoff, StepContext, Workflow
from tests.integration.support.workflows.common import count_call

REL_QUEUES = {"prefork": "it.rel.prefork", "threads": "it.rel.threads"}
FAST = Backoff(initial=0.01, maximum=0.01, jitter=0)
FATAL_KINDS = ("exit", "interrupt", "base")
FATAL_TYPES = {"exit": "builtins.SystemExit", "interrupt": "builtins.KeyboardInterrupt",
               "base": "builtins.BaseException"}


def raise_fatal(kind: str) -> None:
    """Raise the BaseException of this kind."""
    if kind == "exit":
        raise SystemExit(7)
    if kind == "interrupt":
        raise KeyboardInterrupt
    raise BaseException(f"bare BaseException ({kind})")


def blow_up(kind: str, ctx: StepContext) -> str:
    """Count the call, then raise a BaseException of ``kind``."""
    count_call(ctx)
    raise_fatal(kind)
    return "unreachable"


def rescue(kind: str) -> str:
    """The fallback of the rescued workflow."""
    return f"rescued:{kind}"


def then(blow_up: str) -> str:
    """The step after a rescued one."""
    return f"then:{blow_up}"


def ping(text: str) -> str:
    """A healthy step."""
    return f"pong:{text}"


def _define(pool: str) -> SimpleNamespace:
    queue = REL_QUEUES[pool]
    fatal = Workflow(f"rel_{pool}_fatal")
    fatal.task(queue=queue, retries=1, backoff=FAST)(blow_up)
    rescued = Workflow(f"rel_{pool}_rescued")
    rescued.task(queue=queue, fallback=rescue)(blow_up)
    rescued.task(queue=queue)(then)
    healthy = Workflow(f"rel_{pool}_healthy")
    healthy.task(queue=queue)(ping)
    return SimpleNamespace(fatal=fatal, rescued=rescued, healthy=healthy, queue=queue)


FLOWS = {pool: _define(pool) for pool in REL_QUEUES}
