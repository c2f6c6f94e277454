"""Workflows of the batching tests (``batch_size=``): batched steps that count their calls.

Every call of a batched step adds one to ``calls_key(tag)`` in the session's Redis and
appends the elements it was given to ``elements_key(tag)`` (all elements of one test
carry the test's ``tag``). While ``hold_key(tag)`` exists a call blocks (up to a minute)
after counting itself, so a test can SIGKILL the worker in the middle of a batch call.
The queues are served only by the workers a test starts.
"""

from __future__ import annotations

import json
import os
import time

from orchestration import Workflow
from tests.integration.support.workflows.common import _redis

BATCH_QUEUE = "it.batching"
POISON = -1  # the element value that fails every call it is part of
SCORED = Workflow("it_batch_scoring", inputs=["tag", "n"])
TIMED = Workflow("it_batch_timed", inputs=["tag", "n"])


def calls_key(tag: str) -> str:
    return f"it:batching:{tag}:calls"


def elements_key(tag: str) -> str:
    return f"it:batching:{tag}:elements"


def hold_key(tag: str) -> str:
    return f"it:batching:{tag}:hold"


def pid_key(tag: str) -> str:
    return f"it:batching:{tag}:pid"


def after_key(tag: str) -> str:
    return f"it:batching:{tag}:after"


def _called(tag: list[str], n: list[int]) -> None:
    client = _redis()
    key = tag[0]
    client.incr(calls_key(key))
    client.rpush(elements_key(key), json.dumps(n))
    client.expire(calls_key(key), 3600)
    client.expire(elements_key(key), 3600)
    client.set(pid_key(key), os.getpid(), ex=3600)  # the process making this call
    deadline = time.monotonic() + 60
    while client.exists(hold_key(key)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if POISON in n:
        raise ValueError(f"element {POISON} cannot be scored")


@SCORED.task(batch_size=10, batch_wait=120, queue=BATCH_QUEUE, fallback=0)
def score(tag: list[str], n: list[int]) -> list[int]:
    """Ten elements per call (a partly filled batch waits two minutes)."""
    _called(tag, n)
    return [x * 2 for x in n]


@SCORED.task(depends_on=score, queue=BATCH_QUEUE)
def after(tag: str, score: int) -> int:
    """Runs once per run after its batch: counted, to show no step ran twice."""
    _redis().incr(after_key(tag))
    return score + 1


@TIMED.task(batch_size=10, batch_wait=1.0, queue=BATCH_QUEUE)
def quick(tag: list[str], n: list[int]) -> list[int]:
    """Ten elements per call, or whatever waited one second."""
    _called(tag, n)
    return [x * 3 for x in n]
