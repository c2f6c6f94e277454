"""Map chunk results parked in the results DB: overwritten on re-delivery, read in one
query, dropped with the map, never written once the map step is recorded."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from orchestration import StepStatus
from orchestration.store.map_chunks import ChunkResults, chunks
from orchestration.store.repository import PlannedStep, StepOutcome, Store

STEPS = [PlannedStep("square", "square", "q", None, True),
         PlannedStep("other", "other", "q", None, True)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.ensure_schema()
    yield store
    store.dispose()


def new_run(store: Store) -> str:
    return store.create_run(str(uuid.uuid4()), "maps", "v1", {"x": 1}, STEPS)


def rows(store: Store) -> int:
    with store.reader.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(chunks)).scalar() or 0)


def test_chunks_are_read_by_start_and_dropped_per_map(store: Store) -> None:
    run_id = new_run(store)
    store.claim_step(run_id, "square", worker="w", task_id="t")
    parked = store.map_chunks
    assert parked.put(run_id, "square", 0, [1, 4], [True, True])
    assert parked.put(run_id, "square", 2, [None, 16], [False, True])
    assert parked.put(run_id, "other", 0, ["x"], [True])  # another step of the run

    assert parked.load(run_id, "square", [0, 2]) == {
        0: ChunkResults([1, 4], [True, True]), 2: ChunkResults([None, 16], [False, True])}
    assert parked.load(run_id, "square", [2, 9]) == {2: ChunkResults([None, 16],
                                                                      [False, True])}
    assert parked.drop(run_id, "square") == 2
    assert parked.load(run_id, "square", [0, 2]) == {}
    assert parked.load(run_id, "other", [0]) == {0: ChunkResults(["x"], [True])}


def test_a_chunk_delivered_twice_overwrites_its_row(store: Store) -> None:
    run_id = new_run(store)
    store.claim_step(run_id, "square", worker="w", task_id="t")
    parked = store.map_chunks
    assert parked.put(run_id, "square", 0, [1, None], [True, False])
    assert parked.put(run_id, "square", 0, [1, 4], [True, True])  # the re-delivery

    assert rows(store) == 1
    assert parked.load(run_id, "square", [0]) == {0: ChunkResults([1, 4], [True, True])}


def test_no_chunk_is_written_once_the_map_step_is_recorded(store: Store) -> None:
    run_id = new_run(store)
    store.claim_step(run_id, "square", worker="w", task_id="t")
    assert store.record_step(run_id, "square", StepOutcome(StepStatus.SUCCEEDED, output=[1]))

    # A chunk re-delivered after the collector ran: nothing is left behind.
    assert not store.map_chunks.put(run_id, "square", 0, [1], [True])
    assert not store.map_chunks.put(run_id, "missing", 0, [1], [True])
    assert rows(store) == 0
