"""One batch call for elements of many runs (execute/batching.py): lists in, a list out,
each element's own outcome and share of the cost; a failing batch is retried under the
step's policies, then split in halves until a poisoned element fails alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestration import StepStatus, Workflow
from orchestration.define.step import BoundStep
from orchestration.execute.attempts import Delivery
from orchestration.execute.batching import run_batch
from orchestration.store.batches import Element
from orchestration.store.repository import PlannedStep, Store

CALLS: list[list[Any]] = []


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.ensure_schema()
    yield store
    store.dispose()


@pytest.fixture(autouse=True)
def _calls() -> None:
    CALLS.clear()


DELIVERY = Delivery(worker="w", task_id="t", inline_limit=10_000, inline_retry_limit=1.0)
wf = Workflow("batching_unit", inputs=["skill"])


@wf.task(batch_size=10, retries=1, backoff=0, fallback={"score": -1})
def score(skill: list[Any], ctx: Any) -> list[dict[str, Any]]:
    CALLS.append(list(skill))
    ctx.record_cost(0.01 * len(skill))
    if "poison" in skill:
        raise ValueError("cannot score poison")
    return [{"score": len(str(s))} for s in skill]


@wf.task(batch_size=10)
def short(skill: list[Any]) -> list[Any]:
    CALLS.append(list(skill))
    return list(skill)[:-1]


@wf.task(batch_size=10, gate=lambda out: out != "bad")
def gated(skill: list[Any]) -> list[Any]:
    CALLS.append(list(skill))
    return list(skill)


FLAKY = {"left": 1}


@wf.task(batch_size=10, retries=2, backoff=0)
def flaky(skill: list[Any]) -> list[Any]:
    CALLS.append(list(skill))
    if FLAKY["left"]:
        FLAKY["left"] -= 1
        raise ConnectionError("provider hiccup")
    return [s * 2 for s in skill]


def bound(name: str) -> BoundStep:
    return wf.validate().steps[name]


def elements(values: list[Any]) -> list[Element]:
    return [Element(id=i + 1, run_id=f"run-{i}", step_name="score", kwargs={"skill": v},
                    resume={}) for i, v in enumerate(values)]


def test_one_call_for_the_batch_each_element_its_output_and_share_of_the_cost(
        store: Store) -> None:
    results = run_batch(bound("score"), elements(["a", "bb", "ccc", "dddd"]), store, DELIVERY)
    assert CALLS == [["a", "bb", "ccc", "dddd"]]
    assert [results[i].outcome.output for i in (1, 2, 3, 4)] == [
        {"score": 1}, {"score": 2}, {"score": 3}, {"score": 4}]
    for result in results.values():
        assert result.outcome.status is StepStatus.SUCCEEDED
        assert result.outcome.cost_usd == pytest.approx(0.01)  # 0.04 over 4 elements
        assert [a.attempt for a in result.outcome.attempts] == [1]
        assert result.outcome.attempts[0].policy == "batch of 4"


def test_a_poisoned_element_is_isolated_by_halving_and_falls_back_alone(store: Store) -> None:
    values = ["a", "b", "c", "poison", "e", "f", "g", "h", "i", "j"]
    results = run_batch(bound("score"), elements(values), store, DELIVERY)
    by_value = {v: results[i + 1].outcome for i, v in enumerate(values)}
    assert by_value["poison"].status is StepStatus.FALLBACK
    assert by_value["poison"].output == {"score": -1}
    assert "cannot score poison" in (by_value["poison"].error or "")
    for value, outcome in by_value.items():
        if value != "poison":
            assert outcome.status is StepStatus.SUCCEEDED, value
            assert outcome.output == {"score": 1}
    # retries=1: every failing call is tried twice, then split: 10 -> 5 -> 3 -> 2 -> 1.
    assert [call for call in CALLS if "poison" in call] == [
        values, values, values[:5], values[:5], values[2:5], values[2:5],
        values[3:5], values[3:5], ["poison"], ["poison"]]
    assert [call for call in CALLS if "poison" not in call] == [
        values[:2], ["c"], ["e"], values[5:]]  # depth first
    # The poisoned element saw every call it was part of; its neighbours fewer.
    poisoned = by_value["poison"]
    assert [a.attempt for a in poisoned.attempts] == list(range(1, len(poisoned.attempts) + 1))
    assert poisoned.attempts[0].policy and "split in halves" in poisoned.attempts[0].policy
    assert len(by_value["j"].attempts) < len(poisoned.attempts)
    # Each element's cost is its share of the calls it was part of: they add up.
    assert sum(o.cost_usd for o in by_value.values()) == pytest.approx(
        0.01 * sum(len(call) for call in CALLS))


def test_a_wrong_length_is_a_clear_error_attributed_to_the_batch(store: Store) -> None:
    results = run_batch(bound("short"), elements([1, 2]), store, DELIVERY)
    for result in results.values():
        assert result.outcome.status is StepStatus.FAILED
        assert result.outcome.error_type == "orchestration.errors.BatchOutputMismatch"
    first = results[1].outcome.attempts[0].error or ""
    assert "returned 1 output(s) for 2 element(s)" in first
    assert "batching_unit.short" in first
    # Not retried (the same batch gives the same answer): split at once, then alone.
    assert CALLS == [[1, 2], [1], [2]]


def test_the_gate_applies_to_each_element(store: Store) -> None:
    results = run_batch(bound("gated"), elements(["ok", "bad", "fine"]), store, DELIVERY)
    assert results[2].outcome.status is StepStatus.FAILED
    assert results[1].outcome.output == "ok" and results[3].outcome.output == "fine"


def test_a_transient_failure_is_retried_as_a_batch_not_split(store: Store) -> None:
    FLAKY["left"] = 1
    results = run_batch(bound("flaky"), elements([1, 2, 3]), store, DELIVERY)
    assert CALLS == [[1, 2, 3], [1, 2, 3]]
    assert [results[i].outcome.output for i in (1, 2, 3)] == [2, 4, 6]
    assert [a.status for a in results[1].outcome.attempts] == ["failed", "succeeded"]


@wf.task(batch_size=10)
def asks(skill: list[Any], ctx: Any) -> list[Any]:
    ctx.wait_for_input("approval")
    return list(skill)


def test_waiting_for_a_person_in_a_batched_step_is_a_clear_failure(store: Store) -> None:
    store.create_run("run-0", "batching_unit", "v1", {"skill": 1},
                     [PlannedStep("asks", "asks", "q", None, True)])
    results = run_batch(bound("asks"), elements([1, 2]), store, DELIVERY)
    for result in results.values():
        assert result.outcome.status is StepStatus.FAILED
        assert "ctx.wait_for_input is not available in a batched step" in (
            result.outcome.error or "")
