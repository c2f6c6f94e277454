"""Map chunks park big results in the results DB; the collector's message stays small.

End to end on the in-process worker (its chord join publishes the collector like a
broker would, so ``before_task_publish`` sees the collector's message), plus the
collector's edge cases on a store of its own.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import event, func, select

from orchestration import RunStatus, StepStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.execute.maps import MAP_COLLECT_TASK, PARKED, collect, collect_outcome
from orchestration.store.map_chunks import chunks
from orchestration.store.repository import PlannedStep, StepOutcome, Store
from orchestration.testing import embedded_orchestrator
from tests.support.flows import Flows

BIG = 2_000
SECRET = "Bearer abcdefghijklmnop123456"  # the default redactor scrubs bearer tokens
LEAKY = {7, 900, 1901}  # elements whose result redaction would change

flow = Flows()


def label(index: int) -> str:
    return f"element-{index:05d}-of-a-big-map"  # ~32 bytes of JSON each


@flow
def big_map(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(received=[], wf=Workflow("unit_big_map", inputs=["items"], app=app))

    @ns.wf.task(map="items")
    def labelled(items: int) -> Any:
        return {"auth": SECRET} if items in LEAKY else label(items)

    @ns.wf.task
    def after(labelled: list[Any]) -> int:
        ns.received.append(labelled)
        return len(labelled)

    return ns


@flow
def small_map(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(wf=Workflow("unit_small_map", inputs=["items"], app=app))

    @ns.wf.task(map="items")
    def doubled(items: int) -> int:
        return items * 2

    return ns


@flow
def pooled_map(app: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace(local=threading.local(), opened=[],
                         wf=Workflow("unit_pooled_map", inputs=["items"], app=app))

    @ns.wf.task(map="items", chunk_size=20, concurrency=4)
    def connected(items: int) -> int:
        if not hasattr(ns.local, "connection"):  # what a model provider keeps per thread
            ns.local.connection = items
            ns.opened.append(items)
        time.sleep(0.002)
        return items

    return ns


@pytest.fixture(scope="module")
def orch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    with embedded_orchestrator(tmp_path_factory.mktemp("maps")) as orchestrator:
        yield orchestrator


@pytest.fixture(scope="module")
def flows(orch: Orchestrator) -> dict[str, SimpleNamespace]:
    return flow.build(orch)


@pytest.fixture
def chunk_writes(orch: Orchestrator) -> Iterator[list[str]]:
    """The parameters of every statement that wrote to map_chunks, as text."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "INSERT INTO map_chunks" in statement:
            seen.append(repr(parameters))

    event.listen(orch.store.engine, "before_cursor_execute", record)
    yield seen
    event.remove(orch.store.engine, "before_cursor_execute", record)


def collector_parts(published: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    bodies = [body for task, body in published if task == MAP_COLLECT_TASK]
    assert len(bodies) == 1, f"{len(bodies)} collector messages"
    args, _kwargs, _embed = bodies[0]
    parts: list[dict[str, Any]] = args[0]
    return parts


def parked_rows(orch: Orchestrator) -> int:
    with orch.store.reader.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(chunks)).scalar() or 0)


def test_a_big_map_parks_its_results_and_the_collector_message_stays_small(
        flows: dict[str, SimpleNamespace], orch: Orchestrator,
        published: list[tuple[str, Any]], chunk_writes: list[str]) -> None:
    ns = flows["big_map"]
    result = ns.wf.run(items=list(range(BIG)), timeout=60)

    assert result.status is RunStatus.SUCCEEDED, result.error
    parts = collector_parts(published)
    size = len(json.dumps(parts))
    # Inline, every element's result travels: ~77 KB here; parked, ~10 KB.
    assert size < 16_000, f"the collector's message carries {size} bytes"
    expected = [{"auth": SECRET} if i in LEAKY else label(i) for i in range(BIG)]
    # Dependents receive exactly what the elements returned, secrets included...
    assert ns.received == [expected]
    # ...and the results DB keeps the redacted copy, as for any output.
    stored = result.steps["labelled"].output
    assert [stored[i] for i in sorted(LEAKY)] == [{"auth": "[REDACTED]"}] * len(LEAKY)
    assert [v for i, v in enumerate(stored) if i not in LEAKY] == \
        [v for i, v in enumerate(expected) if i not in LEAKY]

    inline = [part for part in parts if not part.get(PARKED)]
    # The chunks holding a result that redaction changes kept their results inline.
    assert sorted(part["start"] for part in inline) == sorted(
        {next(p["start"] for p in parts if p["start"] <= i < p["start"] + 32)
         for i in LEAKY})
    assert sum(part["count"] for part in parts if part.get(PARKED)) + \
        sum(len(part["results"]) for part in inline) == BIG
    # The parked chunks were written without a secret, and dropped once collected.
    assert len(chunk_writes) == len(parts) - len(inline)
    assert not any("abcdefghijklmnop" in params for params in chunk_writes)
    assert parked_rows(orch) == 0


def test_a_small_map_keeps_its_results_in_the_message(
        flows: dict[str, SimpleNamespace], published: list[tuple[str, Any]],
        chunk_writes: list[str]) -> None:
    result = flows["small_map"].wf.run(items=[1, 2, 3], timeout=30)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs["doubled"] == [2, 4, 6]
    assert [part["results"] for part in collector_parts(published)] == [[2], [4], [6]]
    assert chunk_writes == []


def test_a_concurrent_maps_elements_run_on_threads_kept_from_one_run_to_the_next(
        flows: dict[str, SimpleNamespace]) -> None:
    pooled = flows["pooled_map"]
    for _ in range(3):
        result = pooled.wf.run(items=list(range(40)), timeout=30)
        assert result.status is RunStatus.SUCCEEDED, result.error
        assert result.outputs["connected"] == list(range(40))
    # 2 chunks of 20, 4 threads each: a pool per chunk would open 8 connections per run.
    assert 1 <= len(pooled.opened) <= 8


# -- the collector on its own ----------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.ensure_schema()
    yield store
    store.dispose()


@pytest.fixture(scope="module")
def step(orch: Orchestrator) -> Any:
    """A map step (never run: only its declaration is used)."""
    wf = Workflow("unit_collect", inputs=["items"], app=orch)

    @wf.task(map="items")
    def square(items: int) -> int:
        return items * items

    return wf.validate().steps["square"]


def running_map(store: Store) -> str:
    run_id = store.create_run(str(uuid.uuid4()), "unit_collect", "v1", {"items": []},
                              [PlannedStep("square", "square", "q", None, True)])
    store.claim_step(run_id, "square", worker="w", task_id="t")
    return run_id


def summary(start: int, count: int) -> dict[str, Any]:
    return {"start": start, "count": count, "succeeded": count, "errors": [],
            "attempts": count, "cost": 0.5, PARKED: True}


def test_the_collector_reads_parked_and_inline_parts_in_order(store: Store, step: Any) -> None:
    run_id = running_map(store)
    store.map_chunks.put(run_id, "square", 2, [4, None], [True, False])
    parts = [summary(2, 2), {"start": 0, "results": [0, 1], "ok": [True, True],
                             "errors": [], "attempts": 2, "cost": 0.5}]

    outcome = collect(step, parts, 4, run_id, store)

    assert (outcome.status, outcome.output) == (StepStatus.FAILED, [0, 1, 4, None])
    assert outcome.error is not None and "1 of 4 elements failed" in outcome.error
    assert (outcome.extra_attempts, outcome.cost_usd) == (4, 1.0)


def test_a_chunk_joined_twice_counts_once(step: Any) -> None:
    part = {"start": 0, "results": [0, 1], "ok": [True, True], "errors": [],
            "attempts": 2, "cost": 0.25}
    outcome = collect_outcome(step, [part, dict(part)], 2)

    assert (outcome.status, outcome.output) == (StepStatus.SUCCEEDED, [0, 1])
    assert (outcome.extra_attempts, outcome.cost_usd) == (2, 0.25)


def test_parked_results_missing_fail_the_map_unless_it_was_recorded(store: Store,
                                                                  step: Any) -> None:
    run_id = running_map(store)

    outcome = collect(step, [summary(0, 2)], 2, run_id, store)
    assert (outcome.status, outcome.error_type) == (StepStatus.FAILED, "MapResultsLost")
    assert "chunks starting at 0 are not in the results DB" in (outcome.error or "")

    # A duplicate collector: the first recorded the map and dropped its rows. Its outcome
    # is not recorded (the step is terminal); the recorded one is passed on.
    store.record_step(run_id, "square", StepOutcome(StepStatus.SUCCEEDED, output=[0, 1]))
    recorded = collect(step, [summary(0, 2)], 2, run_id, store)
    assert (recorded.status, recorded.output) == (StepStatus.SUCCEEDED, [0, 1])
