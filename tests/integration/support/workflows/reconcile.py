"""Workflows exercised by the reconciler tests (``test_reconciler.py``).

Imported by the test process (to submit runs) and by every session worker (through
``ORCH_IMPORTS``). Their steps on ``LOST_QUEUE`` are what a reconciler exists for: no
worker serves that queue when a run is submitted, the test drops the queued message (as
a broker restarted empty would), and only a worker the test starts afterwards serves it.
"""

from __future__ import annotations

from orchestration import StepContext, Workflow
from tests.integration.support.workflows.common import QUEUE, count_call

LOST_QUEUE = "it.rec.lost"  # served only by the worker a reconciler test starts
BEAT_QUEUE = "it.rec.beat"  # where the beat test's scheduler sends orchestration.reconcile

# -- first (session worker) -> second (LOST_QUEUE): a run stranded half-way -------------------

half_done = Workflow("it_rec_half", queue=QUEUE)


@half_done.task
def first(ticket: str, ctx: StepContext) -> str:
    count_call(ctx)
    return f"first:{ticket}"


@half_done.task(queue=LOST_QUEUE)
def second(first: str, ctx: StepContext) -> str:
    count_call(ctx)
    return f"second:{first}"


# -- one step on LOST_QUEUE: a run stranded before it started --------------------------------

stranded = Workflow("it_rec_stranded", queue=LOST_QUEUE)


@stranded.task
def only(ticket: str, ctx: StepContext) -> str:
    count_call(ctx)
    return f"only:{ticket}"


# -- a secret-named input: stored redacted, so the reconciler cannot re-dispatch it ----------

secret = Workflow("it_rec_secret", queue=LOST_QUEUE)


@secret.task
def use_key(ticket: str, api_key: str, ctx: StepContext) -> int:
    count_call(ctx)
    return len(api_key)
