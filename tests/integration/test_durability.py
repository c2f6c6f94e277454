"""Durability: resume, idempotent submission under contention, the step result cache,
cancellation across a worker restart, poison steps, and bad input kept out.

Every cross-process observation goes through the results DB or Redis counters; nothing
waits by sleeping: each wait polls with a deadline.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

import orchestration
from orchestration import (
    InvalidInput,
    RunNotFound,
    RunStatus,
    StepStatus,
    default_orchestrator,
    get_run,
    list_runs,
)
from orchestration.define.fingerprint import cache_key
from orchestration.errors import NotResumable
from orchestration.store.models import CacheRow, RunRow
from tests.integration.support.helpers import statuses, wait_until
from tests.integration.support.workflows import durability as dw
from tests.integration.support.workflows.common import calls, counter_key
from tests.support.processes import ROOT, child_env, orchestrate
from tests.support.services import waiting_messages
from tests.support.workers import Worker, Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

MAX_CRASHES = 2  # ORCH_MAX_CRASHES of the worker serving OWN_QUEUE
SUBMITTERS = 8


def _run_count(workflow: str) -> int:
    return len(list_runs(workflow=workflow, limit=10_000))


# -- 1. resume ----------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["api", "cli"])
def test_resume_reruns_only_the_failed_part_under_the_same_run_id(
    workers: Workers, redis_service: redis.Redis, via: str,
) -> None:
    ticket = uuid.uuid4().hex[:12]
    redis_service.set(dw.fail_flag_key(ticket), 1, ex=600)
    handle = dw.resumable.submit(ticket=ticket)
    run_id = handle.run_id

    failed = handle.wait(timeout=30)

    assert failed.status is RunStatus.FAILED, statuses(failed)
    assert statuses(failed) == {"fetch": "succeeded", "analyse": "failed", "report": "skipped"}
    assert (calls(run_id, "fetch"), calls(run_id, "analyse"), calls(run_id, "report")) == (
        1, 1, 0)
    fetched = failed.steps["fetch"]
    runs_before = _run_count("it_dur_resume")

    redis_service.delete(dw.fail_flag_key(ticket))
    if via == "api":
        assert orchestration.resume(run_id).run_id == run_id
    else:
        cli = orchestrate("resume", run_id)
        assert cli.returncode == 0, cli.stderr[-2000:]
        assert f"resumed run {run_id}" in cli.stdout
    result = handle.wait(timeout=30)

    assert result.run_id == run_id
    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.error is None and result.error_type is None
    doc = f"doc-{ticket}"
    assert result.outputs == {"fetch": doc, "analyse": doc.upper(),
                              "report": f"report:{doc.upper()}"}
    assert _run_count("it_dur_resume") == runs_before  # no new run row
    # The completed step was not run again: its counter and its record did not move.
    assert calls(run_id, "fetch") == 1
    fetch = result.steps["fetch"]
    assert (fetch.attempts, fetch.deliveries) == (1, 1)
    assert (fetch.started_at, fetch.finished_at) == (fetched.started_at, fetched.finished_at)
    # The failed step ran again and kept the history of both deliveries.
    analyse = result.steps["analyse"]
    assert calls(run_id, "analyse") == 2
    assert analyse.status is StepStatus.SUCCEEDED
    assert analyse.deliveries == 2
    assert analyse.attempts == 2
    assert [(a["attempt"], a["status"]) for a in analyse.attempt_log] == [
        (1, "failed"), (2, "succeeded")]
    assert "analysis model down" in (analyse.attempt_log[0]["error"] or "")
    assert calls(run_id, "report") == 1
    assert result.finished_at is not None and failed.finished_at is not None
    assert result.finished_at > failed.finished_at

    # A succeeded run is not resumable, with a message that says why.
    expected = f"run {run_id} is succeeded; only failed or cancelled runs can be resumed"
    if via == "api":
        with pytest.raises(NotResumable, match=re.escape(expected)):
            orchestration.resume(run_id)
        with pytest.raises(RunNotFound):
            orchestration.resume(str(uuid.uuid4()))
    else:
        cli = orchestrate("resume", run_id)
        assert cli.returncode != 0
        assert expected in cli.stderr, cli.stderr[-2000:]
    assert get_run(run_id).status is RunStatus.SUCCEEDED


def test_resume_passes_the_submitted_inputs_even_when_they_are_secret_named(
    workers: Workers, redis_service: redis.Redis,
) -> None:
    ticket = uuid.uuid4().hex[:12]
    key = "k" * 24  # 24 characters; '[REDACTED]' has 10
    redis_service.set(dw.fail_flag_key(ticket), 1, ex=600)
    handle = dw.secret_resume.submit(ticket=ticket, api_key=key)
    assert handle.wait(timeout=30).status is RunStatus.FAILED
    redis_service.delete(dw.fail_flag_key(ticket))

    # Secrets are never stored: resume refuses until they are given again.
    with pytest.raises(InvalidInput, match="api_key were redacted when stored"):
        orchestration.resume(handle.run_id)
    assert get_run(handle.run_id).status is RunStatus.FAILED
    orchestration.resume(handle.run_id, inputs={"api_key": key})
    result = handle.wait(timeout=30)

    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert calls(handle.run_id, "authorize") == 2
    assert result.outputs["authorize"] == len(key)


# -- 2. idempotency under concurrent submitters ----------------------------------------------

_SUBMIT_AT_BARRIER = """
import json, os, sys, time
import redis
from orchestration import default_orchestrator
from tests.integration.support.workflows.durability import idempotent

key, ready_key, go_key = sys.argv[1:4]
default_orchestrator().store.ensure_schema()  # connected before the barrier
idempotent.validate()
client = redis.Redis.from_url(os.environ["ORCH_REDIS_URL"])
client.incr(ready_key)
deadline = time.monotonic() + 60
# Short BLPOPs: redis-py's default socket timeout (5 s) would cut a longer one short.
while not client.blpop([go_key], timeout=1):
    if time.monotonic() > deadline:
        sys.exit("the barrier never opened")
handle = idempotent.submit(idempotency_key=key, order=f"order-{os.getpid()}")
print(json.dumps({"run_id": handle.run_id, "existing": handle.existing, "pid": os.getpid()}))
"""


def test_concurrent_submitters_with_one_idempotency_key_start_one_run(
    workers: Workers, redis_service: redis.Redis,
) -> None:
    key = f"order-{uuid.uuid4().hex}"
    ready_key, go_key = f"it:dur:ready:{key}", f"it:dur:go:{key}"
    processes = [
        subprocess.Popen([sys.executable, "-c", _SUBMIT_AT_BARRIER, key, ready_key, go_key],
                         cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for _ in range(SUBMITTERS)
    ]
    try:
        wait_until(lambda: int(redis_service.get(ready_key) or 0) == SUBMITTERS, timeout=60,
                   what=f"{SUBMITTERS} submitters at the barrier")
        redis_service.rpush(go_key, *["go"] * SUBMITTERS)  # all of them at once
        outputs = [process.communicate(timeout=60) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    answers = []
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-2000:]
        answers.append(json.loads(stdout.strip().splitlines()[-1]))
    run_ids = {answer["run_id"] for answer in answers}
    assert len(run_ids) == 1, answers
    (run_id,) = run_ids
    creators = [answer for answer in answers if not answer["existing"]]
    assert len(creators) == 1, answers
    with default_orchestrator().store.reader.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(RunRow)
                            .where(RunRow.idempotency_key == key)).scalar()
    assert rows == 1

    result = orchestration.RunHandle(run_id, default_orchestrator().store).wait(timeout=30)
    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    # It ran once, with the inputs of the submitter that created it.
    assert result.outputs == {"charge": f"charged order-{creators[0]['pid']}"}
    assert calls(run_id, "charge") == 1
    assert result.steps["charge"].deliveries == 1
    assert result.steps["charge"].attempts == 1
    # No step of this workflow ran for any other run id.
    assert list(redis_service.scan_iter(match="it:calls:*:charge")) == [
        counter_key(run_id, "charge").encode()]


# -- 3. the step result cache ----------------------------------------------------------------


def test_cached_step_runs_once_per_input(workers: Workers) -> None:
    ticket = uuid.uuid4().hex[:12]

    first = dw.cached.submit(ticket=ticket, x=1).wait(timeout=30)
    second = dw.cached.submit(ticket=ticket, x=1).wait(timeout=30)
    other = dw.cached.submit(ticket=ticket, x=2).wait(timeout=30)

    for run in (first, second, other):
        assert run.status is RunStatus.SUCCEEDED, (run.error, statuses(run))
    assert first.steps["embed_doc"].cache_hit is False
    assert first.outputs["embed_doc"] == f"{ticket}:1:call1"
    hit = second.steps["embed_doc"]
    assert hit.cache_hit is True
    assert hit.status is StepStatus.SUCCEEDED
    assert hit.output == f"{ticket}:1:call1"  # the first run's output, not a new call
    assert hit.attempts == 0
    miss = other.steps["embed_doc"]
    assert miss.cache_hit is False
    assert miss.output == f"{ticket}:2:call2"
    assert dw.cache_calls(ticket) == 2  # x=1 once (then from the cache), x=2 once


def test_cache_entry_with_a_ttl_expires(workers: Workers) -> None:
    ticket = uuid.uuid4().hex[:12]
    spec = dw.ttl_cached.steps["embed_briefly"]
    key = cache_key(spec, {"ticket": ticket})

    first = dw.ttl_cached.submit(ticket=ticket).wait(timeout=30)
    assert first.status is RunStatus.SUCCEEDED, (first.error, statuses(first))
    assert first.steps["embed_briefly"].cache_hit is False
    with default_orchestrator().store.reader.connect() as conn:
        created, expires = conn.execute(select(CacheRow.created_at, CacheRow.expires_at)
                                        .where(CacheRow.key == key)).one()
    assert (expires - created).total_seconds() == pytest.approx(1.0)

    second = dw.ttl_cached.submit(ticket=ticket).wait(timeout=30)
    step = second.steps["embed_briefly"]
    assert step.cache_hit is True, (step.started_at, expires)
    assert step.output == f"{ticket}:call1"

    # Poll until the entry has expired: runs keep hitting until then, then one misses.
    deadline = time.monotonic() + 15
    while True:
        run = dw.ttl_cached.submit(ticket=ticket).wait(timeout=30)
        step = run.steps["embed_briefly"]
        if not step.cache_hit:
            break
        assert step.started_at is not None and step.started_at < expires
        assert time.monotonic() < deadline, "the 1 s cache entry never expired"
        time.sleep(0.1)
    assert run.status is RunStatus.SUCCEEDED
    assert step.finished_at is not None and step.finished_at >= expires
    assert step.output == f"{ticket}:call2"
    assert dw.cache_calls(ticket) == 2


# -- 4. cancellation across a worker restart ---------------------------------------------------


def test_cancelled_run_survives_a_worker_restart(
    workers: Workers, extra_workers: Workers, redis_service: redis.Redis,
) -> None:
    ticket = uuid.uuid4().hex[:12]
    first = extra_workers.start("it-dur-cancel-1", [dw.CANCEL_QUEUE], pool="threads",
                                concurrency=1)
    handle = dw.cancellable.submit(ticket=ticket)
    run_id = handle.run_id
    try:
        wait_until(lambda: calls(run_id, "gate") == 1, timeout=20, what="gate to start")
        # The worker of the next steps' queue goes away; the run is cancelled meanwhile.
        extra_workers.stop(first)
        assert extra_workers.serving(dw.CANCEL_QUEUE) == []
        cli = orchestrate("cancel", run_id)
        assert cli.returncode == 0, cli.stderr[-2000:]
        assert f"cancelled 1 run(s): {run_id}" in cli.stdout
        cancelled = handle.result()
        assert cancelled.status is RunStatus.CANCELLED
        assert statuses(cancelled) == {"gate": "running", "after_gate": "cancelled",
                                       "last_step": "cancelled"}
        second = extra_workers.start("it-dur-cancel-2", [dw.CANCEL_QUEUE], pool="threads",
                                     concurrency=1)
    finally:
        redis_service.rpush(dw.release_key(ticket), "go")

    # The running step finishes its attempt; the next messages reach the new worker,
    # which consumes them without starting their steps.
    wait_until(lambda: "last_step" in dw.consumed_steps(run_id), timeout=20,
               what="the new worker to consume the cancelled run's last message")
    assert "Task it_dur_cancel.after_gate[" in second.log_path.read_text(errors="replace")
    result = get_run(run_id)
    assert result.status is RunStatus.CANCELLED
    assert result.error_type == "Cancelled"
    assert result.finished_at == cancelled.finished_at
    assert statuses(result) == {"gate": "succeeded", "after_gate": "cancelled",
                                "last_step": "cancelled"}
    assert result.steps["gate"].output == ticket
    assert calls(run_id, "after_gate") == 0
    assert calls(run_id, "last_step") == 0
    for name in ("after_gate", "last_step"):
        assert result.steps[name].deliveries == 0, name
        assert result.steps[name].attempts == 0, name

    # A cancelled run can be resumed: only the cancelled steps run, the gate does not.
    assert orchestration.resume(run_id).run_id == run_id
    resumed = handle.wait(timeout=30)
    assert resumed.status is RunStatus.SUCCEEDED, (resumed.error, statuses(resumed))
    assert resumed.outputs["last_step"] == f"last:after:{ticket}"
    assert (calls(run_id, "gate"), calls(run_id, "after_gate"),
            calls(run_id, "last_step")) == (1, 1, 1)


# -- 5 and 6: a worker of our own, with ORCH_MAX_CRASHES=2 ---------------------------------------


@dataclass
class OwnWorker:
    """The worker serving OWN_QUEUE, started with ORCH_MAX_CRASHES=2."""

    pool: Workers
    worker: Worker


@pytest.fixture(scope="module")
def own_worker(workers: Workers, worker_logs: Path) -> Iterator[OwnWorker]:
    pool = Workers(worker_logs, env=child_env(ORCH_MAX_CRASHES=str(MAX_CRASHES)))
    try:
        worker = pool.start("it-dur-own", [dw.OWN_QUEUE], pool="prefork", concurrency=1)
        yield OwnWorker(pool, worker)
    finally:
        pool.stop_all()


def _assert_serves(own: OwnWorker, text: str) -> None:
    assert own.worker.alive, own.worker.log_tail()
    result = dw.healthy.submit(text=text).wait(timeout=30)
    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.outputs == {"ping": f"pong:{text}"}
    assert result.steps["ping"].worker == own.worker.nodename


_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}):")


def _crash_timeline(worker: Worker, task_name: str) -> tuple[list[float], list[float]]:
    """(times pool processes died, times ``task_name`` was received) from the worker log."""
    deaths: list[float] = []
    received: list[float] = []
    for line in worker.log_path.read_text(errors="replace").splitlines():
        stamp = _LOG_TIME.match(line)
        if stamp is None:
            continue
        at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if "exited with 'signal 9 (SIGKILL)'" in line:
            deaths.append(at)
        elif f"Task {task_name}[" in line and line.endswith("received"):
            received.append(at)
    return deaths, received


def test_poison_step_is_failed_after_bounded_deliveries(own_worker: OwnWorker) -> None:
    # A dead pool process's message is re-queued at once (task_reject_on_worker_lost +
    # acks_late), not after the Redis visibility timeout (ORCH_VISIBILITY_TIMEOUT=3600 s):
    # otherwise the run could not end within this wait.
    result = dw.poison.submit().wait(timeout=60)

    assert result.status is RunStatus.FAILED, statuses(result)
    step = result.steps["swallow_pill"]
    assert step.status is StepStatus.FAILED
    assert step.error_type == "PoisonStep"
    assert step.error is not None and f"died {MAX_CRASHES} times" in step.error
    # Deliveries 1 and 2 ran the step and lost their pool process; delivery 3 refused it.
    assert calls(result.run_id, "swallow_pill") == MAX_CRASHES
    assert step.crashes == MAX_CRASHES
    assert step.deliveries == MAX_CRASHES + 1
    assert step.attempts == 0  # no killed attempt ever got recorded
    assert result.error_type == "StepFailed"
    assert result.error is not None and "swallow_pill" in result.error
    # Each delivery after the first came after a pool process died, one per death.
    deaths, deliveries = _crash_timeline(own_worker.worker, "it_dur_poison.swallow_pill")
    assert len(deaths) == MAX_CRASHES, own_worker.worker.log_tail()
    assert len(deliveries) == MAX_CRASHES + 1, own_worker.worker.log_tail()
    assert all(received <= death <= again for received, death, again
               in zip(deliveries, deaths, deliveries[1:], strict=False)), (deliveries, deaths)
    # The worker itself survived and serves other runs.
    _assert_serves(own_worker, "after-poison")


def test_malformed_step_message_is_rejected_and_the_worker_stays_up(
    own_worker: OwnWorker, redis_service: redis.Redis,
) -> None:
    celery = default_orchestrator().celery
    bad = celery.send_task("it_dur_healthy.ping", args=["not an envelope"],
                           queue=dw.OWN_QUEUE)
    worker = own_worker.worker

    def rejected() -> bool:
        return any("malformed step message rejected" in line and bad.id in line
                   for line in worker.log_path.read_text(errors="replace").splitlines())

    wait_until(rejected, timeout=20, what="the worker to reject the malformed message")
    _assert_serves(own_worker, "after-malformed")
    # Rejected for good: not re-queued, not delivered again.
    assert waiting_messages(redis_service, dw.OWN_QUEUE) == 0
    log = worker.log_path.read_text(errors="replace")
    assert sum(bad.id in line and "malformed step message rejected" in line
               for line in log.splitlines()) == 1


# -- 6. bad input stays outside ------------------------------------------------------------------


def test_input_over_the_size_limit_is_refused_and_writes_nothing(workers: Workers) -> None:
    limit = default_orchestrator().settings.max_input_bytes
    before = _run_count("it_dur_sink")

    with pytest.raises(InvalidInput, match=rf"'payload' is {limit + 3} bytes of JSON, over the "
                                           rf"limit of {limit} \(ORCH_MAX_INPUT_BYTES\)"):
        dw.sink.submit(payload="x" * (limit + 1))  # +2 bytes of JSON quotes
    assert _run_count("it_dur_sink") == before

    # Exactly at the limit is accepted.
    result = dw.sink.submit(payload="x" * (limit - 2)).wait(timeout=30)
    assert result.status is RunStatus.SUCCEEDED, (result.error, statuses(result))
    assert result.outputs == {"measure_payload": limit - 2}
    assert _run_count("it_dur_sink") == before + 1

    # The limit is a setting: a CLI with ORCH_MAX_INPUT_BYTES=64 refuses 100 bytes.
    cli = orchestrate("submit", "it_dur_sink", "--inputs", json.dumps({"payload": "y" * 100}),
                      env=child_env(ORCH_MAX_INPUT_BYTES="64"))
    assert cli.returncode != 0
    assert "over the limit of 64 (ORCH_MAX_INPUT_BYTES)" in cli.stderr, cli.stderr[-2000:]
    assert cli.stdout.strip() == ""
    assert _run_count("it_dur_sink") == before + 1


def test_submit_of_an_unknown_workflow_names_the_known_ones(workers: Workers) -> None:
    cli = orchestrate("submit", "no_such_workflow")

    assert cli.returncode != 0
    match = re.search(r"unknown workflow 'no_such_workflow' \(known: ([^)]*)\)", cli.stderr)
    assert match is not None, cli.stderr[-2000:]
    known = set(match.group(1).split(", "))
    assert {"it_dur_resume", "it_dur_cache", "it_routing", "it_once"} <= known
    assert "no_such_workflow" not in known
    assert cli.stdout.strip() == ""
