"""Parallel branches without a chord (compile/canvas.py forks, worker/forks.py), in process.

The embedded default joins branches in this process (store/joins.py ``LocalJoins``), so
its runs compile top-level parallel groups as forks: the message before a group sends
all branches but one, runs that one itself, and the branch completing the join runs
the body. ``published`` shows the messages a run sent; ``build_canvas`` the compiled
shape (with and without joins).
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery.app.task import Context
from celery.canvas import Signature, _chain, _chord, group
from celery.exceptions import Ignore, Reject

from orchestration import RunStatus, StepContext, StepStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.compile.canvas import FINALIZE_TASK, FORK, JOIN, build_canvas
from orchestration.compile.packing import BUNDLE, BUNDLE_TASK
from orchestration.core.envelope import Envelope
from orchestration.core.redaction import REDACTED
from orchestration.store.joins import JoinsUnavailable, LocalJoins
from orchestration.submit.submission import planned
from orchestration.testing import embedded_orchestrator
from orchestration.worker.forks import run_bundle
from tests.support.flows import Flows
from tests.support.polling import wait_until

Q1, Q2 = "forks.q1", "forks.q2"
WIDE = 40  # branches of one group: 3 bundles of at most 16
STAGES = 60  # forks in a row: deeper than the stack allows if each nested a delivery
flow = Flows()


class Calls:
    """How many times each step function ran, across the worker's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def __call__(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    directory: Path = tmp_path_factory.mktemp("forks")
    with embedded_orchestrator(directory) as orch:
        yield orch


@pytest.fixture(scope="module")
def flows(app: Orchestrator) -> dict[str, SimpleNamespace]:
    return flow.build(app)


def compiled(wf: Workflow, *, joins: bool = True, bundle_size: int = 1) -> Signature:
    plan = wf.validate()
    run_id = str(uuid.uuid4())
    message = Envelope.for_inputs(run_id, {"x": 1}, 10_000).to_message()
    return build_canvas(plan.decomposition.plan, plan.steps, message, run_id,
                        wf.app.celery, joins=joins, bundle_size=bundle_size)


def sent(published: list[tuple[str, Any]], run_id: str) -> list[str]:
    """Task names of the messages published for one run."""
    out = []
    for name, body in published:
        kwargs = body[1] if isinstance(body, list | tuple) and len(body) == 3 else {}
        if not isinstance(kwargs, dict):
            continue
        bundled = kwargs.get(BUNDLE) or ()  # a bundle of step messages: its first one's run
        if kwargs.get("run_id") == run_id or any(item[2].get("run_id") == run_id
                                                  for item in bundled):
            out.append(name)
    return out


# -- the diamond -------------------------------------------------------------------------------


@flow
def diamond(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=Calls(), wf=Workflow("fk_diamond", queue=Q1, app=app))

    @ns.wf.task
    def a(x: int) -> int:
        ns.calls("a")
        return x + 1

    @ns.wf.task
    def b(a: int) -> int:
        ns.calls("b")
        return a * 2

    @ns.wf.task
    def c(a: int) -> int:
        ns.calls("c")
        return a * 3

    @ns.wf.task
    def d(b: int, c: int) -> list[int]:
        ns.calls("d")
        return [b, c]

    return ns


def test_a_diamond_compiles_to_a_fork_on_the_message_before_the_group(
        flows: dict[str, SimpleNamespace]) -> None:
    canvas = compiled(flows["diamond"].wf)
    assert not isinstance(canvas, _chain | _chord | group), canvas
    assert canvas.task == "fk_diamond.a"
    fork = canvas.kwargs[FORK]
    assert [b["task"] for b in fork["branches"]] == ["fk_diamond.b", "fk_diamond.c"]
    assert all(b["options"]["ignore_result"] for b in fork["branches"])
    assert (fork["body"]["task"], fork["body"]["kwargs"]["finalize"]) == ("fk_diamond.d", True)
    # Without a join state, the same plan is a chord.
    chord_canvas = compiled(flows["diamond"].wf, joins=False)
    assert isinstance(chord_canvas, _chain) and FORK not in chord_canvas.tasks[0].kwargs


def test_a_diamond_sends_one_branch_and_runs_the_rest_in_the_forking_delivery(
        flows: dict[str, SimpleNamespace], published: list[tuple[str, Any]]) -> None:
    ns = flows["diamond"]
    result = ns.wf.run(x=2, timeout=15)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs == {"a": 3, "b": 6, "c": 9, "d": [6, 9]}
    assert ns.calls.counts == Counter({"a": 1, "b": 1, "c": 1, "d": 1})
    # a's message (the submit) and c's; b ran in a's delivery, d in the last arrival's.
    assert sorted(sent(published, result.run_id)) == ["fk_diamond.a", "fk_diamond.c"]
    assert {s.status for s in result.steps.values()} == {StepStatus.SUCCEEDED}


# -- a group that starts the run, a group that ends it ------------------------------------------


@flow
def roots(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=Calls(), wf=Workflow("fk_roots", queue=Q1, app=app))

    @ns.wf.task
    def left(x: int) -> int:
        ns.calls("left")
        return x + 1

    @ns.wf.task
    def right(x: int) -> int:
        ns.calls("right")
        return x + 2

    @ns.wf.task
    def both(left: int, right: int) -> int:
        ns.calls("both")
        return left * right

    return ns


def test_a_group_that_starts_a_run_is_sent_as_its_branches_with_their_join(
        flows: dict[str, SimpleNamespace], published: list[tuple[str, Any]]) -> None:
    ns = flows["roots"]
    canvas = compiled(ns.wf)
    assert isinstance(canvas, group)
    joins = [branch.kwargs[JOIN] for branch in canvas.tasks]
    assert [(j["index"], j["size"]) for j in joins] == [(0, 2), (1, 2)]
    assert len({j["id"] for j in joins}) == 1
    assert all(j["body"]["task"] == "fk_roots.both" for j in joins)
    assert all(len(branch.args) == 1 for branch in canvas.tasks)  # the first envelope
    # Sent together: one message of both step messages (a bundle).
    bundled = compiled(ns.wf, bundle_size=16)
    assert bundled.task == BUNDLE_TASK and bundled.options["queue"] == Q1
    assert [(task, len(args), kwargs[JOIN]["index"])
            for task, args, kwargs in bundled.kwargs[BUNDLE]] == [
        ("fk_roots.left", 1, 0), ("fk_roots.right", 1, 1)]

    result = ns.wf.run(x=3, timeout=15)
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs["both"] == 20
    assert ns.calls.counts == Counter({"left": 1, "right": 1, "both": 1})
    assert sent(published, result.run_id) == [BUNDLE_TASK]


@flow
def ends(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(wf=Workflow("fk_ends", queue=Q1, app=app))

    @ns.wf.task
    def start(x: int) -> int:
        return x

    @ns.wf.task
    def one(start: int) -> int:
        return start + 1

    @ns.wf.task(queue=Q2)
    def two(start: int) -> int:
        return start + 2

    return ns


def test_a_group_that_ends_a_run_joins_into_its_finalisation(
        flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["ends"]
    fork = compiled(ns.wf).kwargs[FORK]
    assert fork["body"]["task"] == FINALIZE_TASK
    result = ns.wf.run(x=1, timeout=15)
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs == {"start": 1, "one": 2, "two": 3}


@flow
def wide(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=Calls(), wf=Workflow("fk_wide", queue=Q1, app=app))
    names = [f"w{i:02d}" for i in range(WIDE)]
    for name in names:
        namespace: dict[str, Any] = {"calls": ns.calls}
        exec(f"def {name}(x):\n    calls({name!r})\n    return x\n", namespace)
        ns.wf.task(name=name)(namespace[name])
    namespace = {"calls": ns.calls}
    exec(f"def total({', '.join(names)}):\n    calls('total')\n"
         f"    return sum(({', '.join(names)},))\n", namespace)
    ns.wf.task(name="total")(namespace["total"])
    return ns


def test_a_wide_group_is_sent_as_bundles_and_each_step_runs_once(
        flows: dict[str, SimpleNamespace], published: list[tuple[str, Any]]) -> None:
    ns = flows["wide"]
    result = ns.wf.run(x=2, timeout=30)
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs["total"] == 2 * WIDE
    assert set(ns.calls.counts.values()) == {1} and len(ns.calls.counts) == WIDE + 1
    # 40 branches, 16 to a bundle: 3 messages; the join's step ran in the last arrival's.
    assert sent(published, result.run_id) == [BUNDLE_TASK] * 3
    # Each branch ran under its bundle's delivery, on whichever runner thread took it.
    assert {step.worker for step in result.steps.values()} == {result.steps["total"].worker}
    assert result.steps["total"].worker is not None


def test_a_malformed_message_in_a_bundle_is_dropped_and_the_others_run(
        flows: dict[str, SimpleNamespace], app: Orchestrator) -> None:
    ns = flows["wide"]
    before = Counter(ns.calls.counts)
    run_id = str(uuid.uuid4())
    canvas = ns.wf.canvas(run_id, {"x": 1})  # written and sent below, one bundle spoiled
    bundles = list(canvas.tasks)
    bundles[0].kwargs[BUNDLE][0] = ["no.such.task", [], {}]
    ns.wf.app.store.create_run(run_id, ns.wf.name, ns.wf.validate().version, {"x": 1},
                               planned(ns.wf.validate()))
    for message in bundles:
        message.apply_async()
    wait_until(lambda: (ns.calls.counts - before).total() == WIDE - 1, timeout=30,
               what="the other branches to run")
    assert ns.calls.counts - before == Counter(
        {f"w{i:02d}": 1 for i in range(1, WIDE)})  # w00's message was the spoiled one
    app.store.cancel_run(run_id)  # its join waits for w00: nothing left running


# -- shapes that stay chords -------------------------------------------------------------------


@flow
def long_branch(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(wf=Workflow("fk_long", queue=Q1, app=app))

    @ns.wf.task
    def top(x: int) -> int:
        return x

    @ns.wf.task
    def l1(top: int) -> int:
        return top + 1

    @ns.wf.task(queue=Q2)
    def l2(l1: int) -> int:  # the left branch is two messages: no fork
        return l1 + 1

    @ns.wf.task
    def r1(top: int) -> int:
        return top - 1

    @ns.wf.task
    def join(l2: int, r1: int) -> list[int]:
        return [l2, r1]

    return ns


@flow
def mapped(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(wf=Workflow("fk_mapped", queue=Q1, app=app))

    @ns.wf.task(map="x")
    def each(x: int) -> int:  # a map keeps a message of its own: nothing to fork from
        return x * 2

    @ns.wf.task
    def p(each: list[int]) -> int:
        return sum(each)

    @ns.wf.task
    def q(each: list[int]) -> int:
        return len(each)

    @ns.wf.task
    def r(p: int, q: int) -> list[int]:
        return [p, q]

    return ns


def test_groups_with_a_branch_of_several_messages_or_after_a_map_stay_chords(
        flows: dict[str, SimpleNamespace]) -> None:
    for name in ("long_branch", "mapped"):
        canvas = compiled(flows[name].wf)
        assert isinstance(canvas, _chain), (name, canvas)
        assert not any(FORK in getattr(t, "kwargs", {}) for t in canvas.tasks), name
    result = flows["long_branch"].wf.run(x=5, timeout=15)
    assert result.status is RunStatus.SUCCEEDED and result.outputs["join"] == [7, 4]
    mapped_result = flows["mapped"].wf.run(x=[1, 2, 3], timeout=15)
    assert mapped_result.status is RunStatus.SUCCEEDED, mapped_result.error
    assert mapped_result.outputs["r"] == [12, 3]


# -- many forks in a row -----------------------------------------------------------------------


@flow
def stages(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=Calls(), wf=Workflow("fk_stages", queue=Q1, app=app))
    ns.depths = []
    previous = "x"
    for stage in range(STAGES):
        # l runs in the forking delivery and arrives last (r, on the other queue, is
        # done by then), so l's delivery runs the merge, which forks again, and so on.
        ns.wf.task(name=f"l{stage}")(_adder(ns.calls, f"l{stage}", previous, 0.01))
        ns.wf.task(name=f"r{stage}", queue=Q2)(_adder(ns.calls, f"r{stage}", previous, 0))
        ns.wf.task(name=f"m{stage}")(_merger(ns, f"m{stage}", stage))
        previous = f"m{stage}"
    return ns


def _adder(calls: Calls, name: str, source: str, pause: float) -> Any:
    namespace: dict[str, Any] = {"calls": calls, "time": time}
    exec(f"def {name}({source}):\n    calls({name!r})\n    time.sleep({pause})\n"
         f"    return {source}\n", namespace)
    return namespace[name]


def _merger(ns: SimpleNamespace, name: str, stage: int) -> Any:
    namespace: dict[str, Any] = {"calls": ns.calls, "depth": _depth, "depths": ns.depths}
    exec(f"def {name}(l{stage}, r{stage}):\n    calls({name!r})\n"
         f"    depths.append(depth())\n    return l{stage} + r{stage}\n", namespace)
    return namespace[name]


def _depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def test_a_run_of_many_forks_in_a_row_runs_each_step_once_without_nesting_deliveries(
        flows: dict[str, SimpleNamespace], published: list[tuple[str, Any]]) -> None:
    ns = flows["stages"]
    result = ns.wf.run(x=1, timeout=60)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs[f"m{STAGES - 1}"] == 2 ** STAGES
    assert set(ns.calls.counts.values()) == {1} and len(ns.calls.counts) == 3 * STAGES
    # One message per stage's other branch, and the submit. The merges run in the
    # delivery completing their join: none is sent unless r (on the other queue) came last.
    names = sent(published, result.run_id)
    assert sum(name.startswith("fk_stages.r") for name in names) == STAGES
    assert len(names) < 2 * STAGES + 1
    # What runs in a delivery runs one after another, not nested in each other: the
    # stack is as deep at the last merge as at the first.
    assert max(ns.depths) - min(ns.depths) < 20, ns.depths


# -- a branch that fails, starts a child, or redaction changes ---------------------------------


@flow
def failing(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=Calls(), wf=Workflow("fk_failing", queue=Q1, app=app))

    @ns.wf.task
    def a(x: int) -> int:
        return x

    @ns.wf.task(retries=0)
    def bad(a: int) -> int:
        raise ValueError("branch fails")

    @ns.wf.task
    def good(a: int) -> int:
        ns.calls("good")
        return a

    @ns.wf.task
    def after(bad: int, good: int) -> int:
        ns.calls("after")
        return bad + good

    return ns


def test_a_branch_failing_critically_fails_the_run_and_skips_the_join(
        flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["failing"]
    result = ns.wf.run(x=1, timeout=15)
    assert result.status is RunStatus.FAILED
    assert result.steps["bad"].status is StepStatus.FAILED
    assert result.steps["good"].status is StepStatus.SUCCEEDED
    assert result.steps["after"].status is StepStatus.SKIPPED
    assert ns.calls.counts == Counter({"good": 1})


@flow
def child_branch(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(calls=Calls())
    kid = Workflow("fk_kid", queue=Q2, app=app)

    @kid.task
    def k(n: int) -> int:
        return n * 10

    ns.wf = Workflow("fk_child_branch", queue=Q1, app=app)

    @ns.wf.task
    def a(x: int) -> int:
        return x

    @ns.wf.task
    def spawn(a: int, ctx: StepContext) -> Any:  # the branch run in a's delivery
        ns.calls("spawn")
        return ctx.run_child(kid, n=a)

    @ns.wf.task(queue=Q2)
    def other(a: int) -> int:
        return a + 1

    @ns.wf.task
    def join(spawn: dict[str, Any], other: int) -> list[int]:
        ns.calls("join")
        return [int(spawn["k"]), other]

    return ns


def test_a_branch_replaced_by_a_child_run_still_arrives_at_its_join(
        flows: dict[str, SimpleNamespace]) -> None:
    ns = flows["child_branch"]
    result = ns.wf.run(x=4, timeout=30)
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs["join"] == [40, 5]
    assert ns.calls.counts == Counter({"spawn": 1, "join": 1})


@flow
def redacted(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(wf=Workflow("fk_redacted", queue=Q1, app=app))

    @ns.wf.task
    def a(x: int) -> int:
        return x

    @ns.wf.task
    def creds(a: int) -> dict[str, Any]:
        return {"secret": f"s3cr3t-{a}", "user": "u"}

    @ns.wf.task(queue=Q2)
    def other(a: int) -> int:
        return a

    @ns.wf.task
    def use(creds: dict[str, Any], other: int) -> str:
        return f"{creds['secret']}:{other}"

    return ns


def test_an_output_redaction_changed_reaches_the_join_whole_while_the_db_keeps_the_copy(
        flows: dict[str, SimpleNamespace]) -> None:
    result = flows["redacted"].wf.run(x=7, timeout=15)
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs["use"] == "s3cr3t-7:7"
    assert result.outputs["creds"]["secret"] == REDACTED  # the stored copy (deny-listed)


# -- the in-process join state -----------------------------------------------------------------


def test_local_joins_complete_once_in_branch_order_keeping_each_branch_first_part() -> None:
    joins = LocalJoins()
    assert joins.arrive("j", 2, 3, "c") is None
    assert joins.arrive("j", 0, 3, "a") is None
    assert joins.arrive("j", 0, 3, "a-again") is None  # a duplicate keeps the first
    assert joins.arrive("j", 1, 3, "b") == ["a", "b", "c"]
    assert len(joins) == 0  # forgotten once complete
    with pytest.raises(ValueError, match="branch 3 of a join of 3"):
        joins.arrive("k", 3, 3, "x")


def test_a_local_join_no_branch_completes_is_dropped_after_its_ttl() -> None:
    joins = LocalJoins(ttl=0.05)
    assert joins.arrive("stuck", 0, 2, "a") is None  # its other branch never comes
    assert len(joins) == 1
    wait_until(lambda: joins.arrive(uuid.uuid4().hex, 0, 2, "b") is None
               and "stuck" not in joins._open, timeout=5, what="the stale join to go")


class FlakyJoins(LocalJoins):
    """A join state that cannot be reached for its first ``failures`` arrivals."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures, self.refused = failures, 0

    def arrive(self, join_id: str, index: int, size: int, part: Any) -> list[Any] | None:
        if self.refused < self.failures:
            self.refused += 1
            raise JoinsUnavailable("join state down (test)")
        return super().arrive(join_id, index, size, part)


def test_an_arrival_while_the_join_state_is_down_is_handed_back_and_arrives_later(
        flows: dict[str, SimpleNamespace], app: Orchestrator) -> None:
    ns = flows["diamond"]
    before = Counter(ns.calls.counts)
    flaky = FlakyJoins(failures=1)
    saved = app._joins
    app._joins = (app.settings, flaky)
    try:
        result = ns.wf.run(x=10, timeout=30)
    finally:
        app._joins = saved
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs["d"] == [22, 33]
    assert flaky.refused == 1
    # Handed back and delivered again: its step passed its recorded outcome on.
    assert ns.calls.counts - before == Counter({"a": 1, "b": 1, "c": 1, "d": 1})


def test_a_bundle_runs_each_message_alone_and_comes_back_whole_if_one_cannot_be_sent(
        app: Orchestrator, flows: dict[str, SimpleNamespace]) -> None:
    """``run_bundle`` with a stand-in step body: Ignore and errors stay with their own
    message; a Reject (the broker refused what that message had to send) returns the
    bundle to its queue once every other message has run."""
    seen: list[tuple[str, Any]] = []

    def execute(task: Any, *args: Any, **kwargs: Any) -> None:
        seen.append((task.step_name, task.request.id))
        outcome = kwargs.get("outcome")
        if outcome == "ignore":
            raise Ignore()
        if outcome == "reject":
            raise Reject("broker refused (test)", requeue=True)
        if outcome == "error":
            raise RuntimeError("engine error (test)")

    outer = SimpleNamespace(orchestrator=app, request=Context({"id": "bundle-1"}))
    items = [[f"fk_wide.w{i:02d}", [{"run": "r"}], {"run_id": "r", "outcome": outcome}]
             for i, outcome in enumerate(["ok", "ignore", "reject", "error", "ok"])]
    with pytest.raises(Reject) as refused:
        run_bundle(outer, items, execute, concurrency=2)
    assert refused.value.requeue
    assert sorted(seen) == [(f"w{i:02d}", f"bundle-1.{i}") for i in range(5)]
