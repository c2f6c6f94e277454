"""The workflows of the fork tests (``test_forks.py``): parallel branches without a chord.

A top-level parallel group whose branches are one message each is a *fork*
(compile/canvas.py): the message before it sends the branches, runs one on its own queue
in the same delivery, and the branch completing the join runs the step after the group
(worker/forks.py). Every step counts its calls in Redis and says it started
(``_started``); the step named by the ``hang`` input hangs on its first call, so a test
can SIGKILL the worker while it runs inline in another message's delivery.

- ``it_fork_diamond``: a -> (b, c) -> d, all on one queue: one of b, c runs in a's
  delivery, d in the delivery of the branch that completes the join;
- ``it_fork_split``: the same with c on another queue: b (the first branch on a's queue)
  is the one that runs in a's delivery, for sure;
- ``it_fork_roots``: two root steps then their join (the run starts with the group);
- ``it_fork_failing``: a -> (b, c) -> d where c fails (critically, no retry).

Every message published for these workflows, by any process, is listed in Redis per run
(:func:`sent`), so a test can see which steps had a message of their own.
"""

from __future__ import annotations

import time
from typing import Any

from celery import signals

from orchestration import StepContext, Workflow
from orchestration.compile.packing import BUNDLE, BUNDLE_TASK
from tests.integration.support.workflows.common import _redis
from tests.integration.support.workflows.liveness import HANG_LIMIT_S, _started

FORK_QUEUE = "it.fork"
FORK_OTHER_QUEUE = "it.fork.other"
PREFIX = "it_fork"


def sent_key(run_id: str) -> str:
    """A Redis list of the step names of every message published for ``run_id``."""
    return f"it:fork:sent:{run_id}"


def sent(run_id: str) -> list[str]:
    """The steps (``fused`` ones joined by ``+``) whose messages were published, in order."""
    return [name.decode() for name in _redis().lrange(sent_key(run_id), 0, -1)]


@signals.before_task_publish.connect(weak=False)
def _record_sent(sender: str | None = None, body: Any = None, **_: Any) -> None:
    """List a message of these workflows under its run (test process and workers alike);
    a bundle (several step messages in one) as ``bundle(<steps>)``."""
    kwargs = body[1] if isinstance(body, list | tuple) else (body or {}).get("kwargs", {})
    if sender == BUNDLE_TASK:
        items = [item for item in (kwargs or {}).get(BUNDLE) or ()
                 if str(item[0]).startswith(f"{PREFIX}_")]
        if items:
            run_id = items[0][2].get("run_id")
            steps = ",".join(str(item[0]).rsplit(".", 1)[-1] for item in items)
            _redis().rpush(sent_key(run_id), f"bundle({steps})")
            _redis().expire(sent_key(run_id), 3600)
        return
    if not sender or not sender.startswith(f"{PREFIX}_"):
        return
    run_id = (kwargs or {}).get("run_id")
    if not run_id:
        return
    step = "+".join(kwargs.get("fused") or [sender.rsplit(".", 1)[-1]])
    client = _redis()
    client.rpush(sent_key(run_id), step)
    client.expire(sent_key(run_id), 3600)


def _step(ctx: StepContext, hang: str) -> None:
    """Count the call; hang on the first one when this is the step named by ``hang``."""
    if _started(ctx) == 1 and ctx.step == hang:
        time.sleep(HANG_LIMIT_S)


# -- a diamond on one queue ----------------------------------------------------------------

diamond = Workflow(f"{PREFIX}_diamond", queue=FORK_QUEUE)


@diamond.task(retries=0)
def a(n: int, hang: str, ctx: StepContext) -> int:
    _step(ctx, hang)
    return n


@diamond.task(retries=0)
def b(a: int, hang: str, ctx: StepContext) -> int:
    _step(ctx, hang)
    return a * 10


@diamond.task(retries=0)
def c(a: int, hang: str, ctx: StepContext) -> int:
    _step(ctx, hang)
    return a * 100


@diamond.task(retries=0)
def d(b: int, c: int, hang: str, ctx: StepContext) -> int:
    _step(ctx, hang)
    return b + c + 1


# -- the same, c on another queue: b runs inline -------------------------------------------

split = Workflow(f"{PREFIX}_split", queue=FORK_QUEUE)
split.task(retries=0)(a)
split.task(retries=0)(b)
split.task(retries=0, queue=FORK_OTHER_QUEUE)(c)
split.task(retries=0)(d)


# -- a run that starts with its group ------------------------------------------------------

roots = Workflow(f"{PREFIX}_roots", queue=FORK_QUEUE)


@roots.task(retries=0)
def left(n: int, ctx: StepContext) -> int:
    _started(ctx)
    return n + 1


@roots.task(retries=0)
def right(n: int, ctx: StepContext) -> int:
    _started(ctx)
    return n + 2


@roots.task(retries=0)
def both(left: int, right: int, ctx: StepContext) -> int:
    _started(ctx)
    return left * right


# -- a branch that fails -------------------------------------------------------------------

failing = Workflow(f"{PREFIX}_failing", queue=FORK_QUEUE)
failing.task(retries=0)(a)
failing.task(retries=0)(b)


@failing.task(retries=0, name="c")
def c_fails(a: int, ctx: StepContext) -> int:
    _started(ctx)
    raise ValueError(f"branch c fails (a={a})")


failing.task(retries=0)(d)
