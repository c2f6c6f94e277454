"""The repository: each transition is recorded once; reads of runs, steps and attempts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from orchestration import RunNotFound, RunStatus, StepStatus
from orchestration.store.outcomes import RunFinish
from orchestration.store.repository import AttemptRecord, PlannedStep, StepOutcome, Store

STEPS = [PlannedStep("classify", "label", "model.cls", "small", True),
         PlannedStep("reply", "reply", "default", None, False)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.ensure_schema()
    yield store
    store.dispose()


def new_run(store: Store, workflow: str = "support", key: str | None = None,
            **inputs: object) -> str:
    return store.create_run(str(uuid.uuid4()), workflow, "v1", dict(inputs or {"x": 1}), STEPS,
                            idempotency_key=key)


def attempt(number: int, status: str, error_type: str | None = None) -> AttemptRecord:
    now = datetime.now(UTC)
    return AttemptRecord(attempt=number, status=status, started_at=now - timedelta(seconds=1),
                         finished_at=now, error_type=error_type, cost_usd=0.01)


def test_create_run_writes_pending_run_and_steps(store: Store) -> None:
    run_id = new_run(store, text="hi")
    run = store.get_run(run_id)
    assert (run.status, run.workflow, run.inputs) == (RunStatus.PENDING, "support", {"text": "hi"})
    assert list(run.steps) == ["classify", "reply"]
    classify = run.steps["classify"]
    assert (classify.status, classify.output_name, classify.queue, classify.model) == (
        StepStatus.PENDING, "label", "model.cls", "small")
    assert store.load_inputs(run_id) == {"text": "hi"}


def test_idempotency_key_returns_the_existing_run(store: Store) -> None:
    first = new_run(store, key="k-1")
    second = new_run(store, key="k-1")
    assert second == first and store.find_by_idempotency_key("k-1") == first
    assert len(store.list_runs()) == 1


def test_claim_moves_step_and_run_to_running(store: Store) -> None:
    run_id = new_run(store)
    claim = store.claim_step(run_id, "classify", worker="w1", task_id="t1")
    assert (claim.proceed, claim.status, claim.attempts) == (True, StepStatus.RUNNING, 0)
    run = store.get_run(run_id)
    assert run.status is RunStatus.RUNNING and run.started_at is not None
    step = run.steps["classify"]
    assert (step.status, step.worker, step.deliveries) == (StepStatus.RUNNING, "w1", 1)


def test_terminal_step_is_not_claimed_or_recorded_again(store: Store) -> None:
    run_id = new_run(store)
    claim = store.claim_step(run_id, "classify", worker="w1", task_id="t1")
    outcome = StepOutcome(StepStatus.SUCCEEDED, output="billing",
                          attempts=[attempt(1, "succeeded")], cost_usd=0.01, model="small")
    assert store.record_step(run_id, "classify", outcome, claimed_at=claim.claimed_at)
    again = store.claim_step(run_id, "classify", worker="w2", task_id="t2")
    assert (again.proceed, again.status, again.output, again.attempts) == (
        False, StepStatus.SUCCEEDED, "billing", 1)
    late = StepOutcome(StepStatus.FAILED, error="late duplicate", attempts=[attempt(2, "failed")])
    assert store.record_step(run_id, "classify", late) is False
    step = store.get_run(run_id).steps["classify"]
    assert (step.status, step.output, step.attempts, step.deliveries, step.error) == (
        StepStatus.SUCCEEDED, "billing", 1, 1, None)
    assert len(step.attempt_log) == 1 and step.latency_ms is not None and step.latency_ms >= 0
    assert store.load_output(run_id, "classify") == "billing"


def test_retrying_accumulates_attempts_and_cost(store: Store) -> None:
    run_id = new_run(store)
    store.claim_step(run_id, "classify", worker="w1", task_id="t1")
    store.record_step(run_id, "classify", StepOutcome(
        StepStatus.RETRYING, error="boom", error_type="builtins.OSError",
        attempts=[attempt(1, "failed", "builtins.OSError")], cost_usd=0.01))
    claim = store.claim_step(run_id, "classify", worker="w1", task_id="t1")
    assert claim.proceed and claim.attempts == 1
    store.record_step(run_id, "classify", StepOutcome(
        StepStatus.SUCCEEDED, output="ok", attempts=[attempt(2, "succeeded")], cost_usd=0.01))
    run = store.get_run(run_id)
    step = run.steps["classify"]
    assert (step.attempts, step.deliveries, step.retries) == (2, 2, 1)
    assert [a["status"] for a in step.attempt_log] == ["failed", "succeeded"]
    assert step.cost_usd == pytest.approx(0.02) and run.cost_usd == pytest.approx(0.02)


def test_the_record_that_ends_a_run_answers_its_spend_without_a_read(store: Store) -> None:
    run_id = new_run(store)
    store.claim_step(run_id, "classify", worker="w", task_id="t")
    store.record_step(run_id, "classify", StepOutcome(StepStatus.SUCCEEDED, output="x",
                                                      cost_usd=0.25))
    store.claim_step(run_id, "reply", worker="w", task_id="t")
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.startswith("SELECT"):
            statements.append(statement)

    event.listen(store.reader, "before_cursor_execute", seen)
    try:
        assert store.record_step(run_id, "reply", StepOutcome(
            StepStatus.SUCCEEDED, output="y", cost_usd=0.5), finish=RunFinish(
            RunStatus.SUCCEEDED))
        assert store.ended_cost(run_id) == pytest.approx(0.75)  # both steps' spend
        assert statements == []  # the record answered it: no read of the run
        assert store.ended_cost(run_id) == pytest.approx(0.75)  # once: then it is read
        assert len(statements) == 1
    finally:
        event.remove(store.reader, "before_cursor_execute", seen)


def test_a_record_that_does_not_end_the_run_keeps_no_spend(store: Store) -> None:
    run_id = new_run(store)
    assert store.finish_run(run_id, RunStatus.CANCELLED)
    store.claim_step(run_id, "classify", worker="w", task_id="t")
    # The run was already over: FINISH_RUN matches nothing, the spend is read as stored.
    store.record_step(run_id, "classify", StepOutcome(StepStatus.SUCCEEDED, output="x",
                                                      cost_usd=0.1),
                      finish=RunFinish(RunStatus.SUCCEEDED))
    assert store._ended.take(run_id) is None
    assert store.ended_cost(run_id) == pytest.approx(store.run_cost(run_id))


def test_skip_only_touches_unfinished_steps(store: Store) -> None:
    run_id = new_run(store)
    store.claim_step(run_id, "classify", worker="w", task_id="t")
    store.record_step(run_id, "classify", StepOutcome(StepStatus.SUCCEEDED, output="x"))
    assert store.skip_steps(run_id, ["classify", "reply"], "upstream failed") == 1
    assert store.skip_steps(run_id, [], "nothing") == 0
    steps = store.get_run(run_id).steps
    assert steps["classify"].status is StepStatus.SUCCEEDED
    assert (steps["reply"].status, steps["reply"].error) == (StepStatus.SKIPPED, "upstream failed")


def test_run_finishes_once(store: Store) -> None:
    run_id = new_run(store)
    assert store.finish_run(run_id, RunStatus.FAILED, error="classify failed",
                            error_type="StepFailed")
    assert not store.finish_run(run_id, RunStatus.SUCCEEDED)
    run = store.get_run(run_id)
    assert (run.status, run.error, run.error_type) == (
        RunStatus.FAILED, "classify failed", "StepFailed")
    assert run.finished_at is not None and run.duration_s is not None


def test_unknown_runs(store: Store) -> None:
    with pytest.raises(RunNotFound, match="no run 'missing'"):
        store.get_run("missing")
    with pytest.raises(RunNotFound):
        store.run_status("missing")
    with pytest.raises(RunNotFound):
        store.load_inputs("missing")
    with pytest.raises(RunNotFound, match="has no step 'nope'"):
        store.claim_step(new_run(store), "nope", worker=None, task_id=None)


def test_list_runs_filters_and_orders_newest_first(store: Store) -> None:
    old = new_run(store, "support")
    failed = new_run(store, "fraud")
    store.finish_run(failed, RunStatus.FAILED, error="x")
    newest = new_run(store, "support")
    assert [r.run_id for r in store.list_runs()] == [newest, failed, old]
    assert [r.run_id for r in store.list_runs(workflow="support")] == [newest, old]
    assert [r.run_id for r in store.list_runs(status=RunStatus.FAILED)] == [failed]
    assert [r.run_id for r in store.list_runs(limit=1)] == [newest]
    assert store.status_counts() == {RunStatus.PENDING: 2, RunStatus.FAILED: 1}
    assert store.status_counts(workflow="fraud") == {RunStatus.FAILED: 1}


def test_since_filters_by_creation_time(store: Store) -> None:
    before = datetime.now(UTC) - timedelta(seconds=30)
    new_run(store)
    assert len(store.list_runs(since=before)) == 1
    assert store.list_runs(since=datetime.now(UTC) + timedelta(seconds=30)) == []


def test_since_with_a_non_utc_timezone(store: Store) -> None:
    before = datetime.now(UTC) - timedelta(seconds=30)
    new_run(store)
    same_instant = before.astimezone(timezone(timedelta(hours=5)))
    assert len(store.list_runs(since=same_instant)) == 1
    assert store.status_counts(since=same_instant) == {RunStatus.PENDING: 1}


def test_unfinished_runs_and_step_rows(store: Store) -> None:
    pending = new_run(store, "support")
    running = new_run(store, "support")
    store.claim_step(running, "classify", worker="w", task_id="t")
    done = new_run(store, "support")
    store.finish_run(done, RunStatus.SUCCEEDED)
    other = new_run(store, "fraud")
    later = datetime.now(UTC) + timedelta(seconds=1)
    found = store.unfinished_runs(workflows=["support"], created_before=later)
    assert [run_id for run_id, *_ in found] == [pending, running]
    assert found[0][1:] == ("support", "v1", {"x": 1})
    assert store.unfinished_runs(workflows=[], created_before=later) == []
    earlier = datetime.now(UTC) - timedelta(hours=1)
    assert store.unfinished_runs(workflows=["support", "fraud"], created_before=earlier) == []
    rows = store.step_rows(workflow="fraud")
    assert sorted(row[:2] for row in rows) == [("classify", "pending"), ("reply", "pending")]
    assert other not in {run_id for run_id, *_ in found}


@pytest.mark.parametrize("name", ["CLAIM_STEP", "RECORD_STEP", "FINISH_RUN", "FINISH_RUN_COST"])
def test_hot_statements_have_no_parameter_rendered_per_execution(name: str) -> None:
    """A status list in an expanding parameter would be rendered into the SQL string again
    on every execution of every claim and record; the lists are literals of the cached SQL.
    """
    from sqlalchemy.dialects import postgresql, sqlite

    from orchestration.store import statements

    for dialect in (sqlite.dialect(), postgresql.dialect()):
        compiled = getattr(statements, name).compile(dialect=dialect)
        assert not compiled.literal_execute_params and not compiled.post_compile_params
        assert "'pending'" in str(compiled) or "'cancelled'" in str(compiled)


def test_status_constants_refuse_anything_but_a_name() -> None:
    from orchestration.store.statements import constants

    with pytest.raises(ValueError, match="not a status name"):
        constants(["running", "x') OR ('1'='1"])


def test_what_a_wait_reads_is_built_once_not_per_call(store: Store,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """run_status and get_run (every wait) execute statements built at import: building a
    select per call was most of their cost. Same answers as before."""
    from orchestration.store import reads

    run_id = new_run(store)
    store.claim_step(run_id, "classify", worker="w", task_id="t")
    store.record_step(run_id, "classify", StepOutcome(StepStatus.SUCCEEDED, output="x"))

    def built_per_call(*args: object, **kwargs: object) -> None:
        raise AssertionError("a statement built per call on the wait path")

    monkeypatch.setattr(reads, "select", built_per_call)
    assert store.run_status(run_id) in (RunStatus.PENDING, RunStatus.RUNNING)
    run = store.get_run(run_id)
    assert (run.run_id, run.workflow, run.inputs) == (run_id, "support", {"x": 1})
    assert run.steps["classify"].output == "x"
    assert [step for step in run.steps] == ["classify", "reply"]  # in step order
    with pytest.raises(RunNotFound):
        store.get_run("no-such-run")


def test_a_record_writing_conversation_turns_never_shares_a_transaction(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Turns lock rows keyed by conversation, outside the run-id order of a shared
    transaction: such a record (and record-then-claim) runs alone; others share."""
    from orchestration.store.memory import MemoryWrite
    from orchestration.store.repository import ClaimRequest

    calls: list[tuple[str, bool]] = []
    run = store.group.run

    def spy(work: Any, key: str = "", *, shared: bool = True) -> Any:
        calls.append((key, shared))
        return run(work, key, shared=shared)

    monkeypatch.setattr(store.group, "run", spy)
    plain, chatty, last = new_run(store), new_run(store), new_run(store)
    for run_id in (plain, chatty, last):
        store.claim_step(run_id, "classify", worker="w", task_id="t")
    store.record_step(plain, "classify", StepOutcome(StepStatus.SUCCEEDED, output="x"))
    turns = MemoryWrite("support", "conv-1", [("user", "hello", 1)])
    assert store.record_then_claim(
        chatty, "classify", StepOutcome(StepStatus.SUCCEEDED, output="y", memory=turns),
        worker="w", claimed_at=None, then="reply",
        request=ClaimRequest("w", "t", False, None, None, None)) is not None
    assert store.record_step(last, "classify", StepOutcome(
        StepStatus.SUCCEEDED, output="z",
        memory=MemoryWrite("support", "conv-1", [("assistant", "hi", 1)])))
    assert calls == [(plain, True), (chatty, True), (last, True), (plain, True),
                     (chatty, False), (last, False)]
    _, stored_turns = store.memory.load("support", "conv-1")
    assert [turn.content for turn in stored_turns] == ["hello", "hi"]


_TWO_STEPS = [PlannedStep("fan", "fan", "default", None, True),
              PlannedStep("judge", "judge", "default", None, True)]
_CALL = {"model": "m", "ok": True, "latency_ms": 1.5, "breaker": "closed", "error": None,
         "context_utilisation": 0.1}


def test_every_field_of_every_attempt_by_step_in_order(store: Store) -> None:
    """What a run's attempt log reads back: every field, per step, in order; an attempt
    with no model call is stored as SQL NULL (read back without a JSON decode)."""
    run_id = store.create_run(str(uuid.uuid4()), "wf", "v1", {}, _TWO_STEPS)
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    fan = [AttemptRecord(attempt=1, status="succeeded", started_at=start,
                         finished_at=start + timedelta(milliseconds=20), map_index=index)
           for index in range(3)]
    judge = [
        AttemptRecord(attempt=1, status="failed", started_at=start,
                      finished_at=start + timedelta(seconds=1), error="boom",
                      error_type="ProviderError", model="m", cost_usd=0.25, gate="failed: x",
                      tokens_in=7, tokens_out=3, breaker="m:open", calls=[_CALL],
                      error_kind="timeout", policy="timeout: retry"),
        AttemptRecord(attempt=2, status="succeeded", started_at=start + timedelta(seconds=2),
                      finished_at=start + timedelta(seconds=3), model="m"),
    ]
    store.record_step(run_id, "fan", StepOutcome(StepStatus.SUCCEEDED, output=[1, 2, 3],
                                                 attempts=fan), worker="w1")
    store.record_step(run_id, "judge", StepOutcome(StepStatus.SUCCEEDED, output="ok",
                                                   attempts=judge), worker="w2")
    steps = store.get_run(run_id).steps
    assert [entry["map_index"] for entry in steps["fan"].attempt_log] == [0, 1, 2]
    assert steps["judge"].attempt_log == [
        {"attempt": 1, "status": "failed", "error": "boom", "error_type": "ProviderError",
         "latency_ms": 1000.0, "worker": "w2", "model": "m", "cost_usd": 0.25,
         "started_at": start, "gate": "failed: x", "tokens_in": 7, "tokens_out": 3,
         "breaker": "m:open", "map_index": None, "calls": [_CALL], "error_kind": "timeout",
         "policy": "timeout: retry"},
        {"attempt": 2, "status": "succeeded", "error": None, "error_type": None,
         "latency_ms": 1000.0, "worker": "w2", "model": "m", "cost_usd": 0.0,
         "started_at": start + timedelta(seconds=2), "gate": None, "tokens_in": 0,
         "tokens_out": 0, "breaker": None, "map_index": None, "calls": None,
         "error_kind": None, "policy": None},
    ]
    assert steps["judge"].attempt_log[0]["started_at"].tzinfo is not None
    with store.engine.connect() as conn:  # no call: NULL, not the JSON text 'null'
        stored = conn.execute(text("SELECT calls FROM step_attempts WHERE step_name = 'fan'")
                              ).scalars().all()
    assert stored == [None, None, None]


def test_a_json_null_written_before_reads_back_as_none(store: Store) -> None:
    """Attempts written before NULL was used hold JSON null: still None."""
    run_id = store.create_run(str(uuid.uuid4()), "wf", "v1", {}, _TWO_STEPS)
    now = datetime.now(UTC)
    store.record_step(run_id, "fan", StepOutcome(StepStatus.SUCCEEDED, output=1, attempts=[
        AttemptRecord(attempt=1, status="succeeded", started_at=now, finished_at=now)]))
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE step_attempts SET calls = 'null'"))
    assert store.get_run(run_id).steps["fan"].attempt_log[0]["calls"] is None
