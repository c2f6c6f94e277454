"""Workflows exercised by the durability tests (``test_durability.py``).

Imported by the test process (to submit runs) and by every session worker (through
``ORCH_IMPORTS``). Steps observe and are steered through Redis (the session's DB, like
the broker): call counters (``count_call`` / ``calls`` of the main test workflows), a
*fail flag* per ticket, a *release list* per ticket that a blocked step pops, and cache
counters per ticket that outlive a run.

Queues:

- ``it.default`` (the session's prefork worker) for resume, idempotency and the cache;
- ``CANCEL_QUEUE``: the steps after the blocking one in the cancellation test, served
  only by the worker that test starts, stops and restarts;
- ``OWN_QUEUE``: served only by the worker the poison-step / malformed-message tests
  start with ``ORCH_MAX_CRASHES=2``.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from billiard.process import current_process
from celery.signals import task_postrun

from orchestration import NonRetryableError, StepContext, Workflow
from tests.integration.support.workflows.common import QUEUE, _redis, count_call

CANCEL_QUEUE = "it.dur.cancel"
OWN_QUEUE = "it.dur.own"
BLOCK_LIMIT_S = 30.0  # a blocked step gives up after this (its test failed anyway)


def fail_flag_key(ticket: str) -> str:
    """While this Redis key exists, ``analyse`` of runs with this ticket fails."""
    return f"it:dur:fail:{ticket}"


def release_key(ticket: str) -> str:
    """The Redis list ``gate`` of runs with this ticket pops before it returns."""
    return f"it:dur:release:{ticket}"


def cache_counter_key(ticket: str) -> str:
    """Calls of the cached steps with this ticket, across runs."""
    return f"it:dur:cache-calls:{ticket}"


def cache_calls(ticket: str) -> int:
    """How many times a cached step's function really ran for ``ticket``."""
    value = _redis().get(cache_counter_key(ticket))
    return int(value) if value is not None else 0


def _count_cache_call(ticket: str) -> int:
    client = _redis()
    value = int(client.incr(cache_counter_key(ticket)))
    client.expire(cache_counter_key(ticket), 3600)
    return value


# -- resume: fetch -> analyse (fails while the flag is set) -> report -----------------------

resumable = Workflow("it_dur_resume", queue=QUEUE)


@resumable.task
def fetch(ticket: str, ctx: StepContext) -> str:
    count_call(ctx)
    return f"doc-{ticket}"


@resumable.task
def analyse(fetch: str, ticket: str, ctx: StepContext) -> str:
    count_call(ctx)
    if _redis().exists(fail_flag_key(ticket)):
        raise NonRetryableError(f"analysis model down for {ticket}")
    return fetch.upper()


@resumable.task
def report(analyse: str, ctx: StepContext) -> str:
    count_call(ctx)
    return f"report:{analyse}"


# -- resume of a run with a secret-named input (stored redacted) -----------------------------

secret_resume = Workflow("it_dur_secret_resume", queue=QUEUE)


@secret_resume.task
def authorize(ticket: str, api_key: str, ctx: StepContext) -> int:
    """Fails while the ticket's flag is set; answers the length of the key it received."""
    count_call(ctx)
    if _redis().exists(fail_flag_key(ticket)):
        raise NonRetryableError(f"auth service down for {ticket}")
    return len(api_key)


# -- idempotent submission from many processes ---------------------------------------------

idempotent = Workflow("it_dur_idem", queue=QUEUE)


@idempotent.task
def charge(order: str, ctx: StepContext) -> str:
    count_call(ctx)
    return f"charged {order}"


# -- the step result cache -------------------------------------------------------------------

cached = Workflow("it_dur_cache", queue=QUEUE)


@cached.task(cache=True)
def embed_doc(ticket: str, x: int) -> str:
    """Its output names the call that produced it, so a cache hit is recognisable."""
    return f"{ticket}:{x}:call{_count_cache_call(ticket)}"


ttl_cached = Workflow("it_dur_cache_ttl", queue=QUEUE)


@ttl_cached.task(cache=1)  # one second
def embed_briefly(ticket: str) -> str:
    return f"{ticket}:call{_count_cache_call(ticket)}"


# -- cancellation: gate blocks on Redis; the steps after it are on a queue of their own ------


def consumed_key(run_id: str) -> str:
    """Steps of an ``it_dur_cancel`` run whose message a worker has finished processing."""
    return f"it:dur:consumed:{run_id}"


def consumed_steps(run_id: str) -> set[str]:
    """What ``consumed_key`` holds (read by the test)."""
    return {item.decode() for item in _redis().lrange(consumed_key(run_id), 0, -1)}


@task_postrun.connect(weak=False)
def _record_consumed(sender: Any = None, kwargs: dict[str, Any] | None = None,
                     retval: Any = None, **_: Any) -> None:
    """Record which steps a processed ``it_dur_cancel`` message covered.

    From the task name and from the envelope it passed on (a step it did not run is in
    ``blocked``), so this holds whether or not several steps travel in one message.
    """
    name = getattr(sender, "name", "") or ""
    if not name.startswith(f"{cancellable.name}.") or not isinstance(retval, dict):
        return
    run_id = retval.get("run")
    if not isinstance(run_id, str):
        return
    steps = {name.partition(".")[2], *retval.get("blocked", ()), *retval.get("out", {})}
    client = _redis()
    client.rpush(consumed_key(run_id), *sorted(steps))
    client.expire(consumed_key(run_id), 3600)


cancellable = Workflow("it_dur_cancel", queue=CANCEL_QUEUE)


def wait_for_release(ticket: str) -> None:
    """Block until the test pushes to ``release_key(ticket)`` (or BLOCK_LIMIT_S passes)."""
    # Short BLPOPs: redis-py's default socket timeout (5 s) would cut a longer one short.
    deadline = time.monotonic() + BLOCK_LIMIT_S
    while time.monotonic() < deadline:
        if _redis().blpop([release_key(ticket)], timeout=1):
            return
    raise TimeoutError(f"{release_key(ticket)} was not pushed within {BLOCK_LIMIT_S:g} s")


@cancellable.task(queue=QUEUE)
def gate(ticket: str, ctx: StepContext) -> str:
    count_call(ctx)
    wait_for_release(ticket)
    return ticket


@cancellable.task
def after_gate(gate: str, ctx: StepContext) -> str:
    count_call(ctx)
    return f"after:{gate}"


@cancellable.task
def last_step(after_gate: str, ctx: StepContext) -> str:
    count_call(ctx)
    return f"last:{after_gate}"


# -- a poison step: its pool process dies on every delivery ----------------------------------

poison = Workflow("it_dur_poison", queue=OWN_QUEUE)


@poison.task
def swallow_pill(ctx: StepContext) -> str:
    count_call(ctx)
    if not current_process().name.startswith("ForkPoolWorker"):
        raise RuntimeError("swallow_pill must run in a prefork pool process")
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


healthy = Workflow("it_dur_healthy", queue=OWN_QUEUE)


@healthy.task
def ping(text: str, ctx: StepContext) -> str:
    count_call(ctx)
    return f"pong:{text}"


# -- inputs that must be refused at submit ------------------------------------------------------

sink = Workflow("it_dur_sink", queue=QUEUE, inputs=["payload"])


@sink.task
def measure_payload(payload: str) -> int:
    return len(payload)
