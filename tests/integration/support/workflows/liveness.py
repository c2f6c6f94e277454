"""Workflows of the liveness tests (``test_liveness.py``): DB outages, dead workers.

Imported by the test process and by every session worker (``ORCH_IMPORTS``); the queues
here are served only by the workers those tests start, with their own settings (their
own PostgreSQL cluster, short heartbeats). Steps count their calls and say they started
through Redis (the session's DB, like the broker).

- ``it_outage``: one 4 s step, so a test can stop the results DB while it runs;
- ``it_liveness``: three steps whose second hangs on its first call only, so a test can
  SIGKILL the worker's main process mid-step and see the run finish after a restart;
- ``it_exit``: a step that ends its worker process (``os._exit``) every time.
"""

from __future__ import annotations

import os
import time

from orchestration import StepContext, Workflow
from orchestration.app import Orchestrator
from tests.integration.support.workflows.common import _redis, count_call

OUTAGE_QUEUE = "it.outage"
LIVENESS_QUEUE = "it.live"
EXIT_QUEUE = "it.exit"
BACKLOG_QUEUE = "it.backlog"  # served by no worker: its messages are a backlog
OUTAGE_STEP_S = 4.0
HANG_LIMIT_S = 60.0


def started_key(run_id: str, step: str) -> str:
    """A Redis list that gets one entry each time ``step`` of ``run_id`` starts."""
    return f"it:live:started:{run_id}:{step}"


def _started(ctx: StepContext) -> int:
    calls = count_call(ctx)
    client = _redis()
    client.rpush(started_key(ctx.run_id, ctx.step), str(os.getpid()))
    client.expire(started_key(ctx.run_id, ctx.step), 3600)
    return calls


# -- a results-DB outage mid-step ------------------------------------------------------


def slow_write(ticket: str, ctx: StepContext) -> dict[str, str]:
    _started(ctx)
    time.sleep(OUTAGE_STEP_S)
    return {"ticket": ticket}


def define_outage(app: Orchestrator | None = None) -> Workflow:
    """The outage workflow, bound to ``app`` (the test's own DB) or the default."""
    workflow = Workflow("it_outage", queue=OUTAGE_QUEUE, app=app)
    workflow.task(retries=0)(slow_write)
    return workflow


outage = define_outage()


# -- a worker's main process killed mid-step ------------------------------------------


def first(ticket: str) -> str:
    return ticket


def hang_once(first: str, ctx: StepContext) -> str:
    """Hangs on its first call (the test kills the worker meanwhile); then returns."""
    if _started(ctx) == 1:
        time.sleep(HANG_LIMIT_S)
    return f"{first}-done"


def last(hang_once: str) -> str:
    return hang_once.upper()


def define_liveness(app: Orchestrator | None = None) -> Workflow:
    """The three-step workflow whose middle step hangs once."""
    workflow = Workflow("it_liveness", queue=LIVENESS_QUEUE, app=app)
    workflow.task(first)
    workflow.task(hang_once)
    workflow.task(last)
    return workflow


liveness = define_liveness()


# -- a step that kills its worker ------------------------------------------------------


def exit_process(ticket: str, ctx: StepContext) -> str:
    _started(ctx)
    os._exit(17)


def define_exit(app: Orchestrator | None = None) -> Workflow:
    """A one-step workflow whose step ends its worker process every time."""
    workflow = Workflow("it_exit", queue=EXIT_QUEUE, app=app)
    workflow.task(exit_process)
    return workflow


exits = define_exit()


# -- a backlog nobody drains -------------------------------------------------------------


def waits_in_line(ticket: str) -> str:
    return ticket


backlog = Workflow("it_backlog", queue=BACKLOG_QUEUE)
backlog.task(waits_in_line)
