"""The workflow of the two-process beat test (``test_schedules.py``).

Imported by the ``orchestrate beat`` processes that test starts (``ORCH_IMPORTS``): a
schedule that ticks every second, on a queue no worker serves (its runs stay pending).
"""

from __future__ import annotations

from orchestration import Workflow

WORKFLOW = "it_beat_every_second"
SCHEDULE = "it_every_second"
QUEUE = "it.beat.unserved"

every_second = Workflow(WORKFLOW, inputs=["report"], queue=QUEUE)


@every_second.task
def build(report: str) -> str:
    """Never runs: nothing serves the queue."""
    return report


every_second.schedule("* * * * * */1", inputs={"report": "live"}, overlap="allow",
                      name=SCHEDULE)
