"""The priority tests' workflow: two steps on queues only the test's own worker serves.

Each step appends its run's tag to a Redis list when it ends, so the test reads the
order in which runs finished (and their second steps: later messages of a run keep its
priority).
"""

from __future__ import annotations

import time

from orchestration import Workflow
from tests.integration.support.workflows.common import _redis

PRIORITY_QUEUE = "it.priority"
LATER_QUEUE = "it.priority.later"  # the second step: a message of its own
STEP_S = 0.05


def finished_key(tag: str) -> str:
    """The Redis list of the tags of a test's runs, in the order they finished."""
    return f"it:priority:{tag}"


prioritised = Workflow("it_priority", inputs=["batch", "tag"], queue=PRIORITY_QUEUE)


@prioritised.task
def first(batch: str, tag: str) -> str:
    time.sleep(STEP_S)
    return tag


@prioritised.task(depends_on=first, queue=LATER_QUEUE)
def second(batch: str, first: str) -> str:
    time.sleep(STEP_S)
    client = _redis()
    client.rpush(finished_key(batch), first)
    client.expire(finished_key(batch), 3600)
    return first
