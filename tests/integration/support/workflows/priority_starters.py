"""The workflow of ``test_priority_starters.py``: started by ``orchestrate submit``/``emit``.

Its queue is served by no worker, so each run's first message stays in the Redis list of
its priority level (``it.prio.starters:<9 - priority>``) for the test to find.
"""

from __future__ import annotations

from orchestration import Workflow

WORKFLOW = "it_prio_starters"
QUEUE = "it.prio.starters"
EVENT = "it.prio.starters"
TRIGGER_PRIORITY = 2

starters = Workflow(WORKFLOW, inputs=["text"], queue=QUEUE)


@starters.task
def echo(text: str) -> str:
    """Never runs: nothing serves the queue."""
    return text


starters.on_event(EVENT, inputs={"text": "$.text"}, name="it_prio_starters_on_event",
                  priority=TRIGGER_PRIORITY)
