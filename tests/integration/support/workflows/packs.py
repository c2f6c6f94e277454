"""The workflow of the packed-runs tests (``test_packs.py``): runs sharing a message.

``it_packed``: two steps on one queue (fused: the whole run is one message, so
``submit_many`` packs its runs). ``work`` hangs on its first call for the runs whose
``n`` is a multiple of 4, so a test can SIGKILL the worker while some runs of a pack are
done and others are mid-step. Calls are counted in Redis (the session's DB).
"""

from __future__ import annotations

import time

from orchestration import StepContext, Workflow
from tests.integration.support.workflows.liveness import HANG_LIMIT_S, _started

PACKED_QUEUE = "it.packed"


def hangs(n: int) -> bool:
    """The runs whose first call hangs (until the test kills their worker)."""
    return n % 4 == 0


packed = Workflow("it_packed", queue=PACKED_QUEUE)


@packed.task(retries=0)
def work(n: int, ctx: StepContext) -> int:
    if _started(ctx) == 1 and hangs(n):
        time.sleep(HANG_LIMIT_S)
    if n % 5 == 0:
        raise ValueError(f"run {n} fails on its own")
    return n * 10


@packed.task
def done(work: int) -> int:
    return work + 1
