"""The max_parallel tests' workflows, on queues only the tests' own workers serve.

Steps count themselves in Redis: the first step of a run adds its run to a set of the
test's batch and records the largest size the set reached; the last step removes it.
``held`` steps block until the test sets a release key, so a test can hold permits
(and kill the worker holding them).
"""

from __future__ import annotations

import time

from orchestration import StepContext, Workflow
from tests.integration.support.workflows.common import _redis

LIMIT_QUEUE = "it.limits"
HELD_QUEUE = "it.limits.held"
FAIR_QUEUE = "it.limits.fair"
STEP_S = 0.05
RUN_LIMIT = 3
HELD_LIMIT = 2
FAIR_LIMIT = 3

_ENTER = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 3600)
local size = redis.call('SCARD', KEYS[1])
if size > tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SET', KEYS[2], size, 'EX', 3600)
end
return size
"""


def active_key(batch: str) -> str:
    """The set of runs of ``batch`` executing now."""
    return f"it:limits:{batch}:active"


def most_key(batch: str) -> str:
    """The most runs of ``batch`` seen executing at once."""
    return f"it:limits:{batch}:most"


def release_key(batch: str) -> str:
    """Set by a test to let ``held`` steps of ``batch`` end."""
    return f"it:limits:{batch}:release"


def started_key(batch: str) -> str:
    """The runs of ``batch`` whose held step started (a list, in order)."""
    return f"it:limits:{batch}:started"


def _enter(batch: str, run_id: str) -> None:
    _redis().eval(_ENTER, 2, active_key(batch), most_key(batch), run_id)


def _leave(batch: str, run_id: str) -> None:
    _redis().srem(active_key(batch), run_id)


limited = Workflow("it_limited", inputs=["batch", "n"], queue=LIMIT_QUEUE,
                   max_parallel=RUN_LIMIT)


@limited.task
def begin(batch: str, n: int, ctx: StepContext) -> int:
    _enter(batch, ctx.run_id)
    time.sleep(STEP_S)
    return n


@limited.task(depends_on=begin)
def end(batch: str, begin: int, ctx: StepContext) -> int:
    time.sleep(STEP_S)
    _leave(batch, ctx.run_id)
    return begin


held = Workflow("it_limited_held", inputs=["batch", "n"], queue=HELD_QUEUE,
                max_parallel=HELD_LIMIT)


@held.task
def hold(batch: str, n: int, ctx: StepContext) -> int:
    client = _redis()
    client.rpush(started_key(batch), ctx.run_id)
    client.expire(started_key(batch), 3600)
    deadline = time.monotonic() + 120
    while not client.exists(release_key(batch)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


fair = Workflow("it_limited_fair", inputs=["tenant", "n"], queue=FAIR_QUEUE,
                max_parallel=FAIR_LIMIT, concurrency_key="tenant")


@fair.task
def serve(tenant: str, n: int) -> int:
    time.sleep(STEP_S)
    return n


steps_limited = Workflow("it_step_limited", inputs=["batch", "n"], queue=LIMIT_QUEUE)


@steps_limited.task
def prepare(batch: str, n: int) -> int:
    return n


@steps_limited.task(depends_on=prepare, max_parallel=2, concurrency_key="batch")
def narrow(batch: str, prepare: int, ctx: StepContext) -> int:
    _enter(batch, ctx.run_id)
    time.sleep(STEP_S)
    _leave(batch, ctx.run_id)
    return prepare
