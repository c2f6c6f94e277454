"""batch_size on the embedded default: elements of many runs, one call with lists.

Full batches are called at once, a partly filled one once its oldest element waited
``batch_wait``; a run waiting in a batch shows ``waiting`` (and holds no worker slot);
each run gets its own output, attempts and share of the cost; a poisoned element fails
only its own run's step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from orchestration import RunStatus, StepStatus, Workflow, cancel
from orchestration.app import Orchestrator
from orchestration.store.batches import Batches
from orchestration.store.models import AttemptRow
from orchestration.testing import embedded_orchestrator
from tests.support.polling import wait_until

CALLS: dict[str, list[list[Any]]] = {}
LOCK = threading.Lock()


def called(step: str, values: list[Any]) -> None:
    with LOCK:
        CALLS.setdefault(step, []).append(list(values))


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with embedded_orchestrator(Path(tmp_path_factory.mktemp("batching")),
                               embedded_concurrency=4) as orch:
        yield _declare(orch)


def _declare(orch: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(orch=orch,
                         full=Workflow("batch_full", inputs=["n"], app=orch),
                         timed=Workflow("batch_timed", inputs=["n"], app=orch),
                         held=Workflow("batch_held", inputs=["n"], app=orch),
                         poison=Workflow("batch_poison", inputs=["n"], app=orch),
                         escalating=Workflow("batch_escalating", inputs=["n"], app=orch),
                         cancelled=Workflow("batch_cancelled", inputs=["n"], app=orch))

    @ns.full.task(batch_size=5, batch_wait=3600)
    def double(n: list[int], ctx: Any) -> list[int]:
        called("double", n)
        ctx.record_cost(0.05)
        return [x * 2 for x in n]

    @ns.full.task(depends_on=double)
    def plus_one(double: int) -> int:
        return double + 1

    @ns.timed.task(batch_size=10, batch_wait=0.3)
    def triple(n: list[int]) -> list[int]:
        called("triple", n)
        return [x * 3 for x in n]

    @ns.held.task(batch_size=2, batch_wait=3600)
    def pair(n: list[int]) -> list[int]:
        called("pair", n)
        return [-x for x in n]

    @ns.poison.task(batch_size=10, batch_wait=3600, critical=False)
    def fragile(n: list[int]) -> list[int]:
        called("fragile", n)
        if 13 in n:
            raise ValueError("13 is poisoned")
        return [x + 100 for x in n]

    @ns.escalating.task(batch_size=3, batch_wait=3600, on_error={"error": "escalate"})
    def judged(n: list[int]) -> list[str]:
        called("judged", n)
        if 0 in n:
            raise ValueError("nobody can judge 0")
        return [f"judged {x}" for x in n]

    @ns.cancelled.task(batch_size=2, batch_wait=0.3)
    def never(n: list[int]) -> list[int]:
        called("never", n)
        return n

    return ns


def test_twenty_runs_in_batches_of_five_make_four_calls(flows: SimpleNamespace) -> None:
    handles = flows.full.submit_many([{"n": n} for n in range(20)])
    results = [handle.wait(timeout=60) for handle in handles]
    assert len(CALLS["double"]) == 4
    assert sorted(x for call in CALLS["double"] for x in call) == list(range(20))
    for n, result in enumerate(results):
        assert result.status is RunStatus.SUCCEEDED
        assert result.outputs == {"double": 2 * n, "plus_one": 2 * n + 1}
        step = result.steps["double"]
        assert step.cost_usd == pytest.approx(0.01)  # $0.05 per call over 5 elements
        assert step.attempts == 1
        assert attempts(flows.orch, result.run_id, "double") == [
            (1, "succeeded", "batch of 5", 0.01)]


def attempts(orch: Orchestrator, run_id: str, step: str) -> list[tuple[Any, ...]]:
    with orch.store.reader.connect() as conn:
        rows = conn.execute(select(AttemptRow.attempt, AttemptRow.status, AttemptRow.policy,
                                   AttemptRow.cost_usd)
                            .where(AttemptRow.run_id == run_id,
                                   AttemptRow.step_name == step)).all()
    return [(a, s, p, pytest.approx(c)) for a, s, p, c in rows]


def test_a_partly_filled_batch_is_called_after_batch_wait(flows: SimpleNamespace) -> None:
    handles = [flows.timed.submit(n=n) for n in (1, 2, 3)]
    results = [handle.wait(timeout=30) for handle in handles]
    assert [r.outputs["triple"] for r in results] == [3, 6, 9]
    assert sum(len(call) for call in CALLS["triple"]) == 3
    assert len(CALLS["triple"]) <= 3


def test_a_run_waiting_in_a_batch_shows_waiting_until_its_batch_is_called(
        flows: SimpleNamespace) -> None:
    first = flows.held.submit(n=1)
    wait_until(lambda: flows.orch.store.get_run(first.run_id).status is RunStatus.WAITING,
               timeout=20, what="the run waits in its batch")
    run = flows.orch.store.get_run(first.run_id)
    assert run.steps["pair"].status is StepStatus.WAITING
    assert "pair" not in CALLS
    second = flows.held.submit(n=2)
    assert first.wait(timeout=30).outputs == {"pair": -1}
    assert second.wait(timeout=30).outputs == {"pair": -2}
    assert CALLS["pair"] == [[1, 2]]


def test_a_poisoned_element_fails_only_its_own_run(flows: SimpleNamespace) -> None:
    values = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    handles = flows.poison.submit_many([{"n": n} for n in values])
    results = {n: handle.wait(timeout=60) for n, handle in zip(values, handles, strict=True)}
    for n, result in results.items():
        step = result.steps["fragile"]
        if n == 13:
            assert step.status is StepStatus.FAILED
            assert "13 is poisoned" in (step.error or "")
        else:
            assert step.status is StepStatus.SUCCEEDED, n
            assert result.outputs["fragile"] == n + 100


def test_an_element_alone_escalates_to_a_person_whose_answer_is_its_output(
        flows: SimpleNamespace) -> None:
    handles = flows.escalating.submit_many([{"n": n} for n in (0, 1, 2)])
    assert handles[1].wait(timeout=30).outputs == {"judged": "judged 1"}
    assert handles[2].wait(timeout=30).outputs == {"judged": "judged 2"}
    wait_until(lambda: flows.orch.store.get_run(handles[0].run_id).status
               is RunStatus.WAITING and flows.orch.store.get_run(handles[0].run_id)
               .steps["judged"].error, timeout=20, what="the poisoned element escalated")
    assert flows.orch.approve(handles[0].run_id, "judged by hand") == 1
    result = handles[0].wait(timeout=30)
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs == {"judged": "judged by hand"}
    # The person answered for the element: no other call.
    assert [0] in CALLS["judged"] and sum(call == [0] for call in CALLS["judged"]) == 1


def test_a_run_cancelled_while_its_element_waits_is_not_called(
        flows: SimpleNamespace) -> None:
    handle = flows.cancelled.submit(n=7)
    wait_until(lambda: flows.orch.store.get_run(handle.run_id).status is RunStatus.WAITING,
               timeout=20, what="the element buffered")
    cancel(handle.run_id, orchestrator=flows.orch)
    result = handle.wait(timeout=30)
    assert result.status is RunStatus.CANCELLED
    # Its batch is due after 0.3 s: the element is taken, found cancelled, and only sent
    # on; its step ends cancelled with its run.
    wait_until(lambda: flows.orch.store.get_run(handle.run_id).steps["never"].status
               is StepStatus.CANCELLED, timeout=20, what="the step cancelled")
    assert "never" not in CALLS


def test_an_element_the_results_db_could_not_buffer_is_handed_back_not_dropped(
        flows: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Batches.join
    failures = [OperationalError("INSERT INTO batch_elements", {}, Exception("db is down"))]

    def flaky_join(self: Batches, *args: Any, **kwargs: Any) -> int:
        if failures:
            raise failures.pop()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Batches, "join", flaky_join)
    first, second = flows.held.submit(n=10), flows.held.submit(n=20)
    assert first.wait(timeout=30).outputs == {"pair": -10}
    assert second.wait(timeout=30).outputs == {"pair": -20}
    assert failures == []


def test_each_run_s_stream_says_its_batched_step_finished(flows: SimpleNamespace) -> None:
    handles = [flows.held.submit(n=n) for n in (30, 40)]
    for handle in handles:
        handle.wait(timeout=30)
        events = [(e.type, e.data.get("step")) for e in handle.stream(timeout=30)]
        assert ("step_finished", "pair") in events, events
        assert events[-1][0] == "run_finished"
        finished = next(e for e in handle.stream(timeout=30) if e.type == "step_finished")
        assert finished.data["status"] == "succeeded"
