"""Map steps on real workers: order, distribution over workers, quorum, per-element
retries, and chunking of a large list."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from orchestration import RunStatus, StepStatus, default_orchestrator
from orchestration.execute.maps import DEFAULT_CHUNKS, MAP_COLLECT_TASK, chunk_ranges
from orchestration.store.map_chunks import chunks
from tests.integration.support.helpers import statuses, wait_until
from tests.integration.support.workflows import dynamic as dyn
from tests.support.workers import Worker, Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

MAX_CHUNK_MESSAGE_BYTES = 100_000
# The collector's message: a summary per chunk once results are parked in the results DB
# (10,000 small results: ~104 KB inline, ~6.4 KB parked; inline grows with the results).
MAX_COLLECTOR_MESSAGE_BYTES = 16_384


@pytest.fixture(scope="module")
def map_workers(workers: Workers, worker_logs: Path) -> Iterator[list[Worker]]:
    """Two prefork workers, the only ones serving the map queue."""
    pool = Workers(worker_logs)
    try:
        started = [pool.start(f"it-map-{n}", [dyn.MAP_QUEUE], pool="prefork", concurrency=1,
                              wait=False) for n in (1, 2)]
        for worker in started:
            pool.wait_ready(worker)
        assert sorted(pool.serving(dyn.MAP_QUEUE)) == sorted(w.nodename for w in started)
        yield started
    finally:
        pool.stop_all()


def parked_chunks(run_id: str) -> int:
    """Rows of map_chunks a run still has."""
    with default_orchestrator().store.reader.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(chunks).where(
            chunks.c.run_id == run_id)).scalar() or 0)


def _by_index(attempt_log: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    rows: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in attempt_log:
        assert row["map_index"] is not None, row
        rows[row["map_index"]].append(row)
    return rows


def test_map_preserves_order_and_spreads_chunks_over_two_workers(
    map_workers: list[Worker],
) -> None:
    values = random.Random(7).sample(range(-50_000, 50_000), 200)
    result = dyn.dyn_map.submit(values=values).wait(timeout=60)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    step = result.steps["square"]
    assert step.status is StepStatus.SUCCEEDED
    assert step.output == [dyn.transform(value) for value in values]
    assert result.outputs["square"] == step.output

    rows = _by_index(step.attempt_log)
    assert sorted(rows) == list(range(len(values)))
    for index, attempts in rows.items():
        assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "succeeded")], index
    # The step's attempt count is the elements' attempts, not one for the map step.
    assert step.attempts == len(values)

    nodenames = {worker.nodename for worker in map_workers}
    served = {row["worker"] for row in step.attempt_log}
    assert served == nodenames, f"chunks were served by {served}, expected both of {nodenames}"
    # A chunk is the unit of work: every element of one chunk ran on the same worker.
    ranges = chunk_ranges(len(values), None)
    assert len(ranges) == 50  # ceil(200 / 64) = 4 elements per chunk
    for start, end in ranges:
        chunk_workers = {rows[index][0]["worker"] for index in range(start, end)}
        assert len(chunk_workers) == 1, (start, end, chunk_workers)


def test_map_quorum_met_keeps_none_in_failed_slots(map_workers: list[Worker]) -> None:
    values = [(-v if v % 5 == 0 else v) for v in range(1, 21)]  # 4 of 20 fail: 80% succeed
    assert sum(1 for v in values if v < 0) == 4
    result = dyn.map_quorum.submit(values=values).wait(timeout=60)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    step = result.steps["checked"]
    assert step.status is StepStatus.SUCCEEDED
    assert step.output == [None if v < 0 else v * 10 for v in values]
    assert step.error is not None and "4 of 20 elements failed" in step.error
    assert result.outputs["tally"] == {"total": 20, "missing": 4}
    failed_rows = [row for row in step.attempt_log if row["status"] == "failed"]
    assert sorted(row["map_index"] for row in failed_rows) == \
        [i for i, v in enumerate(values) if v < 0]


def test_map_quorum_missed_fails_the_step_and_the_run(map_workers: list[Worker]) -> None:
    values = [(-v if v % 5 in (0, 1) else v) for v in range(1, 21)]  # 8 of 20 fail: 60%
    assert sum(1 for v in values if v < 0) == 8
    result = dyn.map_quorum.submit(values=values).wait(timeout=60)

    assert result.status is RunStatus.FAILED, statuses(result)
    step = result.steps["checked"]
    assert step.status is StepStatus.FAILED
    assert step.error is not None
    assert "quorum not met: 12 of 20 succeeded, 14 needed" in step.error, step.error
    assert step.error_type == "MapElementsFailed"
    assert result.error is not None and "checked" in result.error
    assert result.steps["tally"].status is StepStatus.SKIPPED
    assert result.outputs["tally"] is None


def test_non_critical_map_without_quorum_puts_none_in_failed_slots(
    map_workers: list[Worker],
) -> None:
    values = [3, -1, 4, -1, 5, 9, -2, 6]
    result = dyn.map_soft.submit(values=values).wait(timeout=60)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    step = result.steps["soft_checked"]
    assert step.status is StepStatus.SUCCEEDED
    expected = [None if v < 0 else v * 10 for v in values]
    assert step.output == expected
    assert result.outputs["soft_tally"] == expected  # the dependent received the Nones
    assert step.error is not None and "3 of 8 elements failed" in step.error


def test_map_element_retries_are_recorded_per_index(map_workers: list[Worker]) -> None:
    values = list(range(1, 13))
    flaky = [i for i, v in enumerate(values) if dyn.is_flaky(v)]
    assert len(flaky) == 4
    result = dyn.map_flaky.submit(values=values).wait(timeout=60)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    step = result.steps["wobbly_element"]
    assert step.output == [v + 1000 for v in values]
    rows = _by_index(step.attempt_log)
    for index in range(len(values)):
        history = [(a["attempt"], a["status"]) for a in rows[index]]
        if index in flaky:
            assert history == [(1, "failed"), (2, "succeeded")], (index, history)
            assert "FlakyElementError" in (rows[index][0]["error_type"] or "")
            assert dyn.element_calls(result.run_id, index) == 2
        else:
            assert history == [(1, "succeeded")], (index, history)
            assert dyn.element_calls(result.run_id, index) == 1
    assert step.attempts == len(values) + len(flaky)


def test_large_map_is_chunked_and_ordered(map_workers: list[Worker]) -> None:
    total = 10_000
    items = list(range(total))[::-1]  # descending: order is visible
    handle = dyn.BIG_MAP.submit(items=items)
    result = handle.wait(timeout=90)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    step = result.steps[dyn.BIG_MAP_STEP]
    output = step.output
    assert isinstance(output, list) and len(output) == total
    assert output == items
    assert step.attempts == total
    assert len(step.attempt_log) == total
    assert Counter(row["map_index"] for row in step.attempt_log) == Counter(range(total))

    # What was published for this run (logged by before_task_publish in every process).
    planned = chunk_ranges(total, None)
    assert len(planned) <= DEFAULT_CHUNKS
    step_task = f"{dyn.BIG_MAP.name}.{dyn.BIG_MAP_STEP}"

    def all_published() -> list[dict[str, Any]] | None:
        log = dyn.published(result.run_id)
        # The collector was published before the run finished; wait only for the log writes.
        return log if any(entry["task"] == MAP_COLLECT_TASK for entry in log) else None

    log = wait_until(all_published, timeout=10, what="the publish log of the big map")
    chunks = [entry for entry in log if entry["task"] == step_task
              and entry["chunk_start"] is not None]
    step_messages = [entry for entry in log if entry["task"] == step_task
                     and entry["chunk_start"] is None]
    collectors = [entry for entry in log if entry["task"] == MAP_COLLECT_TASK]
    assert len(step_messages) == 1  # the submit: the map step's own message
    assert len(collectors) == 1
    assert collectors[0]["body_bytes"] < MAX_COLLECTOR_MESSAGE_BYTES, \
        f"the collector's message was {collectors[0]['body_bytes']} bytes"
    assert parked_chunks(result.run_id) == 0  # dropped once the map was recorded
    assert sorted((c["chunk_start"], c["chunk_start"] + c["chunk_items"]) for c in chunks) \
        == planned, "the chunks published are not the planned ranges"
    biggest = max(c["body_bytes"] for c in chunks)
    assert biggest < MAX_CHUNK_MESSAGE_BYTES, f"a chunk message was {biggest} bytes"
    # The chunks were published by a worker's pool process, not by this process.
    assert all(c["pid"] != step_messages[0]["pid"] for c in chunks)


def test_a_chunk_redelivered_after_parking_overwrites_and_counts_once(
    map_workers: list[Worker],
) -> None:
    items = list(range(1_280))  # 64 chunks of 20: each parks ~660 bytes of results
    result = dyn.KILLED_MAP.submit(items=items).wait(timeout=90)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    step = result.steps[dyn.KILLED_MAP_STEP]
    assert step.output == [dyn.killed_label(item) for item in items]
    # Chunk 0 parked its results twice: its first process died right after parking them.
    assert dyn.killed_chunk_parks(result.run_id) == 2
    # Its elements ran twice and the attempts of both deliveries are in the log, but the
    # map counts each chunk once.
    assert step.attempts == len(items)
    ran = Counter(row["map_index"] for row in step.attempt_log)
    assert {index for index, count in ran.items() if count == 2} == set(range(20))
    assert parked_chunks(result.run_id) == 0
