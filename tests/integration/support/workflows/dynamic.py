"""Dynamic workflows exercised by the integration tests: maps, branches, child runs and
human waits.

Imported by the test process (to submit runs) and by every worker (through
``ORCH_IMPORTS``). Map, child and human-wait steps run on queues of their own that only
the workers started by their tests serve, so those tests choose exactly which workers
take part; branch steps, parent steps and the expiring human wait run on the session's
prefork queue.

Cross-process observations go through Redis (the session's DB, like the broker):

- call counters (``count_call`` / ``calls``) and per-element counters keyed by run and
  map index, shared by every worker process;
- the *publish log*: every task message of the big map workflow (``BIG_MAP``) that any
  process publishes is appended to ``publish_log_key(run_id)`` by a
  ``before_task_publish`` handler (task name, chunk start and length, JSON size of the
  body). The map's chunk messages are published by a worker, not by the test process,
  so this is how a test sees them;
- the *finished log* (``finished(run_id)``): every message of the parent and child
  workflows a worker handled (``task_postrun``: task, the steps it carried, its state),
  so a test knows a step's message was handled even when the step was refused.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from celery.signals import before_task_publish, task_postrun

from orchestration import Backoff, NonRetryableError, StepContext, Workflow
from orchestration.execute.maps import MAP_COLLECT_TASK
from orchestration.store.map_chunks import MapChunks
from tests.integration.support.workflows.common import QUEUE, _redis

MAP_QUEUE = "it.dyn.map"  # served only by the map tests' two workers
CHILD_QUEUE = "it.dyn.child"  # served only by the child tests' worker
HUMAN_QUEUE = "it.dyn.human"  # served only by the worker(s) the human-wait test starts

FAST_BACKOFF = Backoff(initial=0.01, maximum=0.05, jitter=0)
ELEMENT_SLEEP_S = 0.01  # long enough that two workers share a 200-element map
BLOCK_LIMIT_S = 30.0  # a blocked child step gives up after this (the test failed anyway)
HUMAN_TIMEOUT_S = 60.0
SHORT_HUMAN_TIMEOUT_S = 2.0


class FlakyElementError(RuntimeError):
    """What a flaky map element raises on its first call (retryable)."""


# -- Redis: counters, release keys, publish log -----------------------------------------

def _incr(key: str) -> int:
    client = _redis()
    value = int(client.incr(key))
    client.expire(key, 3600)
    return value


def _get_int(key: str) -> int:
    value = _redis().get(key)
    return int(value) if value is not None else 0


def count_call(ctx: StepContext) -> int:
    """Count one call of the current step of the current run (all processes)."""
    return _incr(f"it:dyn:calls:{ctx.run_id}:{ctx.step}")


def calls(run_id: str, step: str) -> int:
    """How many times ``step`` was called in run ``run_id``."""
    return _get_int(f"it:dyn:calls:{run_id}:{step}")


def element_key(run_id: str, index: int) -> str:
    """The Redis key counting calls of one map element."""
    return f"it:dyn:element:{run_id}:{index}"


def element_calls(run_id: str, index: int) -> int:
    """How many times map element ``index`` of run ``run_id`` was called."""
    return _get_int(element_key(run_id, index))


def started_key(release_key: str) -> str:
    """Where a blocking child step announces its (child) run id when it starts."""
    return f"{release_key}:started"


def release(release_key: str) -> None:
    """Let the child steps blocked on ``release_key`` go on."""
    _redis().set(release_key, "1", ex=3600)


def started_runs(release_key: str) -> list[str]:
    """Run ids of the steps that started blocking on ``release_key``."""
    return [value.decode() for value in _redis().lrange(started_key(release_key), 0, -1)]


def publish_log_key(run_id: str) -> str:
    """The Redis list of messages published for one run of ``BIG_MAP``."""
    return f"it:dyn:published:{run_id}"


def published(run_id: str) -> list[dict[str, Any]]:
    """What was published for one run of ``BIG_MAP`` (read by the tests)."""
    return [json.loads(raw) for raw in _redis().lrange(publish_log_key(run_id), 0, -1)]


def finished_key(run_id: str) -> str:
    """The Redis list of messages of parent/child workflows that workers finished."""
    return f"it:dyn:finished:{run_id}"


def finished(run_id: str) -> list[dict[str, Any]]:
    """Messages of ``run_id`` that a worker finished: task, steps it carried, final state."""
    return [json.loads(raw) for raw in _redis().lrange(finished_key(run_id), 0, -1)]


# -- maps --------------------------------------------------------------------------------


def transform(value: int) -> int:
    """What ``square`` computes for one element (the test computes it too)."""
    return value * value + 1


dyn_map = Workflow("it_dyn_map", queue=MAP_QUEUE, inputs=["values"])


@dyn_map.task(map="values")
def square(values: int) -> int:
    """One element (``values`` is the element here); a few ms, so both workers get chunks."""
    time.sleep(ELEMENT_SLEEP_S)
    return transform(values)


map_quorum = Workflow("it_dyn_map_quorum", queue=MAP_QUEUE, inputs=["values"])
QUORUM = 0.7


@map_quorum.task(map="values", min_success=QUORUM)
def checked(values: int) -> int:
    """Negative elements fail (not retried)."""
    if values < 0:
        raise NonRetryableError(f"negative element {values}")
    return values * 10


@map_quorum.task
def tally(checked: list[int | None]) -> dict[str, int]:
    return {"total": len(checked), "missing": sum(1 for value in checked if value is None)}


map_soft = Workflow("it_dyn_map_soft", queue=MAP_QUEUE, inputs=["values"])


@map_soft.task(map="values", critical=False)
def soft_checked(values: int) -> int:
    """Negative elements fail; the map is not critical and has no quorum."""
    if values < 0:
        raise NonRetryableError(f"negative element {values}")
    return values * 10


@map_soft.task
def soft_tally(soft_checked: list[int | None]) -> list[int | None]:
    return soft_checked


map_flaky = Workflow("it_dyn_map_flaky", queue=MAP_QUEUE, inputs=["values"])


def is_flaky(value: int) -> bool:
    """Elements that fail on their first call."""
    return value % 3 == 0


@map_flaky.task(map="values", retries=2, backoff=FAST_BACKOFF)
def wobbly_element(values: int, ctx: StepContext) -> int:
    """Multiples of 3 fail on their first call (counted per run and index), then answer."""
    assert ctx.map_index is not None
    if _incr(element_key(ctx.run_id, ctx.map_index)) == 1 and is_flaky(values):
        raise FlakyElementError(f"element {ctx.map_index} flaked")
    return values + 1000


BIG_MAP = Workflow("it_dyn_map_big", queue=MAP_QUEUE, inputs=["items"])
BIG_MAP_STEP = "noop"


@BIG_MAP.task(name=BIG_MAP_STEP, map="items")
def noop(items: int) -> int:
    return items


# -- a map whose chunk's worker process dies after parking its results --------------------

KILLED_MAP = Workflow("it_dyn_map_killed", queue=MAP_QUEUE, inputs=["items"])
KILLED_MAP_STEP = "killed_labelled"
KILLED_CHUNK_START = 0  # the chunk whose first delivery's process dies


def killed_label(item: int) -> str:
    """An element's result: ~33 bytes of JSON, so a chunk of 20 parks its results."""
    return f"element-{item:05d}-of-a-killed-map"


@KILLED_MAP.task(name=KILLED_MAP_STEP, map="items")
def killed_labelled(items: int) -> str:
    return killed_label(items)


def killed_chunk_parks(run_id: str) -> int:
    """How many times the killed chunk parked its results (the first process then died)."""
    return _get_int(f"it:dyn:killed:{run_id}")


def _die_after_parking(put: Callable[..., bool]) -> Callable[..., bool]:
    """``MapChunks.put``, except that the first delivery of chunk 0 of ``KILLED_MAP``
    dies right after its results are committed: before its message is acknowledged or
    its return value stored, so the broker delivers it again."""

    def put_then_die(self: MapChunks, run_id: str, step: str, start: int,
                     *args: Any, **kwargs: Any) -> bool:
        written = put(self, run_id, step, start, *args, **kwargs)
        if step == KILLED_MAP_STEP and start == KILLED_CHUNK_START \
                and _incr(f"it:dyn:killed:{run_id}") == 1:
            os._exit(1)
        return written

    return put_then_die


MapChunks.put = _die_after_parking(MapChunks.put)  # type: ignore[method-assign]


@before_task_publish.connect(weak=False)
def _log_big_map_publish(sender: str | None = None, body: Any = None,
                         headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Record the messages of the big map (its step, chunks and collector) in Redis."""
    task = sender or (headers or {}).get("task") or ""
    if not (task.startswith(f"{BIG_MAP.name}.") or task == MAP_COLLECT_TASK):
        return
    kwargs = body[1] if isinstance(body, list | tuple) and len(body) == 3 else {}
    run_id = kwargs.get("run_id") if isinstance(kwargs, dict) else None
    if not run_id or (task == MAP_COLLECT_TASK and kwargs.get("step") != f"{BIG_MAP.name}."
                      f"{BIG_MAP_STEP}"):
        return
    chunk = kwargs.get("chunk")
    entry = {
        "task": task,
        "chunk_start": chunk["start"] if chunk else None,
        "chunk_items": len(chunk["items"]) if chunk else None,
        "body_bytes": len(json.dumps(body, separators=(",", ":"), default=str).encode()),
        "pid": os.getpid(),
    }
    client = _redis()
    client.rpush(publish_log_key(run_id), json.dumps(entry))
    client.expire(publish_log_key(run_id), 3600)


# -- conditional branches --------------------------------------------------------------------

branches = Workflow("it_dyn_branches", queue=QUEUE, inputs=["x"])


@branches.task
def route(x: str) -> str:
    return x


@branches.task(when=lambda route: route == "a")
def a(route: str, ctx: StepContext) -> str:
    count_call(ctx)
    return f"A({route})"


@branches.task(when=lambda route: route == "b")
def b(route: str, ctx: StepContext) -> str:
    count_call(ctx)
    return f"B({route})"


@branches.task
def only_b(b: str, ctx: StepContext) -> str:
    """Depends on ``b`` alone: not selected whenever ``b`` is not."""
    count_call(ctx)
    return f"after {b}"


@branches.task
def join(a: str | None, b: str | None, ctx: StepContext) -> dict[str, str | None]:
    count_call(ctx)
    return {"a": a, "b": b}


# -- child runs ------------------------------------------------------------------------------

child_flow = Workflow("it_dyn_child", queue=CHILD_QUEUE, inputs=["text", "release_key"])


@child_flow.task
def hold(text: str, release_key: str, ctx: StepContext) -> str:
    """Announce the start, then block until the test sets ``release_key`` in Redis."""
    count_call(ctx)
    client = _redis()
    client.rpush(started_key(release_key), ctx.run_id)
    client.expire(started_key(release_key), 3600)
    deadline = time.monotonic() + BLOCK_LIMIT_S
    while not client.exists(release_key):
        if time.monotonic() > deadline:
            raise NonRetryableError(f"{release_key} was never released")
        time.sleep(0.02)
    return text.upper()


@child_flow.task
def shout(hold: str, ctx: StepContext) -> str:
    count_call(ctx)
    return f"{hold}!"


parent_flow = Workflow("it_dyn_parent", queue=QUEUE, inputs=["text", "release_key"])


@parent_flow.task
def delegate(text: str, release_key: str, ctx: StepContext) -> Any:
    count_call(ctx)
    return ctx.run_child(child_flow, text=text, release_key=release_key)


@parent_flow.task
def wrap_up(delegate: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    count_call(ctx)
    return {"from_child": delegate}


@task_postrun.connect(weak=False)
def _record_finished(sender: Any = None, kwargs: dict[str, Any] | None = None,
                     state: str | None = None, **_: Any) -> None:
    """Record every finished message of the parent and child workflows, by run.

    A message may carry several fused steps (``fused``); a message that replaced itself
    (a child run started) finishes ``IGNORED``. Lets a test know that a step's message was
    delivered and handled even when the step itself was refused (cancelled).
    """
    name = getattr(sender, "name", None) or ""
    if not name.startswith((f"{parent_flow.name}.", f"{child_flow.name}.")):
        return
    run_id = (kwargs or {}).get("run_id")
    if not run_id:
        return
    steps = (kwargs or {}).get("fused") or [name.rsplit(".", 1)[-1]]
    client = _redis()
    client.rpush(finished_key(run_id), json.dumps({"task": name, "steps": steps,
                                                   "state": state}))
    client.expire(finished_key(run_id), 3600)


# -- human waits -----------------------------------------------------------------------------

human = Workflow("it_dyn_human", queue=HUMAN_QUEUE, inputs=["request"])


@human.task
def prepare(request: str, ctx: StepContext) -> str:
    count_call(ctx)
    return request.upper()


@human.task
def approval(prepare: str, ctx: StepContext) -> dict[str, Any]:
    """Parks the run until someone approves; the second call receives the input."""
    count_call(ctx)
    decision = ctx.wait_for_input("approval", timeout=HUMAN_TIMEOUT_S)
    return {"request": prepare, "decision": decision}


@human.task
def announce(approval: dict[str, Any]) -> str:
    return f"{approval['request']} approved={approval['decision'].get('ok')}"


HUMAN_FALLBACK = {"decision": "auto-declined"}
human_timeout = Workflow("it_dyn_human_timeout", queue=QUEUE, inputs=["request"])


@human_timeout.task(fallback=HUMAN_FALLBACK)
def quick_approval(request: str, ctx: StepContext) -> dict[str, Any]:
    """Nobody answers within SHORT_HUMAN_TIMEOUT_S: the fallback is the output."""
    count_call(ctx)
    decision = ctx.wait_for_input("approval", timeout=SHORT_HUMAN_TIMEOUT_S)
    return {"decision": decision}


@human_timeout.task
def after_quick(quick_approval: dict[str, Any]) -> str:
    return f"decision={quick_approval['decision']}"
