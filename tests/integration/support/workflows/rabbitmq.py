"""Workflows run over RabbitMQ by ``test_rabbitmq.py``.

Imported by the RabbitMQ workers and the submitting subprocess (their ``ORCH_IMPORTS``
names only this module) and by the test process, for names. Its queues are served only
by the workers that test starts, on a RabbitMQ virtual host of the test's own. Call
counters and the kill/release handshake go through the session's Redis DB.
"""

from __future__ import annotations

import inspect
import os
import time
from typing import Any

from orchestration import StepContext, Workflow
from tests.integration.support.workflows.common import _redis, count_call

RMQ_QUEUE = "it.rmq.steps"
RMQ_OTHER_QUEUE = "it.rmq.other"
FANOUT_WIDTH = 6
BLOCK_LIMIT_S = 30.0
WORK_S = 0.02  # each chain step "works" this long, so a batch is mid-flight for a while


def pid_key(run_id: str) -> str:
    """Where ``hold`` writes the pid of the pool process running it (one per call)."""
    return f"it:rmq:pid:{run_id}"


def release_key(run_id: str) -> str:
    """The Redis list ``hold`` pops before it returns."""
    return f"it:rmq:release:{run_id}"


# -- four steps in a chain, over two queues ---------------------------------------------------

chain4 = Workflow("it_rmq_chain", queue=RMQ_QUEUE)


@chain4.task
def ingest(n: int, ctx: StepContext) -> int:
    count_call(ctx)
    time.sleep(WORK_S)
    return n


@chain4.task(queue=RMQ_OTHER_QUEUE)
def enrich(ingest: int, ctx: StepContext) -> int:
    count_call(ctx)
    time.sleep(WORK_S)
    return ingest * 10


@chain4.task
def rank(enrich: int, ctx: StepContext) -> int:
    count_call(ctx)
    time.sleep(WORK_S)
    return enrich + 1


@chain4.task(queue=RMQ_OTHER_QUEUE)
def publish(rank: int, ctx: StepContext) -> str:
    count_call(ctx)
    time.sleep(WORK_S)
    return f"published {rank}"


# -- fan-out and join -------------------------------------------------------------------------

fanout = Workflow("it_rmq_fanout", queue=RMQ_QUEUE)
PART_NAMES = [f"shard_{index}" for index in range(FANOUT_WIDTH)]


def _make_part(index: int) -> Any:
    def part(base: int, ctx: StepContext) -> int:
        count_call(ctx)
        return base + index

    part.__name__ = PART_NAMES[index]
    queue = RMQ_QUEUE if index % 2 == 0 else RMQ_OTHER_QUEUE
    return fanout.task(name=PART_NAMES[index], output=PART_NAMES[index], queue=queue)(part)


PARTS = [_make_part(index) for index in range(FANOUT_WIDTH)]


def _gather(ctx: StepContext, **shards: int) -> int:
    count_call(ctx)
    return sum(shards.values())


# Binding is by parameter name: one keyword parameter per shard (and ctx).
_gather.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in PART_NAMES]
)
gather = fanout.task(name="gather")(_gather)


# -- a step whose pool process the test kills mid-step -----------------------------------------

crash = Workflow("it_rmq_crash", queue=RMQ_QUEUE)


@crash.task
def prepare(text: str, ctx: StepContext) -> str:
    count_call(ctx)
    return text.upper()


@crash.task
def hold(prepare: str, ctx: StepContext) -> str:
    """Records its pid, then blocks until the test releases it."""
    count_call(ctx)
    client = _redis()
    client.rpush(pid_key(ctx.run_id), os.getpid())
    client.expire(pid_key(ctx.run_id), 3600)
    deadline = time.monotonic() + BLOCK_LIMIT_S
    while time.monotonic() < deadline:  # short BLPOPs: redis-py's socket timeout is 5 s
        if client.blpop([release_key(ctx.run_id)], timeout=1):
            return f"held {prepare}"
    raise TimeoutError("never released")


@crash.task(queue=RMQ_OTHER_QUEUE)
def wrap_up(hold: str, ctx: StepContext) -> str:
    count_call(ctx)
    return f"{hold}, done"
