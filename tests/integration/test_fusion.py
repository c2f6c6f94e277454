"""Step fusion on real workers: consecutive steps on one queue share one message and still
behave as separate steps (records, retries through the broker, timeouts, other queues,
child runs, maps).

The workflows live in this module; the two workers of this module import it
(``ORCH_IMPORTS=tests.integration.test_fusion``) and are the only ones serving its queues:

- ``it-fusion-a``: ``-P prefork -c 2`` on ``it.fusion``;
- ``it-fusion-b``: ``-P threads -c 2`` on ``it.fusion.other``.

Every step call appends ``<step>:<pid>`` to a Redis list per run (``ORCH_REDIS_URL``, the
session's DB), so the test sees which functions ran, in which order and in which process,
across processes. The session's ``ORCH_INLINE_RETRY_LIMIT`` is 0.2 s (conftest): a
backoff of 0.01 s retries inside the message, one of 0.5 s goes back to the broker.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.canvas import Signature, _chain

from orchestration import (
    Backoff,
    RunStatus,
    StepContext,
    StepStatus,
    Workflow,
    get_run,
    list_runs,
)
from orchestration.compile.canvas import build_canvas
from orchestration.core.envelope import Envelope
from tests.integration.support.helpers import statuses, wait_until
from tests.support.runs import assert_in_order
from tests.support.workers import Worker, Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

QUEUE = "it.fusion"
OTHER_QUEUE = "it.fusion.other"
MODULE = "tests.integration.test_fusion"
INLINE = Backoff(initial=0.01, maximum=0.01, jitter=0.0)
BROKER = Backoff(initial=0.5, maximum=0.5, jitter=0.0)  # over ORCH_INLINE_RETRY_LIMIT (0.2)
SLOW_TIMEOUT_S = 0.5
RUN_TIMEOUT = 60
SLOW_LIMIT_S = 2 * RUN_TIMEOUT  # the slow body gives up waiting for its release after this

# -- cross-process call log (Redis) --------------------------------------------------------

_clients: dict[int, redis.Redis] = {}
_clients_lock = threading.Lock()


def _redis() -> redis.Redis:
    # One client per process: a prefork child must not reuse its parent's socket.
    pid = os.getpid()
    with _clients_lock:
        client = _clients.get(pid)
        if client is None:
            url = os.environ.get("ORCH_REDIS_URL") or os.environ["ORCH_BROKER_URL"]
            client = _clients[pid] = redis.Redis.from_url(url)
    return client


def _key(run_id: str) -> str:
    return f"it:fusion:calls:{run_id}"


def called(ctx: StepContext) -> None:
    """Log one call of the current step (its name and process) for the current run."""
    client = _redis()
    client.rpush(_key(ctx.run_id), f"{ctx.step}:{os.getpid()}")
    client.expire(_key(ctx.run_id), 3600)


def calls(run_id: str) -> list[tuple[str, int]]:
    """(step, pid) of every step call of the run, in call order."""
    entries = [raw.decode().split(":") for raw in _redis().lrange(_key(run_id), 0, -1)]
    return [(step, int(pid)) for step, pid in entries]


def call_order(run_id: str) -> list[str]:
    return [step for step, _ in calls(run_id)]


def _release_key(run_id: str) -> str:
    return f"it:fusion:release:{run_id}"


def _ends_key(run_id: str) -> str:
    return f"it:fusion:ends:{run_id}"


def slow_body_ends(run_id: str) -> list[str]:
    """How the slow step's bodies of the run ended: 'interrupted' or 'returned'."""
    return [raw.decode() for raw in _redis().lrange(_ends_key(run_id), 0, -1)]


def _body_ended(run_id: str, how: str) -> None:
    client = _redis()
    client.rpush(_ends_key(run_id), how)
    client.expire(_ends_key(run_id), 3600)


# -- workflows ------------------------------------------------------------------------------

linear = Workflow("it_fusion_linear", queue=QUEUE, inputs=["x"])


@linear.task
def l1(x: int, ctx: StepContext) -> int:
    called(ctx)
    return x + 1


@linear.task
def l2(l1: int, ctx: StepContext) -> int:
    called(ctx)
    return l1 * 10


@linear.task(timeout=30)
def l3(l2: int, ctx: StepContext) -> int:
    called(ctx)
    return l2 + 3


@linear.task
def l4(l3: int, x: int, ctx: StepContext) -> list[int]:
    called(ctx)
    return [l3, x]


def _retry_workflow(name: str, backoff: Backoff) -> Workflow:
    wf = Workflow(name, queue=QUEUE, inputs=["x"])

    @wf.task
    def before(x: int, ctx: StepContext) -> int:
        called(ctx)
        return x + 1

    @wf.task(retries=2, backoff=backoff)
    def flaky(before: int, ctx: StepContext) -> int:
        called(ctx)
        if ctx.attempt == 1:
            raise ConnectionError("first attempt dropped")
        return before * 2

    @wf.task
    def after(flaky: int, ctx: StepContext) -> int:
        called(ctx)
        return flaky + 1

    return wf


retry_inline = _retry_workflow("it_fusion_retry_inline", INLINE)
retry_broker = _retry_workflow("it_fusion_retry_broker", BROKER)

timeouts = Workflow("it_fusion_timeouts", queue=QUEUE, inputs=["x"])


@timeouts.task(timeout=10)
def quick(x: int, ctx: StepContext) -> int:
    called(ctx)
    return x


@timeouts.task(timeout=SLOW_TIMEOUT_S, fallback="fallback value")
def slow(quick: int, ctx: StepContext) -> str:
    """Runs until the test releases it, after the run ended (or SLOW_LIMIT_S passed)."""
    called(ctx)
    client = _redis()
    try:
        deadline = time.monotonic() + SLOW_LIMIT_S
        # Python bytecode between short polls: the timeout's interrupt lands here.
        while not client.exists(_release_key(ctx.run_id)) and time.monotonic() < deadline:
            time.sleep(0.01)
    except BaseException:
        _body_ended(ctx.run_id, "interrupted")
        raise
    _body_ended(ctx.run_id, "returned")
    return "too late"


@timeouts.task(timeout=10)
def later(slow: str, ctx: StepContext) -> str:
    called(ctx)
    return f"got {slow}"


@timeouts.task
def last(later: str, ctx: StepContext) -> str:
    called(ctx)
    return later.upper()


queues = Workflow("it_fusion_queues", queue=QUEUE, inputs=["x"])


@queues.task
def a1(x: int, ctx: StepContext) -> int:
    called(ctx)
    return x + 1


@queues.task
def a2(a1: int, ctx: StepContext) -> int:
    called(ctx)
    return a1 + 1


@queues.task(queue=OTHER_QUEUE)
def elsewhere(a2: int, ctx: StepContext) -> int:
    called(ctx)
    return a2 * 100


@queues.task
def b1(elsewhere: int, ctx: StepContext) -> int:
    called(ctx)
    return elsewhere + 1


@queues.task
def b2(b1: int, ctx: StepContext) -> int:
    called(ctx)
    return b1 + 1


kid = Workflow("it_fusion_kid", queue=OTHER_QUEUE, inputs=["n"])


@kid.task
def c1(n: int, ctx: StepContext) -> int:
    called(ctx)
    return n * 3


@kid.task
def c2(c1: int, ctx: StepContext) -> int:
    called(ctx)
    return c1 + 1


parent = Workflow("it_fusion_parent", queue=QUEUE, inputs=["x"])


@parent.task
def p1(x: int, ctx: StepContext) -> int:
    called(ctx)
    return x + 1


@parent.task
def p2(p1: int, ctx: StepContext) -> Any:
    called(ctx)
    return ctx.run_child(kid, n=p1)


@parent.task
def p3(p2: dict[str, Any], ctx: StepContext) -> int:
    called(ctx)
    return int(p2["c2"]) * 2


@parent.task
def p4(p3: int, p1: int, ctx: StepContext) -> list[int]:
    called(ctx)
    return [p3, p1]


mapped = Workflow("it_fusion_map", queue=QUEUE, inputs=["x"])


@mapped.task
def f1(x: int, ctx: StepContext) -> int:
    called(ctx)
    return x


@mapped.task
def f2(f1: int, ctx: StepContext) -> list[int]:
    called(ctx)
    return list(range(f1))


@mapped.task(map="f2", chunk_size=3, concurrency=4)
def each(f2: int, ctx: StepContext) -> int:
    called(ctx)
    return f2 * f2


@mapped.task
def f3(each: list[int], ctx: StepContext) -> int:
    called(ctx)
    return sum(each)


@mapped.task
def f4(f3: int, f1: int, ctx: StepContext) -> list[int]:
    called(ctx)
    return [f3, f1]


# -- workers and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def fusion_workers(workers: Workers, worker_logs: Path) -> Iterator[dict[str, Worker]]:
    """The only workers on this module's queues; they import this module's workflows."""
    pool = Workers(worker_logs, env={**os.environ, "ORCH_IMPORTS": MODULE})
    try:
        started = {
            "a": pool.start("it-fusion-a", [QUEUE], pool="prefork", concurrency=2, wait=False),
            "b": pool.start("it-fusion-b", [OTHER_QUEUE], pool="threads", concurrency=2,
                            wait=False),
        }
        for worker in started.values():
            pool.wait_ready(worker)
        assert pool.serving(QUEUE) == [started["a"].nodename]
        assert pool.serving(OTHER_QUEUE) == [started["b"].nodename]
        yield started
    finally:
        pool.stop_all()


def canvas_of(wf: Workflow) -> Signature:
    """The canvas a run of ``wf`` would send (not sent)."""
    compiled = wf.validate()
    run_id = str(uuid.uuid4())
    message = Envelope.for_inputs(run_id, {"x": 1}, 10_000).to_message()
    return build_canvas(compiled.decomposition.plan, compiled.steps, message, run_id,
                        wf.app.celery)


# -- tests ----------------------------------------------------------------------------------


def test_a_fused_chain_records_every_step(fusion_workers: dict[str, Worker]) -> None:
    canvas = canvas_of(linear)
    assert not isinstance(canvas, _chain)
    assert canvas.kwargs["fused"] == ["l1", "l2", "l3", "l4"] and canvas.kwargs["finalize"]

    result = linear.submit(x=4).wait(timeout=RUN_TIMEOUT)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.outputs == {"l1": 5, "l2": 50, "l3": 53, "l4": [53, 4]}
    names = ["l1", "l2", "l3", "l4"]
    for name in names:
        step = result.steps[name]
        assert (step.status, step.attempts, step.deliveries) == (StepStatus.SUCCEEDED, 1, 1)
        assert (step.queue, step.worker) == (QUEUE, fusion_workers["a"].nodename)
        assert [a["status"] for a in step.attempt_log] == ["succeeded"]
        assert [a["worker"] for a in step.attempt_log] == [fusion_workers["a"].nodename]
    assert_in_order(result, names)
    logged = calls(result.run_id)
    assert [step for step, _ in logged] == names
    # One message: the four steps ran in one pool process of the prefork worker.
    assert len({pid for _, pid in logged}) == 1, logged


@pytest.mark.parametrize("wf, deliveries", [(retry_inline, 1), (retry_broker, 2)],
                         ids=["inline", "through-the-broker"])
def test_a_retry_of_a_fused_step_does_not_rerun_the_steps_before_it(
        fusion_workers: dict[str, Worker], wf: Workflow, deliveries: int) -> None:
    began = time.monotonic()
    result = wf.submit(x=1).wait(timeout=RUN_TIMEOUT)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.outputs == {"before": 2, "flaky": 4, "after": 5}
    assert call_order(result.run_id) == ["before", "flaky", "flaky", "after"]
    flaky = result.steps["flaky"]
    assert (flaky.attempts, flaky.deliveries) == (2, deliveries)
    assert [a["status"] for a in flaky.attempt_log] == ["failed", "succeeded"]
    assert flaky.attempt_log[0]["error_type"] == "builtins.ConnectionError"
    before, after = result.steps["before"], result.steps["after"]
    assert (before.attempts, before.deliveries, after.attempts, after.deliveries) == (1, 1, 1, 1)
    assert_in_order(result, ["before", "flaky", "after"])
    if deliveries == 2:
        assert time.monotonic() - began >= BROKER.initial


def test_each_fused_step_honours_its_own_timeout(fusion_workers: dict[str, Worker]) -> None:
    handle = timeouts.submit(x=1)
    try:
        # The slow body runs until released, after the run: the run ending at all means
        # the later fused steps did not wait for the abandoned attempt.
        result = handle.wait(timeout=RUN_TIMEOUT)
    finally:
        _redis().set(_release_key(handle.run_id), 1, ex=3600)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    slow_step = result.steps["slow"]
    assert (slow_step.status, slow_step.output, slow_step.attempts) == (
        StepStatus.FALLBACK, "fallback value", 1)
    assert slow_step.error_type == "orchestration.errors.StepTimeout"
    assert f"timeout of {SLOW_TIMEOUT_S:g} s" in (slow_step.error or ""), slow_step.error
    assert result.outputs["later"] == "got fallback value"
    assert result.outputs["last"] == "GOT FALLBACK VALUE"
    assert statuses(result) == {"quick": "succeeded", "slow": "fallback",
                                "later": "succeeded", "last": "succeeded"}
    assert call_order(result.run_id) == ["quick", "slow", "later", "last"]
    assert_in_order(result, ["quick", "slow", "later", "last"])
    # The timeout interrupted the slow body: it never ran to its end, released or not.
    ended = wait_until(lambda: slow_body_ends(result.run_id), timeout=RUN_TIMEOUT,
                       what="the slow body to end")
    assert ended == ["interrupted"]


def test_a_step_on_another_queue_is_not_fused(fusion_workers: dict[str, Worker]) -> None:
    canvas = canvas_of(queues)
    assert isinstance(canvas, _chain)
    assert [(p.task, p.kwargs.get("fused"), p.options["queue"]) for p in canvas.tasks] == [
        ("it_fusion_queues.a1", ["a1", "a2"], QUEUE),
        ("it_fusion_queues.elsewhere", None, OTHER_QUEUE),
        ("it_fusion_queues.b1", ["b1", "b2"], QUEUE),
    ]

    result = queues.submit(x=1).wait(timeout=RUN_TIMEOUT)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.outputs == {"a1": 2, "a2": 3, "elsewhere": 300, "b1": 301, "b2": 302}
    a, b = fusion_workers["a"].nodename, fusion_workers["b"].nodename
    assert {name: (step.queue, step.worker) for name, step in result.steps.items()} == {
        "a1": (QUEUE, a), "a2": (QUEUE, a), "elsewhere": (OTHER_QUEUE, b),
        "b1": (QUEUE, a), "b2": (QUEUE, a)}
    logged = calls(result.run_id)
    assert [step for step, _ in logged] == ["a1", "a2", "elsewhere", "b1", "b2"]
    pids = dict(logged)
    assert pids["a1"] == pids["a2"] and pids["b1"] == pids["b2"]
    assert pids["elsewhere"] != pids["a1"]  # another worker process
    assert_in_order(result, ["a1", "a2", "elsewhere", "b1", "b2"])


def test_a_fused_step_that_starts_a_child_hands_on_the_rest(
        fusion_workers: dict[str, Worker]) -> None:
    assert canvas_of(parent).kwargs["fused"] == ["p1", "p2", "p3", "p4"]

    result = parent.submit(x=1).wait(timeout=RUN_TIMEOUT)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.outputs == {"p1": 2, "p2": {"c1": 6, "c2": 7}, "p3": 14, "p4": [14, 2]}
    assert call_order(result.run_id) == ["p1", "p2", "p3", "p4"]
    assert Counter(call_order(result.run_id))["p2"] == 1
    for name in ("p1", "p2", "p3", "p4"):
        step = result.steps[name]
        assert (step.status, step.deliveries) == (StepStatus.SUCCEEDED, 1), step
    assert_in_order(result, ["p1", "p2", "p3", "p4"])
    # The child ran on the other queue, between p2 and p3.
    children = [get_run(r.run_id) for r in list_runs(workflow=kid.name, limit=1000)]
    child = next(run for run in children if run.parent_run_id == result.run_id)
    assert child.status is RunStatus.SUCCEEDED
    assert call_order(child.run_id) == ["c1", "c2"]
    assert {step.worker for step in child.steps.values()} == {fusion_workers["b"].nodename}
    assert child.finished_at is not None
    assert result.steps["p2"].started_at <= child.finished_at <= result.steps["p3"].started_at
    assert result.steps["p3"].worker == result.steps["p4"].worker == fusion_workers["a"].nodename


def test_a_map_between_fused_steps(fusion_workers: dict[str, Worker]) -> None:
    canvas = canvas_of(mapped)
    assert isinstance(canvas, _chain)
    assert [(p.task, p.kwargs.get("fused")) for p in canvas.tasks] == [
        ("it_fusion_map.f1", ["f1", "f2"]), ("it_fusion_map.each", None),
        ("it_fusion_map.f3", ["f3", "f4"])]

    result = mapped.submit(x=10).wait(timeout=RUN_TIMEOUT)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    squares = [i * i for i in range(10)]
    assert result.outputs == {"f1": 10, "f2": list(range(10)), "each": squares,
                              "f3": sum(squares), "f4": [sum(squares), 10]}
    order = call_order(result.run_id)
    assert order[:2] == ["f1", "f2"] and order[-2:] == ["f3", "f4"]
    assert Counter(order)["each"] == 10
    each_step = result.steps["each"]
    assert (each_step.status, each_step.attempts) == (StepStatus.SUCCEEDED, 10)
    assert sorted(a["map_index"] for a in each_step.attempt_log) == list(range(10))
    assert_in_order(result, ["f1", "f2", "each", "f3", "f4"])
