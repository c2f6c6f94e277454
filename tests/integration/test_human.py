"""Human waits (``ctx.wait_for_input``) on real workers: a parked run survives a restart
of every worker of its queue and resumes on approval; an unanswered wait expires into
the step's fallback."""

from __future__ import annotations

import json

import pytest

import orchestration
from orchestration import RunResult, RunStatus, StepStatus, get_run
from orchestration.errors import NoWaitingInput
from tests.integration.support.helpers import statuses, wait_until
from tests.integration.support.workflows import dynamic as dyn
from tests.support.processes import orchestrate
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]


def _parked(run_id: str, step: str) -> RunResult | None:
    run = get_run(run_id)
    if run.status is RunStatus.WAITING and run.steps[step].status is StepStatus.WAITING:
        return run
    return None


def test_waiting_run_survives_a_worker_restart_and_resumes_on_approval(
    extra_workers: Workers,
) -> None:
    first = [extra_workers.start(f"it-human-{n}", [dyn.HUMAN_QUEUE], pool="prefork",
                                 concurrency=1, wait=False) for n in (1, 2)]
    for worker in first:
        extra_workers.wait_ready(worker)

    handle = dyn.human.submit(request="refund")
    run = wait_until(lambda: _parked(handle.run_id, "approval"), timeout=30,
                     what="the run to wait for approval")
    assert statuses(run) == {"prepare": "succeeded", "approval": "waiting",
                             "announce": "pending"}
    assert run.steps["approval"].worker in {w.nodename for w in first}
    assert dyn.calls(handle.run_id, "approval") == 1

    # Warm shutdown of every worker of the queue; the run holds no slot, so nothing is lost.
    extra_workers.stop_many(first)
    assert extra_workers.serving(dyn.HUMAN_QUEUE) == []
    assert _parked(handle.run_id, "approval") is not None
    replacement = extra_workers.start("it-human-3", [dyn.HUMAN_QUEUE], pool="prefork",
                                      concurrency=1)

    done = orchestrate("approve", handle.run_id, "--data", json.dumps({"ok": True}))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "delivered to 1 waiting step(s)" in done.stdout, done.stdout

    result = handle.wait(timeout=30)
    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.outputs["approval"] == {"request": "REFUND", "decision": {"ok": True}}
    assert result.outputs["announce"] == "REFUND approved=True"
    step = result.steps["approval"]
    assert step.status is StepStatus.SUCCEEDED
    assert step.worker == replacement.nodename  # resumed on the new worker
    assert result.steps["announce"].worker == replacement.nodename
    assert step.deliveries == 2  # parked once, resumed once
    assert dyn.calls(handle.run_id, "approval") == 2  # ran again from the start
    # The step before it finished before the wait: it passed its recorded output on.
    assert dyn.calls(handle.run_id, "prepare") == 1

    # Nothing waits any more: a second approval is refused.
    with pytest.raises(NoWaitingInput):
        orchestration.approve(handle.run_id, {"ok": False})


def test_unanswered_wait_expires_into_the_fallback(workers: Workers) -> None:
    handle = dyn.human_timeout.submit(request="refund")
    wait_until(lambda: _parked(handle.run_id, "quick_approval"), timeout=30,
               what="the run to wait for approval")

    # Nobody approves: the engine's expire_waits task (sent with a countdown) re-sends the
    # step, which fails with InputTimeout; its fallback is the output.
    result = handle.wait(timeout=30)
    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    step = result.steps["quick_approval"]
    assert step.status is StepStatus.FALLBACK
    assert step.output == dyn.HUMAN_FALLBACK
    assert step.error_type is not None and step.error_type.endswith("InputTimeout")
    assert result.outputs["after_quick"] == "decision=auto-declined"
    assert dyn.calls(handle.run_id, "quick_approval") == 2  # parked, then timed out
    assert step.started_at is not None and step.finished_at is not None
    waited = (step.finished_at - step.started_at).total_seconds()
    assert waited >= dyn.SHORT_HUMAN_TIMEOUT_S - 0.1, f"expired after {waited:.2f} s"
