"""What a run's attempt log reads back: every field, per step, in order; an attempt with no
model call is stored as SQL NULL (read back without a JSON decode), and a JSON ``null``
written before reads back as None all the same."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from orchestration import StepStatus
from orchestration.store.repository import AttemptRecord, PlannedStep, StepOutcome, Store

STEPS = [PlannedStep("fan", "fan", "default", None, True),
         PlannedStep("judge", "judge", "default", None, True)]
CALL = {"model": "m", "ok": True, "latency_ms": 1.5, "breaker": "closed", "error": None,
        "context_utilisation": 0.1}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.ensure_schema()
    yield store
    store.dispose()


def test_every_field_of_every_attempt_by_step_in_order(store: Store) -> None:
    run_id = store.create_run(str(uuid.uuid4()), "wf", "v1", {}, STEPS)
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    fan = [AttemptRecord(attempt=1, status="succeeded", started_at=start,
                         finished_at=start + timedelta(milliseconds=20), map_index=index)
           for index in range(3)]
    judge = [
        AttemptRecord(attempt=1, status="failed", started_at=start,
                      finished_at=start + timedelta(seconds=1), error="boom",
                      error_type="ProviderError", model="m", cost_usd=0.25, gate="failed: x",
                      tokens_in=7, tokens_out=3, breaker="m:open", calls=[CALL],
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
         "breaker": "m:open", "map_index": None, "calls": [CALL], "error_kind": "timeout",
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
    run_id = store.create_run(str(uuid.uuid4()), "wf", "v1", {}, STEPS)
    now = datetime.now(UTC)
    store.record_step(run_id, "fan", StepOutcome(StepStatus.SUCCEEDED, output=1, attempts=[
        AttemptRecord(attempt=1, status="succeeded", started_at=now, finished_at=now)]))
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE step_attempts SET calls = 'null'"))
    assert store.get_run(run_id).steps["fan"].attempt_log[0]["calls"] is None
