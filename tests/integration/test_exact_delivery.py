"""A step receives exactly what was submitted, or the run refuses to continue.

Secrets are stored redacted (``orchestration/redaction.py``), so nothing read back from
the results DB may stand in for them: a large value that redaction changed travels
inline, never by reference; ``resume`` and the reconciler refuse runs whose stored inputs
(or finished steps' outputs that steps still to run read) were redacted, naming them; and
``resume`` checks everything before it changes anything.

Steps answer digests of what they received (``support/workflows/exact_delivery.py``); the
tests compare them with digests of what they sent. A threads worker of this module serves
``EXACT_QUEUE``; nothing serves ``LOST_QUEUE`` until a test starts a worker for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import orchestration
from orchestration import (
    InvalidInput,
    RunNotFound,
    RunResult,
    RunStatus,
    StepStatus,
    default_orchestrator,
    get_run,
)
from orchestration.core.redaction import REDACTED
from orchestration.errors import NotResumable
from tests.integration.support.helpers import backdate_run, statuses, wait_until
from tests.integration.support.workflows import exact_delivery as sw
from tests.integration.support.workflows.common import calls
from tests.support.processes import child_env, orchestrate
from tests.support.services import waiting_messages
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

MODULE = "tests.integration.support.workflows.exact_delivery"
RUN_TIMEOUT_S = 60.0
STALE_S = 12 * 3600.0  # the reconciler's idle threshold here: only backdated runs qualify
CREDS = {"user": "dana", "password": "hunter2-correct-horse"}
NOTE = "use token=abcdef123456 now"


def _env(**extra: str) -> dict[str, str]:
    """The session's environment for a child process, importing this module's workflows."""
    return child_env(imports=(MODULE,), **extra)


@pytest.fixture(scope="module")
def exact_worker(redis_service: redis.Redis, postgres_database: str,
                  worker_logs: Path) -> Iterator[Workers]:
    """A threads worker on EXACT_QUEUE that imports this module's workflows."""
    pool = Workers(worker_logs, env=_env(ORCH_RECONCILE_AFTER=str(STALE_S)))
    try:
        pool.start("it-exact", [sw.EXACT_QUEUE], pool="threads", concurrency=4)
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture
def lost_worker(exact_worker: Workers, worker_logs: Path) -> Iterator[Workers]:
    """Start (inside a test) a worker for LOST_QUEUE; stopped when the test ends."""
    pool = Workers(worker_logs, env=_env(ORCH_RECONCILE_AFTER=str(STALE_S)))
    try:
        yield pool
    finally:
        pool.stop_all()


def _failed_run(redis_service: redis.Redis, workflow: orchestration.Workflow,
                **inputs: Any) -> RunResult:
    """A run of ``workflow`` that failed because its ticket's flag was set (flag cleared)."""
    redis_service.set(sw.fail_flag_key(inputs["ticket"]), 1, ex=600)
    run = workflow.submit(**inputs).wait(timeout=RUN_TIMEOUT_S)
    redis_service.delete(sw.fail_flag_key(inputs["ticket"]))
    assert run.status is RunStatus.FAILED, (run.error, statuses(run))
    return run


def _finished(run_id: str) -> RunResult:
    """The run once it is terminal again (after a resume)."""
    def probe() -> RunResult | None:
        run = get_run(run_id)
        return run if run.status.is_terminal else None

    return wait_until(probe, timeout=RUN_TIMEOUT_S, what=f"run {run_id} to finish")


def _unchanged(before: RunResult) -> None:
    """The run and its steps are exactly as they were."""
    after = get_run(before.run_id)
    assert (after.status, after.error, after.finished_at) == (
        before.status, before.error, before.finished_at)
    assert {name: (step.status, step.attempts, step.finished_at)
            for name, step in after.steps.items()} == {
        name: (step.status, step.attempts, step.finished_at)
        for name, step in before.steps.items()}
    assert after.inputs == before.inputs


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the tasks this process sends to the broker (a test clears it to start)."""
    celery = default_orchestrator().celery
    names: list[str] = []
    real = celery.send_task

    def record(name: str, *args: Any, **kwargs: Any) -> Any:
        names.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(celery, "send_task", record)
    return names


def _lose_messages(client: redis.Redis, queue: str, expected: int) -> None:
    """Wait for ``expected`` messages on ``queue``, then drop them (a broker that lost them)."""
    wait_until(lambda: waiting_messages(client, queue) == expected, timeout=20,
               what=f"{expected} message(s) on {queue}")
    with default_orchestrator().celery.connection_for_write() as conn:
        assert conn.default_channel.queue_purge(queue) == expected


# -- values past the inline limit --------------------------------------------------------------


def test_large_input_and_output_with_secrets_reach_the_steps_unchanged(
    exact_worker: Workers,
) -> None:
    limit = default_orchestrator().settings.inline_output_limit
    document = "contact dana@example.com token=abcdef123456 " + "lorem ipsum " * (limit // 6)
    profile = {"name": "dana", "password": "hunter2-correct-horse", "bio": "x" * (limit + 1)}

    run = sw.large.run(document=document, profile=profile, timeout=RUN_TIMEOUT_S)

    assert run.status is RunStatus.SUCCEEDED, (run.error, statuses(run))
    # The input (by value, though large) and the large output with a secret both arrived.
    assert run.outputs["quote"]["seen"] == sw.digest([document, profile])
    assert run.outputs["check"] == sw.digest(document)
    # ... while what is stored stays redacted.
    assert "abcdef123456" not in str(run.inputs) and REDACTED in run.inputs["document"]
    assert run.inputs["profile"]["password"] == REDACTED
    assert REDACTED in run.steps["quote"].output["copy"]


def test_a_step_after_a_map_reads_the_mapped_list_as_submitted(exact_worker: Workers) -> None:
    accounts = [{"user": f"u{index}", "password": f"pw-{index}-correct-horse"}
                for index in range(5)]

    run = sw.mapped.run(accounts=accounts, timeout=RUN_TIMEOUT_S)

    assert run.status is RunStatus.SUCCEEDED, (run.error, statuses(run))
    assert run.outputs["probe"] == [sw.digest(account) for account in accounts]
    assert run.outputs["audit"] == sw.digest(accounts)
    assert all(account["password"] == REDACTED for account in run.inputs["accounts"])


# -- resume ------------------------------------------------------------------------------------


def test_resume_refuses_nested_and_partly_redacted_inputs_then_runs_with_them(
    exact_worker: Workers, redis_service: redis.Redis, sent: list[str],
) -> None:
    ticket = uuid.uuid4().hex[:12]
    failed = _failed_run(redis_service, sw.resumable, ticket=ticket, creds=CREDS, note=NOTE)
    assert failed.inputs["creds"]["password"] == REDACTED
    assert failed.inputs["note"] == f"use {REDACTED} now"
    sent.clear()

    with pytest.raises(InvalidInput) as refused:
        orchestration.resume(failed.run_id)
    message = str(refused.value)
    assert "creds (at creds.password)" in message and "note" in message, message
    # Giving one of them is not enough.
    with pytest.raises(InvalidInput, match="note"):
        orchestration.resume(failed.run_id, inputs={"creds": CREDS})
    _unchanged(failed)
    assert sent == []

    orchestration.resume(failed.run_id, inputs={"creds": CREDS, "note": NOTE})
    result = _finished(failed.run_id)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.outputs["sign_in"] == sw.digest([CREDS, NOTE])
    assert calls(failed.run_id, "sign_in") == 2
    assert result.inputs["creds"]["password"] == REDACTED  # still never stored


def test_resume_refuses_inputs_a_redact_hook_changed_then_runs_with_them(
    exact_worker: Workers, redis_service: redis.Redis, sent: list[str],
) -> None:
    ticket = uuid.uuid4().hex[:12]
    text = "please write to dana@example.com today"
    failed = _failed_run(redis_service, sw.hooked, ticket=ticket, text=text)
    assert failed.inputs["text"] == "please write to <email> today"  # no marker in it
    sent.clear()

    with pytest.raises(InvalidInput, match=r"text \(changed by the workflow's redact= hook\)"):
        orchestration.resume(failed.run_id)
    _unchanged(failed)
    assert sent == []

    orchestration.resume(failed.run_id, inputs={"text": text})
    result = _finished(failed.run_id)
    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.outputs["reply"] == sw.digest(text)


def test_resume_refuses_when_a_step_to_rerun_reads_a_redacted_output(
    exact_worker: Workers, redis_service: redis.Redis, sent: list[str],
) -> None:
    ticket = uuid.uuid4().hex[:12]
    failed = _failed_run(redis_service, sw.handover, ticket=ticket)
    assert failed.steps["issue"].output["access_token"] == REDACTED
    sent.clear()

    with pytest.raises(NotResumable, match="issue"):
        orchestration.resume(failed.run_id)

    _unchanged(failed)
    assert sent == []
    assert calls(failed.run_id, "redeem") == 1


@pytest.mark.parametrize("bad, culprit", [
    ([1], "must be a JSON object"),
    ("creds", "must be a JSON object"),
    ({"ticket": "t", "bogus": 1}, "unknown input.*'bogus'"),
    ({"note": float("nan")}, "note"),
])
def test_resume_with_bad_inputs_changes_nothing(
    exact_worker: Workers, redis_service: redis.Redis, sent: list[str], bad: Any,
    culprit: str,
) -> None:
    ticket = uuid.uuid4().hex[:12]
    failed = _failed_run(redis_service, sw.resumable, ticket=ticket, creds=CREDS, note=NOTE)
    sent.clear()

    with pytest.raises(InvalidInput, match=culprit):
        orchestration.resume(failed.run_id, inputs=bad)

    _unchanged(failed)
    assert sent == []


def test_resume_of_an_unknown_or_running_run_changes_nothing(
    exact_worker: Workers, redis_service: redis.Redis, sent: list[str],
) -> None:
    with pytest.raises(RunNotFound):
        orchestration.resume(str(uuid.uuid4()), inputs={"note": NOTE})
    ticket = uuid.uuid4().hex[:12]
    run = sw.stranded.submit(ticket=ticket, creds=CREDS, note=NOTE)  # pending: nobody serves
    _lose_messages(redis_service, sw.LOST_QUEUE, 1)
    sent.clear()
    with pytest.raises(NotResumable, match="pending"):
        orchestration.resume(run.run_id, inputs={"creds": CREDS, "note": NOTE})
    assert get_run(run.run_id).status is RunStatus.PENDING
    assert sent == []
    default_orchestrator().store.finish_run(run.run_id, RunStatus.CANCELLED, error="test done")


def test_cli_resume_with_inputs_not_an_object_changes_nothing(
    exact_worker: Workers, redis_service: redis.Redis,
) -> None:
    ticket = uuid.uuid4().hex[:12]
    failed = _failed_run(redis_service, sw.resumable, ticket=ticket, creds=CREDS, note=NOTE)

    cli = orchestrate("resume", failed.run_id, "--inputs", "[1]", env=_env())

    assert cli.returncode != 0
    assert "must be a JSON object" in cli.stderr, cli.stderr[-2000:]
    assert "Traceback" not in cli.stderr, cli.stderr[-2000:]
    _unchanged(failed)
    assert calls(failed.run_id, "sign_in") == 1


# -- the reconciler ----------------------------------------------------------------------------


def test_reconciler_fails_a_run_with_nested_secrets_naming_them_and_resume_completes_it(
    exact_worker: Workers, redis_service: redis.Redis, lost_worker: Workers,
) -> None:
    ticket = uuid.uuid4().hex[:12]
    run_id = sw.stranded.submit(ticket=ticket, creds=CREDS, note=NOTE).run_id
    _lose_messages(redis_service, sw.LOST_QUEUE, 1)
    backdate_run(run_id)  # a day back: it looks stalled

    done = orchestration.reconcile(idle_seconds=STALE_S)

    # Re-dispatching would hand the step {'password': '[REDACTED]'} and 'use [REDACTED] now'.
    assert (done.redispatched, done.failed) == ([], [run_id])
    run = get_run(run_id)
    assert run.status is RunStatus.FAILED and run.error_type == "Unrecoverable", run.error
    assert "creds (at creds.password)" in (run.error or "") and "note" in (run.error or "")
    assert waiting_messages(redis_service, sw.LOST_QUEUE) == 0
    assert calls(run_id, "use_creds") == 0

    # Given again, the run completes with what was submitted.
    lost_worker.start("it-exact-lost", [sw.LOST_QUEUE], pool="threads", concurrency=2)
    orchestration.resume(run_id, inputs={"creds": CREDS, "note": NOTE})
    result = _finished(run_id)
    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.outputs["use_creds"] == sw.digest([CREDS, NOTE])


def test_reconciler_fails_a_run_whose_pending_step_reads_a_redacted_output(
    exact_worker: Workers, redis_service: redis.Redis,
) -> None:
    ticket = uuid.uuid4().hex[:12]
    run_id = sw.half_done.submit(ticket=ticket).run_id
    wait_until(lambda: get_run(run_id).steps["grant"].status is StepStatus.SUCCEEDED,
               timeout=RUN_TIMEOUT_S, what="step grant")
    _lose_messages(redis_service, sw.LOST_QUEUE, 1)  # spend's message
    backdate_run(run_id)  # a day back: it looks stalled

    done = orchestration.reconcile(idle_seconds=STALE_S)

    assert (done.redispatched, done.failed) == ([], [run_id])
    run = get_run(run_id)
    assert run.status is RunStatus.FAILED and run.error_type == "Unrecoverable", run.error
    assert "grant" in (run.error or ""), run.error
    assert run.steps["spend"].status is StepStatus.PENDING
    assert calls(run_id, "spend") == 0
