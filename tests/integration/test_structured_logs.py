"""Structured logs (``orchestration/logs.py``): a worker started with ``ORCH_LOG_JSON=true``
writes the engine's log lines as JSON objects carrying the step's context (run_id, step,
attempt, queue, model), bound per step in ``orchestration/app.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from orchestration import RunStatus
from tests.integration.support.helpers import wait_until
from tests.integration.support.observability import obs_env
from tests.integration.support.workflows import observability as ow
from tests.support.workers import Worker, Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

RUN_TIMEOUT_S = 30.0
RETRY_WARNING = "step attempt failed; retrying"
CELERY_RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+: [A-Z]+/")


@pytest.fixture(scope="module")
def worker(redis_service: Any, postgres_database: str, worker_logs: Path) -> Iterator[Worker]:
    pool = Workers(worker_logs, env=obs_env(ORCH_LOG_JSON="true", ORCH_LOG_LEVEL="INFO"))
    try:
        yield pool.start("it-obs-logs", [ow.OBS_QUEUE], pool="threads", concurrency=2)
    finally:
        pool.stop_all()


def json_lines(worker: Worker) -> list[dict[str, Any]]:
    """Every line of the worker's log that the engine wrote (they start with '{')."""
    return [json.loads(line) for line in worker.log_path.read_text(errors="replace").splitlines()
            if line.startswith("{")]


def retry_warnings(worker: Worker, run_id: str, count: int) -> list[dict[str, Any]]:
    """The run's retry warnings, once ``count`` of them are in the log."""
    def probe() -> list[dict[str, Any]] | None:
        found = [line for line in json_lines(worker)
                 if line.get("event") == RETRY_WARNING and line.get("run_id") == run_id]
        return found if len(found) >= count else None

    return wait_until(probe, timeout=10, what=f"{count} retry warning(s) of run {run_id}")


def test_a_retried_steps_warning_is_a_json_line_with_its_context(worker: Worker) -> None:
    run = ow.logs.run(text="hello", timeout=RUN_TIMEOUT_S)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.steps["flaky_model"].attempts == 2

    [warning] = retry_warnings(worker, run.run_id, 1)
    assert warning["level"] == "warning"
    assert warning["run_id"] == run.run_id
    assert warning["step"] == "obs_logs.flaky_model"
    assert warning["attempt"] == 1
    assert warning["queue"] == ow.OBS_QUEUE
    assert warning["model"] == "obs-fast"
    assert warning["task_id"]  # the Celery task id, to find the message in Flower
    assert "provider returned 503" in warning["error"]
    assert warning["wait_s"] == pytest.approx(0.01)
    datetime.fromisoformat(warning["timestamp"].replace("Z", "+00:00"))
    # Every engine line in the log is a JSON object with an event, a level and a time.
    lines = json_lines(worker)
    assert lines and all({"event", "level", "timestamp"} <= set(line) for line in lines)


def test_attempt_numbers_in_warnings_continue_across_broker_retries(worker: Worker) -> None:
    run = ow.broker_logs.run(text="HELLO", timeout=RUN_TIMEOUT_S)
    assert run.status is RunStatus.SUCCEEDED, run.error
    step = run.steps["patient_model"]
    assert step.attempts == 3 and step.deliveries >= 3

    warnings = retry_warnings(worker, run.run_id, 2)
    assert [line["step"] for line in warnings] == ["obs_broker_logs.patient_model"] * 2
    assert [line["attempt"] for line in warnings] == [1, 2]


def test_every_log_line_after_start_up_is_json(worker: Worker) -> None:
    run = ow.logs.run(text="again", timeout=RUN_TIMEOUT_S)
    assert run.status is RunStatus.SUCCEEDED, run.error
    retry_warnings(worker, run.run_id, 1)
    text = worker.log_path.read_text(errors="replace")
    after_ready = text.split(f"{worker.nodename} ready.", 1)[1].splitlines()[1:]
    plain = [line for line in after_ready if line.strip() and not line.startswith("{")]
    assert not plain, f"{len(plain)} plain-text lines, e.g. {plain[:3]}"
    assert not any(CELERY_RECORD.match(line) for line in after_ready)
