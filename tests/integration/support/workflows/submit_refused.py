"""The workflow of ``test_submit_refused.py``: a chain of three steps on its own queue.

``build(app)`` declares it on an orchestrator: the test process builds it on one whose
broker is a ``redis-server`` of the test's own; the worker the test starts imports this
module (``ORCH_IMPORTS``) and so declares it on its default orchestrator, which the test
points at the same server.
"""

from __future__ import annotations

import os

from orchestration import StepContext, Workflow, default_orchestrator
from orchestration.app import Orchestrator

QUEUE = "it.refused"
IMPORTED_BY_WORKER = "ORCH_SUBMIT_REFUSED_WORKER"  # set only in the worker's environment


def build(app: Orchestrator) -> Workflow:
    """``first -> second -> third`` on :data:`QUEUE` (a chain: no chord, so the test
    process keeps no pending result in the result backend)."""
    wf = Workflow("it_submit_refused", queue=QUEUE, app=app)

    @wf.task
    def first(text: str, ctx: StepContext) -> str:
        return f"{text}:{ctx.attempt}"

    @wf.task
    def second(first: str) -> str:
        return f"second({first})"

    @wf.task
    def third(second: str) -> str:
        return f"third({second})"

    return wf


if os.environ.get(IMPORTED_BY_WORKER):
    diamond = build(default_orchestrator())
