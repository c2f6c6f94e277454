"""Step fusion, in process: consecutive steps on one queue share one message and still
behave as separate steps (records, retries, timeouts, child runs, maps around them).

Every workflow runs on one embedded orchestrator (declared before its worker starts) whose
``inline_retry_limit`` is 0.05 s, so a backoff of 0.01 s retries inside the message and one
of 0.2 s goes back to the (in-memory) broker. ``published`` (tests/unit/conftest.py) shows
the messages each run sent; the compiled canvas is checked with ``build_canvas``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery.canvas import Signature, _chain, _chord, group

from orchestration import Backoff, RunStatus, StepContext, StepStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.compile.canvas import build_canvas
from orchestration.core.envelope import Envelope
from orchestration.testing import embedded_orchestrator
from tests.support.flows import Flows
from tests.support.polling import wait_until
from tests.support.runs import assert_in_order

INLINE_RETRY_LIMIT = 0.05
INLINE = Backoff(initial=0.01, maximum=0.01, jitter=0.0)  # under the limit: in the message
BROKER = Backoff(initial=0.2, maximum=0.2, jitter=0.0)  # over it: back to the broker
Q1, Q2 = "fusion.q1", "fusion.q2"


flow = Flows()


class Calls:
    """Which step functions ran, in order, across the worker's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.order: list[str] = []

    def __call__(self, name: str) -> None:
        with self._lock:
            self.order.append(name)

    @property
    def counts(self) -> Counter[str]:
        return Counter(self.order)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    directory: Path = tmp_path_factory.mktemp("fusion")
    with embedded_orchestrator(directory, inline_retry_limit=INLINE_RETRY_LIMIT) as orch:
        yield orch


@pytest.fixture(scope="module")
def flows(app: Orchestrator) -> dict[str, SimpleNamespace]:
    """Every workflow is declared before the worker starts (on the first submit)."""
    return flow.build(app)


def run_messages(published: list[tuple[str, Any]], run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(task name, kwargs) of the step messages published for one run."""
    out = []
    for name, body in published:
        kwargs = body[1] if isinstance(body, list | tuple) and len(body) == 3 else {}
        if isinstance(kwargs, dict) and kwargs.get("run_id") == run_id:
            out.append((name, kwargs))
    return out


def compiled_canvas(wf: Workflow) -> Signature:
    """The canvas a run of ``wf`` would send (not sent)."""
    compiled = wf.validate()
    run_id = str(uuid.uuid4())
    message = Envelope.for_inputs(run_id, {"x": 1}, 10_000).to_message()
    return build_canvas(compiled.decomposition.plan, compiled.steps, message, run_id,
                        wf.app.celery)


# -- a fused chain records every step ---------------------------------------------------------


@flow
def linear(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=Calls(), wf=Workflow("fz_linear", queue=Q1, app=app))

    @ns.wf.task
    def s1(x: int) -> int:
        ns.calls("s1")
        return x + 1

    @ns.wf.task
    def s2(s1: int) -> int:
        ns.calls("s2")
        return s1 * 10

    @ns.wf.task(retries=2, timeout=5)
    def s3(s2: int) -> int:
        ns.calls("s3")
        return s2 + 3

    @ns.wf.task
    def s4(s3: int, x: int) -> list[int]:
        ns.calls("s4")
        return [s3, x]

    return ns


def test_a_linear_chain_on_one_queue_compiles_to_one_fused_signature(
        flows: dict[str, SimpleNamespace]) -> None:
    canvas = compiled_canvas(flows["linear"].wf)
    assert not isinstance(canvas, _chain), canvas
    assert canvas.task == "fz_linear.s1"
    assert canvas.kwargs["fused"] == ["s1", "s2", "s3", "s4"]
    assert canvas.kwargs["finalize"] is True  # the last fused step ends the run
    assert canvas.options["queue"] == Q1
    assert len(canvas.args) == 1  # the first envelope


def test_a_fused_chain_records_every_step(flows: dict[str, SimpleNamespace],
                                         published: list[tuple[str, Any]]) -> None:
    ns = flows["linear"]
    result = ns.wf.run(x=4, timeout=15)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs == {"s1": 5, "s2": 50, "s3": 53, "s4": [53, 4]}
    assert ns.calls.order == ["s1", "s2", "s3", "s4"]
    names = ["s1", "s2", "s3", "s4"]
    for name in names:
        step = result.steps[name]
        assert (step.status, step.attempts, step.deliveries) == (StepStatus.SUCCEEDED, 1, 1), \
            step
        assert step.queue == Q1
        assert step.latency_ms is not None and step.latency_ms >= 0
        assert [a["status"] for a in step.attempt_log] == ["succeeded"]
    workers = {result.steps[name].worker for name in names}
    assert len(workers) == 1 and None not in workers, workers
    assert_in_order(result, names)
    assert result.finished_at is not None and result.finished_at >= result.steps["s4"].finished_at
    # One message ran the four steps.
    messages = run_messages(published, result.run_id)
    assert [(name, kwargs.get("fused")) for name, kwargs in messages] == [
        ("fz_linear.s1", names)]


@flow
def critical_failure(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=Calls(), wf=Workflow("fz_critical", queue=Q1, app=app))

    @ns.wf.task
    def first(x: int) -> int:
        ns.calls("first")
        return x

    @ns.wf.task
    def broken(first: int) -> int:
        ns.calls("broken")
        raise ValueError("broken on purpose")

    @ns.wf.task
    def after(broken: int) -> int:
        ns.calls("after")
        return broken

    @ns.wf.task
    def last(after: int) -> int:
        ns.calls("last")
        return after

    return ns


def test_a_critical_failure_inside_a_fused_message_skips_the_fused_steps_after_it(
        flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["critical_failure"]
    result = ns.wf.run(x=1, timeout=15)

    assert result.status is RunStatus.FAILED
    assert result.error == "critical step(s) failed: broken"
    assert ns.calls.order == ["first", "broken"]
    statuses = {name: step.status for name, step in result.steps.items()}
    assert statuses == {"first": StepStatus.SUCCEEDED, "broken": StepStatus.FAILED,
                        "after": StepStatus.SKIPPED, "last": StepStatus.SKIPPED}
    assert result.steps["broken"].error_type == "builtins.ValueError"
    assert result.steps["after"].attempts == 0 and result.steps["last"].attempts == 0


# -- retries of one fused step ------------------------------------------------------------------


def _retry_flow(app: Orchestrator, name: str, backoff: Backoff) -> SimpleNamespace:
    ns = SimpleNamespace(calls=Calls(), wf=Workflow(name, queue=Q1, app=app))

    @ns.wf.task
    def before(x: int) -> int:
        ns.calls("before")
        return x + 1

    @ns.wf.task(retries=2, backoff=backoff)
    def flaky(before: int, ctx: StepContext) -> int:
        ns.calls("flaky")
        if ctx.attempt == 1:
            raise ConnectionError("first attempt dropped")
        return before * 2

    @ns.wf.task
    def after(flaky: int) -> int:
        ns.calls("after")
        return flaky + 1

    return ns


@flow
def retry_inline(app: Orchestrator) -> SimpleNamespace:
    return _retry_flow(app, "fz_retry_inline", INLINE)


@flow
def retry_broker(app: Orchestrator) -> SimpleNamespace:
    return _retry_flow(app, "fz_retry_broker", BROKER)


def test_an_inline_retry_of_a_fused_step_does_not_rerun_the_steps_before_it(
        flows: dict[str, SimpleNamespace], published: list[tuple[str, Any]]) -> None:
    ns = flows["retry_inline"]
    result = ns.wf.run(x=1, timeout=15)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs == {"before": 2, "flaky": 4, "after": 5}
    assert ns.calls.order == ["before", "flaky", "flaky", "after"]
    flaky = result.steps["flaky"]
    assert (flaky.attempts, flaky.deliveries) == (2, 1)
    assert [a["status"] for a in flaky.attempt_log] == ["failed", "succeeded"]
    assert [s.deliveries for s in result.steps.values()] == [1, 1, 1]
    assert len(run_messages(published, result.run_id)) == 1  # retried inside the message
    assert_in_order(result, ["before", "flaky", "after"])


def test_a_broker_retry_of_a_fused_step_does_not_rerun_the_steps_before_it(
        flows: dict[str, SimpleNamespace], published: list[tuple[str, Any]]) -> None:
    ns = flows["retry_broker"]
    began = time.monotonic()
    result = ns.wf.run(x=1, timeout=15)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs == {"before": 2, "flaky": 4, "after": 5}
    # The retry re-delivers the whole fused message; 'before' is terminal in the DB, so
    # its recorded output is passed on instead of running it again.
    assert ns.calls.counts == Counter({"before": 1, "flaky": 2, "after": 1})
    assert ns.calls.order == ["before", "flaky", "flaky", "after"]
    flaky = result.steps["flaky"]
    assert (flaky.attempts, flaky.deliveries) == (2, 2)
    assert [a["status"] for a in flaky.attempt_log] == ["failed", "succeeded"]
    assert (result.steps["before"].deliveries, result.steps["after"].deliveries) == (1, 1)
    assert result.steps["before"].attempts == 1
    messages = run_messages(published, result.run_id)
    assert len(messages) == 2, messages  # the first delivery and the broker retry
    assert all(kwargs.get("fused") == ["before", "flaky", "after"] for _, kwargs in messages)
    assert time.monotonic() - began >= BROKER.initial
    assert_in_order(result, ["before", "flaky", "after"])


# -- each fused step's own timeout ----------------------------------------------------------------


SLOW_LIMIT_S = 30.0  # the slow step's body gives up waiting for its release after this
SLOW_TIMEOUT_S = 0.3


@flow
def timeouts(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=Calls(), wf=Workflow("fz_timeouts", queue=Q1, app=app),
                         release=threading.Event())

    @ns.wf.task(timeout=5)
    def quick(x: int) -> int:
        ns.calls("quick")
        return x

    @ns.wf.task(timeout=SLOW_TIMEOUT_S, fallback="fallback value")
    def slow(quick: int) -> str:
        ns.calls("slow")
        try:
            deadline = time.monotonic() + SLOW_LIMIT_S
            # Python bytecode between short waits: the timeout's interrupt lands here.
            while not ns.release.wait(0.01) and time.monotonic() < deadline:
                pass
        except BaseException:
            ns.calls("slow interrupted")
            raise
        ns.calls("slow returned")
        return "too late"

    @ns.wf.task(timeout=5)
    def later(slow: str) -> str:
        ns.calls("later")
        return f"got {slow}"

    @ns.wf.task
    def last(later: str) -> str:
        ns.calls("last")
        return later.upper()

    return ns


def test_each_fused_step_honours_its_own_timeout(flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["timeouts"]
    try:
        # The slow body never returns before the test releases it, after the run: the
        # later fused steps ran without waiting for the abandoned attempt.
        result = ns.wf.run(x=1, timeout=15)
    finally:
        ns.release.set()

    assert result.status is RunStatus.SUCCEEDED, result.error
    slow = result.steps["slow"]
    assert slow.status is StepStatus.FALLBACK
    assert slow.output == "fallback value"
    assert slow.error_type == "orchestration.errors.StepTimeout"
    assert f"timeout of {SLOW_TIMEOUT_S:g} s" in (slow.error or ""), slow.error
    assert slow.attempts == 1
    assert result.outputs["later"] == "got fallback value"
    assert result.outputs["last"] == "GOT FALLBACK VALUE"
    assert {name: result.steps[name].status for name in ("quick", "later", "last")} == {
        "quick": StepStatus.SUCCEEDED, "later": StepStatus.SUCCEEDED,
        "last": StepStatus.SUCCEEDED}
    steps = [name for name in ns.calls.order if name in result.steps]
    assert steps == ["quick", "slow", "later", "last"]
    # The timeout interrupted the slow body: it never ran to its end, released or not.
    ended = wait_until(lambda: [n for n in ns.calls.order if n.startswith("slow ")],
                       timeout=SLOW_LIMIT_S, what="the slow body to end")
    assert ended == ["slow interrupted"], ns.calls.order
    assert_in_order(result, ["quick", "slow", "later", "last"])


# -- queues: only neighbours on one queue are fused --------------------------------------------


@flow
def two_queues(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=Calls(), wf=Workflow("fz_queues", queue=Q1, app=app))

    @ns.wf.task
    def a1(x: int) -> int:
        ns.calls("a1")
        return x + 1

    @ns.wf.task
    def a2(a1: int) -> int:
        ns.calls("a2")
        return a1 + 1

    @ns.wf.task(queue=Q2)
    def other(a2: int) -> int:
        ns.calls("other")
        return a2 * 100

    @ns.wf.task
    def b1(other: int) -> int:
        ns.calls("b1")
        return other + 1

    @ns.wf.task
    def b2(b1: int) -> int:
        ns.calls("b2")
        return b1 + 1

    return ns


def test_only_same_queue_neighbours_are_fused_in_the_canvas(
        flows: dict[str, SimpleNamespace]) -> None:
    canvas = compiled_canvas(flows["two_queues"].wf)
    assert isinstance(canvas, _chain), canvas
    parts = list(canvas.tasks)
    assert [(p.task, p.kwargs.get("fused"), p.options["queue"]) for p in parts] == [
        ("fz_queues.a1", ["a1", "a2"], Q1),
        ("fz_queues.other", None, Q2),
        ("fz_queues.b1", ["b1", "b2"], Q1),
    ]
    assert [p.kwargs.get("finalize", False) for p in parts] == [False, False, True]
    assert len(parts[0].args) == 1 and parts[1].args == () and parts[2].args == ()


def test_a_step_on_another_queue_is_its_own_message(
        flows: dict[str, SimpleNamespace], published: list[tuple[str, Any]]) -> None:
    ns = flows["two_queues"]
    result = ns.wf.run(x=1, timeout=15)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs == {"a1": 2, "a2": 3, "other": 300, "b1": 301, "b2": 302}
    assert ns.calls.order == ["a1", "a2", "other", "b1", "b2"]
    assert {name: step.queue for name, step in result.steps.items()} == {
        "a1": Q1, "a2": Q1, "other": Q2, "b1": Q1, "b2": Q1}
    messages = run_messages(published, result.run_id)
    assert [(name, kwargs.get("fused")) for name, kwargs in messages] == [
        ("fz_queues.a1", ["a1", "a2"]), ("fz_queues.other", None),
        ("fz_queues.b1", ["b1", "b2"])]
    assert_in_order(result, ["a1", "a2", "other", "b1", "b2"])


@flow
def diamond(app: Orchestrator) -> SimpleNamespace:
    wf = Workflow("fz_diamond", queue=Q1, app=app)

    @wf.task
    def top(x: int) -> int:
        return x

    @wf.task
    def left(top: int) -> int:
        return top + 1

    @wf.task
    def right(top: int) -> int:
        return top + 2

    @wf.task
    def bottom(left: int, right: int) -> int:
        return left * right

    @wf.task
    def tail(bottom: int) -> int:
        return bottom + 1

    return SimpleNamespace(wf=wf)


def test_parallel_branches_are_not_fused_but_the_series_after_the_join_is(
        flows: dict[str, SimpleNamespace]) -> None:
    canvas = compiled_canvas(flows["diamond"].wf)
    assert isinstance(canvas, _chain), canvas
    first, rest = canvas.tasks[0], list(canvas.tasks[1:])
    assert (first.task, first.kwargs.get("fused")) == ("fz_diamond.top", None)
    if len(rest) == 1:  # Celery may have merged the group and its body into a chord
        assert isinstance(rest[0], _chord), rest
        header, body = list(rest[0].tasks), rest[0].body
    else:
        assert isinstance(rest[0], group), rest
        header, body = list(rest[0].tasks), rest[1]
    assert sorted((s.task, s.kwargs.get("fused")) for s in header) == [
        ("fz_diamond.left", None), ("fz_diamond.right", None)]
    assert (body.task, body.kwargs["fused"], body.kwargs["finalize"]) == (
        "fz_diamond.bottom", ["bottom", "tail"], True)
    result = flows["diamond"].wf.run(x=2, timeout=15)
    assert result.status is RunStatus.SUCCEEDED and result.outputs["tail"] == 13


@flow
def fused_branch(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=Calls(), wf=Workflow("fz_branch", queue=Q1, app=app))

    @ns.wf.task
    def root(x: int) -> int:
        return x

    @ns.wf.task
    def l1(root: int) -> int:
        ns.calls("l1")
        return root + 1

    @ns.wf.task
    def l2(l1: int) -> int:
        ns.calls("l2")
        return l1 * 10

    @ns.wf.task
    def r1(root: int) -> int:
        ns.calls("r1")
        return root - 1

    @ns.wf.task
    def join(l2: int, r1: int) -> list[int]:
        return [l2, r1]

    return ns


def test_a_fused_branch_in_a_chord_header_hands_its_result_to_the_join(
        flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["fused_branch"]
    canvas = compiled_canvas(ns.wf)
    assert isinstance(canvas, _chain), canvas
    rest = list(canvas.tasks[1:])
    header = list(rest[0].tasks)
    branches = {s.task: s for s in header}
    assert branches.keys() == {"fz_branch.l1", "fz_branch.r1"}, header
    assert branches["fz_branch.l1"].kwargs["fused"] == ["l1", "l2"]
    # A chord collects its header's results: the fused branch must keep its result.
    assert all(not s.options.get("ignore_result") for s in header)

    result = ns.wf.run(x=3, timeout=15)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs == {"root": 3, "l1": 4, "l2": 40, "r1": 2, "join": [40, 2]}
    assert ns.calls.counts == Counter({"l1": 1, "l2": 1, "r1": 1})
    assert result.steps["l1"].worker == result.steps["l2"].worker
    assert_in_order(result, ["root", "l1", "l2", "join"])


# -- a fused step that starts a child run ------------------------------------------------------


@flow
def child(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=Calls())
    kid = Workflow("fz_child", queue=Q2, app=app)

    @kid.task
    def c1(n: int) -> int:
        ns.calls("c1")
        return n * 3

    @kid.task
    def c2(c1: int) -> int:
        ns.calls("c2")
        return c1 + 1

    parent = Workflow("fz_parent", queue=Q1, app=app)

    @parent.task
    def p1(x: int) -> int:
        ns.calls("p1")
        return x + 1

    @parent.task
    def p2(p1: int, ctx: StepContext) -> Any:
        ns.calls("p2")
        return ctx.run_child(kid, n=p1)

    @parent.task
    def p3(p2: dict[str, Any]) -> int:
        ns.calls("p3")
        return int(p2["c2"]) * 2

    @parent.task
    def p4(p3: int, p1: int) -> list[int]:
        ns.calls("p4")
        return [p3, p1]

    ns.kid, ns.wf = kid, parent
    return ns


def test_a_fused_step_that_starts_a_child_hands_on_the_rest_of_the_fused_steps(
        flows: dict[str, SimpleNamespace], app: Orchestrator,
        published: list[tuple[str, Any]]) -> None:
    ns = flows["child"]
    canvas = compiled_canvas(ns.wf)
    assert canvas.kwargs["fused"] == ["p1", "p2", "p3", "p4"]

    result = ns.wf.run(x=1, timeout=20)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs == {"p1": 2, "p2": {"c1": 6, "c2": 7}, "p3": 14, "p4": [14, 2]}
    assert ns.calls.order == ["p1", "p2", "c1", "c2", "p3", "p4"]
    for name in ("p1", "p3", "p4"):
        step = result.steps[name]
        assert (step.status, step.attempts, step.deliveries) == (StepStatus.SUCCEEDED, 1, 1)
    # p2 is recorded by child_done from the child's outcome (its own call is not an attempt).
    assert (result.steps["p2"].status, result.steps["p2"].deliveries) == (
        StepStatus.SUCCEEDED, 1)
    assert_in_order(result, ["p1", "p2", "p3", "p4"])
    kids = [app.store.get_run(r.run_id) for r in app.store.list_runs(workflow="fz_child")]
    kid = next(k for k in kids if k.parent_run_id == result.run_id)
    assert kid.status is RunStatus.SUCCEEDED
    assert kid.finished_at is not None and kid.finished_at <= result.steps["p3"].started_at
    # The steps after the child's were handed on, still fused, and still end the run.
    rest = [kwargs for name, kwargs in run_messages(published, result.run_id)
            if name == "fz_parent.p3"]
    assert len(rest) == 1 and rest[0].get("fused") == ["p3", "p4"] and rest[0]["finalize"]


# -- a map between fused steps ----------------------------------------------------------------


@flow
def map_between(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=Calls(), wf=Workflow("fz_map", queue=Q1, app=app))

    @ns.wf.task
    def f1(x: int) -> int:
        ns.calls("f1")
        return x

    @ns.wf.task
    def f2(f1: int) -> list[int]:
        ns.calls("f2")
        return list(range(f1))

    @ns.wf.task(map="f2", chunk_size=3, concurrency=4)
    def each(f2: int) -> int:
        ns.calls("each")
        return f2 * f2

    @ns.wf.task
    def f3(each: list[int]) -> int:
        ns.calls("f3")
        return sum(each)

    @ns.wf.task
    def f4(f3: int, f1: int) -> list[int]:
        ns.calls("f4")
        return [f3, f1]

    return ns


def test_a_map_between_fused_steps(flows: dict[str, SimpleNamespace],
                                   published: list[tuple[str, Any]]) -> None:
    ns = flows["map_between"]
    canvas = compiled_canvas(ns.wf)
    assert isinstance(canvas, _chain)
    assert [(p.task, p.kwargs.get("fused")) for p in canvas.tasks] == [
        ("fz_map.f1", ["f1", "f2"]), ("fz_map.each", None), ("fz_map.f3", ["f3", "f4"])]

    result = ns.wf.run(x=10, timeout=20)

    assert result.status is RunStatus.SUCCEEDED, result.error
    squares = [i * i for i in range(10)]
    assert result.outputs == {"f1": 10, "f2": list(range(10)), "each": squares,
                              "f3": sum(squares), "f4": [sum(squares), 10]}
    order = ns.calls.order
    assert order[:2] == ["f1", "f2"] and order[-2:] == ["f3", "f4"]
    assert Counter(order)["each"] == 10
    each = result.steps["each"]
    assert each.status is StepStatus.SUCCEEDED and each.attempts == 10
    assert sorted(a["map_index"] for a in each.attempt_log) == list(range(10))
    assert_in_order(result, ["f1", "f2", "each", "f3", "f4"])
    chunks = [kwargs for name, kwargs in run_messages(published, result.run_id)
              if name == "fz_map.each" and "chunk" in kwargs]
    assert sorted(len(kwargs["chunk"]["items"]) for kwargs in chunks) == [1, 3, 3, 3]
