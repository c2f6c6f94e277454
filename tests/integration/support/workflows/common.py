"""Workflows exercised by the integration tests.

Imported by the test process (to submit runs) and by every worker (through
``ORCH_IMPORTS``), so everything here must be importable without side effects beyond
registering steps on the default orchestrator. Steps that must behave differently per
attempt ("fail twice, then succeed") count their calls in Redis, keyed by run id, so
the count is shared by every worker process and survives a re-delivery.
"""

from __future__ import annotations

import inspect
import os
import signal
import time
from typing import Any

import redis
from billiard.process import current_process

from orchestration import Backoff, NonRetryableError, StepContext, Workflow
from tests.support.redis_clients import process_client

# Queues. The session workers serve the first three; nothing serves LONELY_QUEUE until a
# test starts a worker for it.
QUEUE = "it.default"  # prefork worker
OTHER_QUEUE = "it.other"  # the same prefork worker
THREADS_QUEUE = "it.threads"  # threads worker (concurrency 4)
LONELY_QUEUE = "it.lonely"

FAST_BACKOFF = Backoff(initial=0.01, maximum=0.05, jitter=0)  # well under the inline limit
SLOW_BACKOFF = Backoff(initial=0.5, maximum=0.5, jitter=0)  # over ORCH_INLINE_RETRY_LIMIT=0.2
FANOUT_WIDTH = 50
SLEEP_FOREVER_S = 60  # longer than any test waits for a run


class FlakyModelError(RuntimeError):
    """What the flaky steps raise: a stand-in for a model provider's 5xx."""


# -- cross-process call counters ---------------------------------------------------------


def _redis() -> redis.Redis:
    """This process's client of the session's Redis (the counters live there)."""
    return process_client(os.environ.get("ORCH_REDIS_URL") or os.environ["ORCH_BROKER_URL"])


def counter_key(run_id: str, step: str) -> str:
    """The Redis key counting calls of ``step`` in run ``run_id``."""
    return f"it:calls:{run_id}:{step}"


def count_call(ctx: StepContext) -> int:
    """Count one call of the current step of the current run; returns the new count."""
    client = _redis()
    key = counter_key(ctx.run_id, ctx.step)
    calls = int(client.incr(key))
    client.expire(key, 3600)
    return calls


def calls(run_id: str, step: str) -> int:
    """How many times ``step`` was called in run ``run_id`` (read by the tests)."""
    value = _redis().get(counter_key(run_id, step))
    return int(value) if value is not None else 0


# -- routing: one chain over three queues ------------------------------------------------

routing = Workflow("it_routing", queue=QUEUE)


@routing.task
def tokenize(text: str) -> list[str]:
    return text.split()


@routing.task(queue=OTHER_QUEUE)
def embed(tokenize: list[str]) -> list[int]:
    return [len(token) for token in tokenize]


@routing.task(queue=THREADS_QUEUE)
def score(embed: list[int]) -> int:
    return sum(embed)


# -- uneven branches: a1 (slow) -> a2 (fast) beside b1 (fast) -> b2 (slow), then a join --

uneven = Workflow("it_uneven", queue=THREADS_QUEUE)
UNEVEN_LIMIT_S = 30.0


def b2_started_key(run_id: str) -> str:
    """Set by ``b2`` of the run as it starts; ``a1`` runs until then."""
    return f"it:uneven:b2-started:{run_id}"


@uneven.task
def a1(ctx: StepContext) -> str:
    # Ends once b2 has started (or after UNEVEN_LIMIT_S): with independent branches b2
    # starts while a1 still runs; a level-by-level compile would start it after a1 ended.
    deadline = time.monotonic() + UNEVEN_LIMIT_S
    while not _redis().exists(b2_started_key(ctx.run_id)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "a1"


@uneven.task
def a2(a1: str) -> str:
    time.sleep(0.1)
    return a1 + ">a2"


@uneven.task
def b1() -> str:
    time.sleep(0.1)
    return "b1"


@uneven.task
def b2(b1: str, ctx: StepContext) -> str:
    _redis().set(b2_started_key(ctx.run_id), 1, ex=3600)
    time.sleep(0.1)
    return b1 + ">b2"


@uneven.task
def join(a2: str, b2: str) -> str:
    return f"{a2}+{b2}"


# -- fan-out: FANOUT_WIDTH parallel steps, then a join that sums them ----------------------

fanout = Workflow("it_fanout", queue=THREADS_QUEUE)
PART_NAMES = [f"part_{index:02d}" for index in range(FANOUT_WIDTH)]


def _make_part(index: int) -> Any:
    def part(base: int) -> int:
        return base + index

    part.__name__ = PART_NAMES[index]
    return fanout.task(name=PART_NAMES[index], output=PART_NAMES[index])(part)


PARTS = [_make_part(index) for index in range(FANOUT_WIDTH)]


def _total(**parts: int) -> int:
    return sum(parts.values())


# Binding is by parameter name, so the join declares one keyword parameter per part.
_total.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in PART_NAMES]
)
total = fanout.task(name="total")(_total)


# -- retries -------------------------------------------------------------------------------

retries = Workflow("it_retries", queue=QUEUE)


@retries.task(retries=3, backoff=FAST_BACKOFF)
def flaky(ctx: StepContext) -> str:
    """Fails on its first two calls, then answers."""
    if count_call(ctx) <= 2:
        raise FlakyModelError("provider returned 503")
    return "ok"


exhausted = Workflow("it_exhausted", queue=QUEUE)


@exhausted.task(retries=2, backoff=FAST_BACKOFF)
def hopeless(ctx: StepContext) -> str:
    """Always fails (critical by default)."""
    count_call(ctx)
    raise FlakyModelError("provider returned 503")


broker_retry = Workflow("it_broker_retry", queue=QUEUE)


@broker_retry.task(retries=2, backoff=SLOW_BACKOFF)
def patient(ctx: StepContext) -> str:
    """Fails once; its backoff is too long to sleep in the worker."""
    if count_call(ctx) <= 1:
        raise FlakyModelError("provider returned 503")
    return "eventually"


# -- per-attempt timeouts under each pool --------------------------------------------------


def sleep_release_key(run_id: str) -> str:
    """The Redis list each ``sleepy`` call of the run blocks on until the test pushes to it."""
    return f"it:sleepy:release:{run_id}"


def _sleep_too_long(ctx: StepContext) -> str:
    count_call(ctx)
    # Blocks in C until released (after the run) or SLEEP_FOREVER_S: the timeout must not
    # wait for it.
    _redis().blpop([sleep_release_key(ctx.run_id)], timeout=SLEEP_FOREVER_S)
    return "too late"


timeout_prefork = Workflow("it_timeout_prefork", queue=QUEUE)
timeout_prefork.task(name="sleepy", timeout=0.5, retries=1, backoff=FAST_BACKOFF)(_sleep_too_long)

timeout_threads = Workflow("it_timeout_threads", queue=THREADS_QUEUE)
timeout_threads.task(name="sleepy", timeout=0.5, retries=1, backoff=FAST_BACKOFF)(_sleep_too_long)


# -- fallbacks -----------------------------------------------------------------------------

fallback_value = Workflow("it_fallback_value", queue=QUEUE)


@fallback_value.task(fallback="support_tier_1")
def pick_team(ticket_id: int) -> str:
    raise NonRetryableError(f"router model down for ticket {ticket_id}")


@fallback_value.task
def notify(pick_team: str) -> str:
    return f"notified {pick_team}"


def summary_fallback(text: str, limit: int) -> str:
    """The callable fallback of ``summarize``: same arguments as the step."""
    return f"FALLBACK[{limit}]:{text[:limit]}"


fallback_callable = Workflow("it_fallback_callable", queue=QUEUE)


@fallback_callable.task(fallback=summary_fallback)
def summarize(text: str, limit: int) -> str:
    raise NonRetryableError("summariser model down")


@fallback_callable.task
def publish(summarize: str) -> str:
    return f"published {summarize}"


# -- failure isolation ---------------------------------------------------------------------

critical = Workflow("it_critical", queue=QUEUE)


@critical.task
def bad(ctx: StepContext) -> str:
    count_call(ctx)
    raise NonRetryableError("classifier is down")


@critical.task
def after_bad(bad: str, ctx: StepContext) -> str:
    count_call(ctx)  # must never be called
    return bad


@critical.task
def good(text: str) -> str:
    return text.upper()


@critical.task
def after_good(good: str) -> str:
    return f"{good}!"


# A critical failure deep in one branch of a chord: everything downstream of it, including
# the join (which also finalises the run), is skipped; the other branch completes.
critical_chain = Workflow("it_critical_chain", queue=QUEUE)


@critical_chain.task
def fails(ctx: StepContext) -> str:
    count_call(ctx)
    raise NonRetryableError("embedding model is down")


@critical_chain.task(queue=OTHER_QUEUE)
def second(fails: str, ctx: StepContext) -> str:
    count_call(ctx)
    return fails


@critical_chain.task(queue=THREADS_QUEUE)
def third(second: str, ctx: StepContext) -> str:
    count_call(ctx)
    return second


@critical_chain.task
def fine(text: str) -> str:
    return text[::-1]


@critical_chain.task
def summary(third: str, fine: str, ctx: StepContext) -> str:
    count_call(ctx)
    return f"{third}/{fine}"


non_critical = Workflow("it_non_critical", queue=QUEUE)


@non_critical.task(critical=False)
def soft(text: str) -> str:
    raise NonRetryableError("enrichment model is down")


@non_critical.task
def after_soft(soft: str | None, text: str) -> str:
    return f"soft={soft!r} text={text}"


# -- a queue nobody serves (until the test starts a worker) --------------------------------

lonely = Workflow("it_lonely", queue=QUEUE)


@lonely.task
def nearby(text: str) -> str:
    return f"near:{text}"


@lonely.task(queue=LONELY_QUEUE)
def faraway(text: str) -> str:
    return f"far:{text}"


# -- a broker retry inside a parallel branch (a chord header) ------------------------------

branch_retry = Workflow("it_branch_retry", queue=QUEUE)


@branch_retry.task
def steady(text: str) -> str:
    return text.upper()


@branch_retry.task(retries=2, backoff=SLOW_BACKOFF)
def wobbly(text: str, ctx: StepContext) -> str:
    """Fails once; the retry goes through the broker while ``steady`` has finished."""
    if count_call(ctx) <= 1:
        raise FlakyModelError("provider returned 503")
    return text[::-1]


@branch_retry.task
def merge(steady: str, wobbly: str) -> str:
    return f"{steady}|{wobbly}"


# -- outputs and inputs too large to travel inline ------------------------------------------

large = Workflow("it_large", queue=QUEUE)
LARGE_BYTES = 40_000  # well over the default inline limit (16 KiB)


@large.task
def expand(seed: str) -> str:
    return (seed * (LARGE_BYTES // len(seed) + 1))[:LARGE_BYTES]


@large.task(queue=OTHER_QUEUE)
def measure(expand: str, blob: list[int]) -> dict[str, int]:
    return {"expand": len(expand), "blob": len(blob), "blob_sum": sum(blob)}


# -- idempotent submission -------------------------------------------------------------------

once = Workflow("it_once", queue=QUEUE)


@once.task
def stamp(text: str, ctx: StepContext) -> str:
    count_call(ctx)
    return text


# -- a worker process that dies mid-step -----------------------------------------------------

crash = Workflow("it_crash", queue=QUEUE)


@crash.task
def fragile(ctx: StepContext) -> str:
    """Kills its own prefork pool process on the first call; answers on the re-delivery."""
    if count_call(ctx) == 1:
        if not current_process().name.startswith("ForkPoolWorker"):
            raise RuntimeError("fragile must run in a prefork pool process")
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


# -- an output JSON cannot carry -------------------------------------------------------------

not_json = Workflow("it_not_json", queue=QUEUE)


@not_json.task
def ratio(count: int) -> float:
    """NaN: Python's json emits it, but it is not JSON (PostgreSQL's jsonb rejects it)."""
    return float("nan") if count == 0 else 1 / count


not_jsonb = Workflow("it_not_jsonb", queue=QUEUE)


@not_jsonb.task
def extract(pages: int) -> str:
    """Text with a NUL character (as text pulled from PDFs has): valid JSON, not jsonb."""
    return "\x00".join(f"page {n}" for n in range(pages))



# -- SQLite as the results DB of several worker processes ------------------------------
SQLITE_QUEUE = "it.sqlite"  # served only by the workers test_sqlite_results starts

sqlite_diamond = Workflow("it_sqlite_diamond", queue=SQLITE_QUEUE)


@sqlite_diamond.task
def source(n: int, ctx: StepContext) -> int:
    """Counts its calls, so the test can prove each step ran exactly once."""
    count_call(ctx)
    return n


@sqlite_diamond.task
def double(source: int, ctx: StepContext) -> int:
    count_call(ctx)
    return source * 2


@sqlite_diamond.task
def square(source: int, ctx: StepContext) -> int:
    count_call(ctx)
    return source * source


@sqlite_diamond.task(name="total")
def sqlite_total(double: int, square: int, ctx: StepContext) -> int:
    count_call(ctx)
    return double + square
