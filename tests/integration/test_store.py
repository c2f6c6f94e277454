"""The results store on PostgreSQL and on SQLite: transitions recorded exactly once.

These tests build ``orchestration.store.Store`` directly (no workers). Each test uses a
workflow name of its own, so on PostgreSQL they share the session database with the
workers' runs without seeing them.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from orchestration import RunNotFound, RunStatus, StepStatus
from orchestration.store import AttemptRecord, StepOutcome, Store
from orchestration.store.repository import PlannedStep

T = TypeVar("T")
RACERS = 8


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A Store on the session's PostgreSQL database, or on a fresh SQLite file."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_database")
    else:
        url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    store.ensure_schema()
    try:
        yield store
    finally:
        store.dispose()


@pytest.fixture
def workflow() -> str:
    """A workflow name no other test uses."""
    return f"store_{uuid.uuid4().hex[:10]}"


def new_run(store: Store, workflow: str, steps: tuple[str, ...] = ("extract",), *,
            key: str | None = None) -> str:
    run_id = str(uuid.uuid4())
    planned = [PlannedStep(name, f"{name}_out", "q.store", None, True) for name in steps]
    return store.create_run(run_id, workflow, "v1", {"text": "hi"}, planned,
                            idempotency_key=key)


def attempt(number: int, status: str) -> AttemptRecord:
    now = datetime.now(UTC)
    return AttemptRecord(attempt=number, status=status, started_at=now, finished_at=now,
                         error=None if status == "succeeded" else "boom",
                         error_type=None if status == "succeeded" else "builtins.RuntimeError")


def race(count: int, action: Callable[[int], T]) -> list[T]:
    """Run ``action(i)`` in ``count`` threads released together; their results by index."""
    barrier = threading.Barrier(count)
    results: list[T | None] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = action(index)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a racing thread hung"
    assert not errors, errors
    return results  # type: ignore[return-value]


def test_run_and_step_transitions_are_recorded_once(store: Store, workflow: str) -> None:
    run_id = new_run(store, workflow)
    assert store.run_status(run_id) is RunStatus.PENDING
    assert store.get_run(run_id).steps["extract"].status is StepStatus.PENDING

    claim = store.claim_step(run_id, "extract", worker="w1", task_id="t1")
    assert claim.proceed
    assert claim.status is StepStatus.RUNNING
    assert claim.attempts == 0
    assert store.run_status(run_id) is RunStatus.RUNNING

    done = StepOutcome(StepStatus.SUCCEEDED, output={"label": "billing"},
                       attempts=[attempt(1, "succeeded")])
    assert store.record_step(run_id, "extract", done, worker="w1",
                             claimed_at=claim.claimed_at) is True
    late = StepOutcome(StepStatus.FAILED, error="late duplicate", error_type="x.Late",
                       attempts=[attempt(2, "failed")])
    assert store.record_step(run_id, "extract", late, worker="w2") is False

    # A re-delivery of a finished step does not run it again: it gets the stored outcome.
    again = store.claim_step(run_id, "extract", worker="w2", task_id="t2")
    assert not again.proceed
    assert again.status is StepStatus.SUCCEEDED
    assert again.output == {"label": "billing"}
    assert again.attempts == 1

    assert store.finish_run(run_id, RunStatus.SUCCEEDED) is True
    assert store.finish_run(run_id, RunStatus.FAILED, error="late") is False

    run = store.get_run(run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert run.error is None
    assert run.started_at is not None and run.finished_at is not None
    step = run.steps["extract"]
    assert step.status is StepStatus.SUCCEEDED
    assert step.output == {"label": "billing"}
    assert run.outputs == {"extract_out": {"label": "billing"}}
    assert step.error is None
    assert step.attempts == 1
    assert [entry["status"] for entry in step.attempt_log] == ["succeeded"]
    assert step.worker == "w1"
    assert step.deliveries == 1
    assert step.latency_ms is not None and step.latency_ms >= 0


def test_retrying_step_can_be_claimed_again(store: Store, workflow: str) -> None:
    run_id = new_run(store, workflow)
    assert store.claim_step(run_id, "extract", worker="w1", task_id="t1").proceed
    waiting = StepOutcome(StepStatus.RETRYING, error="503", error_type="x.Unavailable",
                          attempts=[attempt(1, "failed")])
    assert store.record_step(run_id, "extract", waiting, worker="w1") is True
    assert store.get_run(run_id).steps["extract"].status is StepStatus.RETRYING

    claim = store.claim_step(run_id, "extract", worker="w2", task_id="t1")
    assert claim.proceed
    assert claim.attempts == 1
    done = StepOutcome(StepStatus.SUCCEEDED, output="ok", attempts=[attempt(2, "succeeded")])
    assert store.record_step(run_id, "extract", done, worker="w2") is True

    step = store.get_run(run_id).steps["extract"]
    assert step.status is StepStatus.SUCCEEDED
    assert step.attempts == 2
    assert step.deliveries == 2
    assert step.worker == "w2"
    assert [(e["attempt"], e["status"]) for e in step.attempt_log] == [
        (1, "failed"), (2, "succeeded")]


def test_skip_steps_leaves_finished_steps_alone(store: Store, workflow: str) -> None:
    run_id = new_run(store, workflow, ("a", "b", "c"))
    store.claim_step(run_id, "a", worker="w", task_id="t")
    store.record_step(run_id, "a", StepOutcome(StepStatus.SUCCEEDED, output=1))

    assert store.skip_steps(run_id, ["a", "b", "c"], "upstream failed") == 2
    assert store.skip_steps(run_id, ["b"], "again") == 0
    steps = store.get_run(run_id).steps
    assert steps["a"].status is StepStatus.SUCCEEDED
    assert steps["b"].status is StepStatus.SKIPPED
    assert steps["b"].error == "upstream failed"
    # A skipped step is terminal: a late delivery does not run it.
    assert not store.claim_step(run_id, "c", worker="w", task_id="t").proceed


def test_racing_record_step_records_exactly_one_outcome(store: Store, workflow: str) -> None:
    run_id = new_run(store, workflow)
    assert store.claim_step(run_id, "extract", worker="w0", task_id="t0").proceed

    def record(index: int) -> bool:
        outcome = StepOutcome(StepStatus.SUCCEEDED, output={"winner": index},
                              attempts=[attempt(1, "succeeded")])
        return store.record_step(run_id, "extract", outcome, worker=f"w{index}")

    results = race(RACERS, record)

    assert results.count(True) == 1, results
    winner = results.index(True)
    step = store.get_run(run_id).steps["extract"]
    assert step.output == {"winner": winner}
    assert step.attempts == 1
    assert len(step.attempt_log) == 1
    assert step.attempt_log[0]["worker"] == f"w{winner}"


def test_racing_claims_all_proceed_and_count_every_delivery(store: Store,
                                                             workflow: str) -> None:
    # A step still `running` may be claimed again (that is a re-delivery), so racing
    # claims all proceed; the delivery counter must still count each of them.
    run_id = new_run(store, workflow)

    claims = race(RACERS, lambda i: store.claim_step(run_id, "extract", worker=f"w{i}",
                                                      task_id=f"t{i}"))

    assert all(claim.proceed for claim in claims)
    run = store.get_run(run_id)
    assert run.steps["extract"].deliveries == RACERS
    assert run.status is RunStatus.RUNNING


def test_racing_finish_run_finishes_it_once(store: Store, workflow: str) -> None:
    run_id = new_run(store, workflow)
    statuses = [RunStatus.SUCCEEDED, RunStatus.FAILED] * (RACERS // 2)

    results = race(RACERS, lambda i: store.finish_run(run_id, statuses[i], error=f"e{i}"))

    assert results.count(True) == 1, results
    winner = results.index(True)
    run = store.get_run(run_id)
    assert run.status is statuses[winner]
    assert run.error == f"e{winner}"


def test_idempotency_key_never_creates_a_second_run(store: Store, workflow: str) -> None:
    key = f"ticket-{uuid.uuid4().hex}"
    first = new_run(store, workflow, key=key)
    second_id = str(uuid.uuid4())
    planned = [PlannedStep("extract", "extract_out", "q.store", None, True)]

    returned = store.create_run(second_id, workflow, "v1", {"text": "hi"}, planned,
                                idempotency_key=key)

    assert returned == first
    with pytest.raises(RunNotFound):
        store.get_run(second_id)
    assert [r.run_id for r in store.list_runs(workflow=workflow)] == [first]


def test_list_runs_filters(store: Store, workflow: str) -> None:
    other = f"{workflow}_other"
    ids = [new_run(store, workflow) for _ in range(4)]
    other_id = new_run(store, other)
    store.finish_run(ids[0], RunStatus.FAILED, error="boom")
    store.finish_run(ids[2], RunStatus.SUCCEEDED)
    created = {r.run_id: r.created_at for r in store.list_runs(workflow=workflow)}

    newest_first = [r.run_id for r in store.list_runs(workflow=workflow)]
    assert newest_first == ids[::-1]
    assert [r.run_id for r in store.list_runs(workflow=other)] == [other_id]
    assert [r.run_id for r in store.list_runs(workflow=workflow, limit=2)] == ids[:1:-1]

    failed = store.list_runs(workflow=workflow, status=RunStatus.FAILED)
    assert [(r.run_id, r.status, r.error) for r in failed] == [
        (ids[0], RunStatus.FAILED, "boom")]
    assert [r.run_id for r in store.list_runs(workflow=workflow,
                                              status=RunStatus.PENDING)] == [ids[3], ids[1]]

    since = created[ids[2]]
    assert since is not None and since.tzinfo is not None
    assert [r.run_id for r in store.list_runs(workflow=workflow, since=since)] == [
        ids[3], ids[2]]
    succeeded_since = store.list_runs(workflow=workflow, status=RunStatus.SUCCEEDED,
                                      since=since)
    assert [r.run_id for r in succeeded_since] == [ids[2]]
    assert succeeded_since[0].finished_at is not None


def test_racing_deliveries_of_one_map_chunk_leave_one_row(store: Store, workflow: str) -> None:
    run_id = new_run(store, workflow)
    assert store.claim_step(run_id, "extract", worker="w0", task_id="t0").proceed

    written = race(RACERS, lambda i: store.map_chunks.put(run_id, "extract", 0, [i, i],
                                                          [True, True]))

    assert written == [True] * RACERS  # every delivery wrote (none failed on the key)
    rows = store.map_chunks.load(run_id, "extract", [0])
    assert list(rows) == [0]
    assert rows[0].results[0] in range(RACERS) and rows[0].ok == [True, True]
    assert store.map_chunks.drop(run_id, "extract") == 1


def test_map_chunks_racing_their_collector_leave_nothing_behind(store: Store,
                                                                workflow: str) -> None:
    run_id = new_run(store, workflow)
    assert store.claim_step(run_id, "extract", worker="w0", task_id="t0").proceed

    def deliver(index: int) -> bool:
        if index == RACERS - 1:  # the collector: record the map, then drop its chunks
            assert store.record_step(run_id, "extract", StepOutcome(StepStatus.SUCCEEDED))
            store.map_chunks.drop(run_id, "extract")
            return False
        return store.map_chunks.put(run_id, "extract", index, [index], [True])

    race(RACERS, deliver)

    # A chunk written before the record was dropped with the map; one after was refused.
    assert store.map_chunks.load(run_id, "extract", range(RACERS)) == {}
    assert not store.map_chunks.put(run_id, "extract", 0, [0], [True])


def test_an_attempt_without_model_calls_stores_null_and_reads_back(store: Store,
                                                                   workflow: str) -> None:
    """``calls`` of an attempt with no model call is SQL NULL (no JSON decode on read);
    one with calls keeps them; JSONB on PostgreSQL, JSON text on SQLite."""
    from sqlalchemy import text

    run_id = new_run(store, workflow)
    call = {"model": "m", "ok": True, "latency_ms": 1.0}
    with_calls = attempt(1, "failed")
    with_calls.calls = [call]
    store.record_step(run_id, "extract", StepOutcome(
        StepStatus.SUCCEEDED, output="x", attempts=[with_calls, attempt(2, "succeeded")]))
    log = store.get_run(run_id).steps["extract"].attempt_log
    assert [(entry["attempt"], entry["calls"]) for entry in log] == [(1, [call]), (2, None)]
    with store.engine.connect() as conn:
        nulls = conn.execute(text("SELECT attempt FROM step_attempts WHERE run_id = :r "
                                  "AND calls IS NULL"), {"r": run_id}).scalars().all()
    assert nulls == [2]


def test_create_runs_writes_every_column_as_one_insert_would(store: Store,
                                                            workflow: str) -> None:
    """``create_runs`` (``submit_many``): COPY on PostgreSQL, executemany on SQLite; the
    same rows either way, including JSON (nested, unicode, redacted paths) and the
    columns whose defaults SQLAlchemy would have filled in."""
    planned = [PlannedStep("extract", "extract_out", "q.store", "m1", True),
               PlannedStep("reply", "reply_out", "q.store", None, False)]
    runs = [(str(uuid.uuid4()), {"text": "héllo \t\"quoted\"\n", "n": [1, {"k": None}]}),
            (str(uuid.uuid4()), {})]
    store.create_runs(workflow, "v7", runs, planned, redacted={runs[0][0]: ["api_key"]},
                      priority=3)
    first = store.get_run(runs[0][0])
    assert (first.workflow, first.status, first.inputs) == (workflow, RunStatus.PENDING,
                                                            runs[0][1])
    assert store.get_run(runs[1][0]).inputs == {}
    steps = first.steps
    assert [(s.name, s.output_name, s.status, s.queue, s.model, s.attempts, s.deliveries,
             s.cost_usd, s.tokens_in, s.crashes, s.cache_hit) for s in steps.values()] == [
        ("extract", "extract_out", StepStatus.PENDING, "q.store", "m1", 0, 0, 0.0, 0, 0, False),
        ("reply", "reply_out", StepStatus.PENDING, "q.store", None, 0, 0, 0.0, 0, 0, False)]
    from sqlalchemy import text

    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, redacted_inputs, priority, cost_usd FROM runs "
                                 "WHERE workflow = :w ORDER BY id"), {"w": workflow}).all()
        critical = conn.execute(text("SELECT name, critical FROM steps WHERE run_id = :r "
                                     "ORDER BY name"), {"r": runs[0][0]}).all()
    redacted = {row[0]: row[1] for row in rows}
    as_list = [json.loads(v) if isinstance(v, str) else v for v in redacted.values()]
    assert sorted(map(tuple, as_list)) == [(), ("api_key",)]
    assert {(row[2], row[3]) for row in rows} == {(3, 0.0)}
    assert [(name, bool(value)) for name, value in critical] == [("extract", True),
                                                                  ("reply", False)]


def test_create_runs_rolls_back_with_its_transaction(store: Store, workflow: str) -> None:
    """A batch with a run id already taken writes none of its rows."""
    taken = new_run(store, workflow)
    planned = [PlannedStep("extract", "extract_out", "q.store", None, True)]
    fresh = str(uuid.uuid4())
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        store.create_runs(workflow, "v1", [(fresh, {}), (taken, {})], planned)
    with pytest.raises(RunNotFound):
        store.get_run(fresh)
    assert len(store.get_run(taken).steps) == 1
