"""Secrets never reach the results DB or the logs (``orchestration/redaction.py``).

A threads worker of this module runs ``obs_redact`` (``support/workflows/observability.py``): its
input carries an ``api_key``, a step fails with an ``Authorization: Bearer`` header in
its message (retried once, so a retry warning is logged), a step outputs a ``password``
field, and the workflow's ``redact=`` hook masks e-mail addresses in what is stored.
Afterwards every row of every table of the results DB is dumped as text and grepped,
and so are the worker's log and what the test process logged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestration import RunStatus, StepStatus, approve, get_run
from orchestration.core.redaction import REDACTED
from tests.integration.support.helpers import wait_until
from tests.integration.support.observability import dump_database, obs_env
from tests.integration.support.workflows import observability as ow
from tests.support.workers import Worker, Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

RUN_TIMEOUT_S = 30.0
RETRY_WARNING = "step attempt failed; retrying"


@pytest.fixture(scope="module")
def worker(redis_service: Any, postgres_database: str, worker_logs: Path) -> Iterator[Worker]:
    """A threads worker on the observability queue, logging JSON lines."""
    pool = Workers(worker_logs, env=obs_env(ORCH_LOG_JSON="true"))
    try:
        yield pool.start("it-obs-redact", [ow.OBS_QUEUE], pool="threads", concurrency=4)
    finally:
        pool.stop_all()


def credentials(api_key: str = ow.API_KEY) -> dict[str, Any]:
    return {"user": "svc-billing", "api_key": api_key, "region": "eu"}


def engine_lines(worker: Worker) -> list[dict[str, Any]]:
    """The worker's structlog lines (JSON objects), in order."""
    lines = []
    for line in worker.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def leaks(text: str, secrets: tuple[str, ...]) -> list[str]:
    return [secret for secret in secrets if secret in text]


def test_secrets_and_pii_never_reach_the_results_db(
    worker: Worker, postgres_database: str, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = ow.redact.run(credentials=credentials(), timeout=RUN_TIMEOUT_S)

    # What the API reads back.
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.inputs["credentials"] == {"user": "svc-billing", "api_key": REDACTED,
                                         "region": "eu"}
    assert run.steps["login"].output == {"user": "svc-billing", "password": REDACTED,
                                         "session": "s-1"}
    upstream = run.steps["call_upstream"]
    assert upstream.status is StepStatus.FALLBACK
    assert upstream.attempts == 2
    assert upstream.error is not None and f"Authorization: {REDACTED}" in upstream.error
    for attempt in upstream.attempt_log:
        assert attempt["status"] == "failed"
        assert f"Authorization: {REDACTED}" in attempt["error"]
    # The redact= hook ran on the stored output (the step itself saw the real address).
    assert run.steps["contact"].output == {
        "user": "svc-billing", "email": ow.EMAIL_MASK,
        "note": f"mail {ow.EMAIL_MASK} if it fails again"}

    # Every row of every table of the results DB, as text.
    tables = dump_database(postgres_database)
    assert {"runs", "steps", "step_attempts"} <= set(tables)
    found = {name: leaks(text, ow.SECRETS) for name, text in tables.items()}
    assert all(not secrets for secrets in found.values()), f"secrets stored: {found}"
    assert REDACTED in tables["runs"]  # the api_key input
    assert REDACTED in tables["steps"]  # the password output and the bearer in the error
    assert REDACTED in tables["step_attempts"]  # each attempt's error
    assert ow.EMAIL_MASK in tables["steps"]

    # The engine's own log lines in the worker: the retry warning is there, scrubbed.
    def retry_warnings() -> list[dict[str, Any]]:
        return [line for line in engine_lines(worker)
                if line.get("event") == RETRY_WARNING and line.get("run_id") == run.run_id]

    warnings = wait_until(retry_warnings, timeout=10, what="the retry warning of call_upstream")
    assert warnings[0]["step"] == "obs_redact.call_upstream"
    assert REDACTED in warnings[0]["error"]
    for line in engine_lines(worker):
        assert not leaks(json.dumps(line), ow.SECRETS), line

    # And nothing the test process logged (stdout/stderr at the fd level, logging records).
    captured = capfd.readouterr()
    assert not leaks(captured.out + captured.err + caplog.text, ow.SECRETS)


def test_worker_log_never_contains_secrets(worker: Worker) -> None:
    def lines(state: str) -> int:
        """Celery's lines for this workflow's deliveries: one per step message, or one for
        a bundle of them; the last step may run in the delivery completing its join."""
        return sum(("Task obs_redact." in line or "Task orchestration.bundle[" in line)
                   and state in line
                   for line in worker.log_path.read_text(errors="replace").splitlines())

    received, succeeded = lines("received"), lines("succeeded")
    run = ow.redact.run(credentials=credentials(), timeout=RUN_TIMEOUT_S)
    assert run.status is RunStatus.SUCCEEDED, run.error

    # Every delivery of the run was received before it ended; each logs its end only
    # after recording its steps: wait for as many ends as deliveries (Celery's line no
    # longer carries the return value, so not the run id either).
    def logged_every_delivery() -> bool:
        started = lines("received") - received
        return started > 0 and lines("succeeded") - succeeded >= started

    wait_until(logged_every_delivery, timeout=10,
               what="the worker to log the end of the run's deliveries")
    log = worker.log_path.read_text(errors="replace")
    assert REDACTED in log
    assert not leaks(log, ow.SECRETS), (
        f"secrets {leaks(log, ow.SECRETS)} in {worker.log_path}; e.g. "
        + next((line for line in log.splitlines() if leaks(line, ow.SECRETS)), ""))


def test_cached_output_is_stored_redacted(worker: Worker, postgres_database: str) -> None:
    run = ow.redact_cache.run(user="svc-cache", password=ow.CACHE_PASSWORD,
                              timeout=RUN_TIMEOUT_S)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.steps["cached_login"].output == {"user": "svc-cache", "password": REDACTED}
    tables = dump_database(postgres_database)
    found = {name: leaks(text, (ow.CACHE_PASSWORD,)) for name, text in tables.items()}
    assert all(not secrets for secrets in found.values()), f"secrets stored: {found}"


def test_map_element_errors_are_stored_redacted(worker: Worker,
                                                postgres_database: str) -> None:
    token = f"Bearer {ow.MAP_TOKEN}"
    run = ow.redact_map.run(headers=["a", token, "b"], timeout=RUN_TIMEOUT_S)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.steps["probe"].output == ["ok:a", None, "ok:b"]
    tables = dump_database(postgres_database)
    found = {name: leaks(text, (ow.MAP_TOKEN,)) for name, text in tables.items()}
    assert all(not secrets for secrets in found.values()), f"secrets stored: {found}"


def test_parked_message_is_stored_without_secrets(worker: Worker,
                                                  postgres_database: str) -> None:
    handle = ow.redact_wait.submit(credentials=credentials(ow.WAIT_API_KEY))
    try:
        wait_until(lambda: get_run(handle.run_id).status is RunStatus.WAITING,
                   timeout=RUN_TIMEOUT_S, what="the run to wait for input")
        tables = dump_database(postgres_database)
    finally:
        approve(handle.run_id, "approved")
    run = handle.wait(timeout=RUN_TIMEOUT_S)
    assert run.outputs["review"] == "approved"
    found = {name: leaks(text, (ow.WAIT_API_KEY,)) for name, text in tables.items()}
    assert all(not secrets for secrets in found.values()), f"secrets stored: {found}"
