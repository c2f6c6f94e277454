"""Parallel branches without a chord (forks) on real workers, killed mid-branch and mid-join.

A top-level group whose branches are one message each is a fork (compile/canvas.py):
the message before it sends the other branches and runs one in its own delivery, and the
branch completing the join runs the step after the group in its delivery
(worker/forks.py). These tests pin down that this is exact, as a chord is:

- a diamond a -> (b, c) -> d on one queue calls each step once with one message per
  branch less and no message for d (the messages published are counted in Redis);
- a worker SIGKILLed while the branch running in a's delivery hangs: after another
  worker starts, that branch runs again once (a crash counted), nothing else does;
- a worker SIGKILLed while d, run in the delivery that completed the join, hangs: d
  runs again once, the branches do not.

In the kill tests both ways back happen: the next worker's heartbeat sweep re-dispatches
the run (a fresh canvas: a fork and join of its own), and the killed delivery comes back
from the broker too (a visibility timeout of seconds, restored when the next worker
starts): its fork is sent again, its arrival finds its join complete and continues. The
counts hold with both racing, and nothing is left waiting or unacknowledged.

Also: a run that starts with its group joins; a branch that fails fails the run and
skips the join's step.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import time
from typing import Any

import pytest

from orchestration import RunStatus, StepStatus, get_run
from orchestration.compile.canvas import FORK, JOIN
from orchestration.compile.packing import BUNDLE, BUNDLE_TASK
from orchestration.core.results import RunResult
from tests.integration.support.helpers import wait_until
from tests.integration.support.workflows.common import _redis, calls
from tests.integration.support.workflows.forks import (
    FORK_OTHER_QUEUE,
    FORK_QUEUE,
    diamond,
    failing,
    roots,
    sent,
    split,
)
from tests.integration.test_liveness import _env, _started, _terminal
from tests.support.workers import Worker, Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

POOLS = ["threads", "prefork"]
QUEUES = [FORK_QUEUE, FORK_OTHER_QUEUE]
VISIBILITY_S = 5


def _kill(worker: Worker, run_id: str) -> list[str]:
    """SIGKILL the worker's main process (its delivery is not acked), then any orphan;
    the task ids of the run's deliveries it held, which the next worker restores."""
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
    with contextlib.suppress(ProcessLookupError):  # an orphaned prefork child
        os.killpg(worker.process.pid, signal.SIGKILL)
    killed = _unacked(run_id)
    assert killed, "the killed delivery is not among the broker's unacked ones"
    time.sleep(VISIBILITY_S + 1)  # past the visibility timeout when the next one starts
    return killed


def _back_and_acked(run_id: str, killed: list[str], worker: Worker) -> None:
    """The killed deliveries came back to ``worker``, ran, and were acked; nothing waits."""
    try:
        wait_until(lambda: not _unacked(run_id) and _drained(), timeout=60,
                   what="the killed delivery to come back and be acked")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: unacked {_unacked(run_id)}, waiting "
                             f"{_waiting()} (this run: {run_id})") from None
    log = worker.log_path.read_text()
    assert all(f"[{task_id}] received" in log for task_id in killed), killed


def _succeeded(run: RunResult, worker: Worker | None = None) -> None:
    tail = worker.log_tail() if worker is not None else ""
    assert run.status is RunStatus.SUCCEEDED, (run.error, tail)


def _status(run_id: str, step: str) -> StepStatus:
    return get_run(run_id).steps[step].status


def _unacked(run_id: str) -> list[str]:
    """The task ids of ``run_id``'s unacknowledged deliveries (kombu's Redis ``unacked``
    hash: ``[message, exchange, routing key]`` per delivery tag)."""
    rows = (_message(json.loads(row)[0]) for row in _redis().hgetall("unacked").values())
    return [task_id for task_id, _, run in rows if run == run_id]


def _message(message: dict[str, Any]) -> tuple[str, str, str]:
    """A broker message's task id, task name and run."""
    headers = message["headers"]
    args_kwargs_embed = json.loads(base64.b64decode(message["body"]))
    return headers["id"], headers["task"], args_kwargs_embed[1].get("run_id", "")


def _waiting() -> list[tuple[str, str, str]]:
    """(queue list, task, run) of every message waiting on a fork queue (any version)."""
    client = _redis()
    names = sorted(key.decode() for key in client.scan_iter(match="it.fork*"))
    return [(name, *_message(json.loads(raw))[1:]) for name in names
            if client.type(name) == b"list" for raw in client.lrange(name, 0, -1)]


def _drained() -> bool:
    return not _waiting()


def test_a_diamond_compiles_to_a_fork_on_the_first_message() -> None:
    canvas = diamond.canvas("r-canvas", {"n": 1, "hang": ""})
    fork = canvas["kwargs"][FORK]
    assert canvas["task"] == "it_fork_diamond.a"
    assert [branch["task"] for branch in fork["branches"]] == [
        "it_fork_diamond.b", "it_fork_diamond.c"]
    assert fork["body"]["task"] == "it_fork_diamond.d"
    started = roots.canvas("r-roots", {"n": 1})  # a run that starts with its group:
    assert started["task"] == BUNDLE_TASK  # its branches, on one queue, in one message
    assert [item[0] for item in started["kwargs"][BUNDLE]] == [
        "it_fork_roots.left", "it_fork_roots.right"]
    joins = [kwargs[JOIN] for _, _, kwargs in started["kwargs"][BUNDLE]]
    assert [(j["index"], j["size"]) for j in joins] == [(0, 2), (1, 2)]
    assert len({j["id"] for j in joins}) == 1
    assert joins[0]["body"]["task"] == "it_fork_roots.both"


@pytest.mark.parametrize("pool", POOLS)
def test_a_diamond_sends_one_branch_message_and_joins_inline(
        pool: str, extra_workers: Workers, published: list[tuple[str, Any]]) -> None:
    worker = extra_workers.start(f"fork-diamond-{pool}", [FORK_QUEUE], pool=pool,
                                 concurrency=2)
    run_id = diamond.submit(n=3, hang="").run_id
    run = _terminal(None, run_id, timeout=60)
    _succeeded(run, worker)
    assert run.outputs["d"] == 30 + 300 + 1
    assert {step: calls(run_id, step) for step in "abcd"} == dict.fromkeys("abcd", 1)
    # This process sent a's message only, carrying the fork.
    mine = [body for name, body in published if name.startswith("it_fork_diamond.")]
    assert [name for name, _ in published if name.startswith("it_fork_")] == [
        "it_fork_diamond.a"]
    assert FORK in mine[0][1]
    # Every process: a, then one branch; the other ran in a's delivery, d in a join's.
    messages = sent(run_id)
    assert messages[0] == "a" and len(messages) == 2, messages
    assert messages[1] in {"b", "c"}, messages
    assert "d" not in messages


@pytest.mark.parametrize("pool", POOLS)
def test_the_inline_branch_killed_mid_step_runs_again_once(
        pool: str, extra_workers: Workers) -> None:
    extra_workers.env = _env(ORCH_VISIBILITY_TIMEOUT=str(VISIBILITY_S))
    first = extra_workers.start(f"fork-branch-a-{pool}", QUEUES, pool=pool, concurrency=2)
    run_id = split.submit(n=2, hang="b").run_id
    wait_until(lambda: _started(run_id, "b"), timeout=30, what="b to start")
    wait_until(lambda: calls(run_id, "c") == 1 and _status(run_id, "c").is_terminal,
               timeout=30, what="c to end")
    assert sent(run_id) == ["a", "c"]  # b runs in a's delivery (a's queue, first branch)
    killed = _kill(first, run_id)  # a's delivery, running b
    second = extra_workers.start(f"fork-branch-b-{pool}", QUEUES, pool=pool, concurrency=2)
    _succeeded(_terminal(None, run_id, timeout=90), second)
    _back_and_acked(run_id, killed, second)
    run = get_run(run_id)
    _succeeded(run, second)
    assert run.outputs["d"] == 20 + 200 + 1
    assert run.steps["b"].crashes == 1
    assert {step: calls(run_id, step) for step in "abcd"} == {"a": 1, "b": 2, "c": 1, "d": 1}
    assert [run.steps[step].crashes for step in "acd"] == [0, 0, 0]


@pytest.mark.parametrize("pool", POOLS)
def test_the_join_step_killed_mid_step_runs_again_once(
        pool: str, extra_workers: Workers) -> None:
    """The killed delivery (a's or c's: the one whose arrival completed the join) comes
    back: its arrival finds the join complete and continues with d, which runs once more
    in all (the heartbeat sweep's re-dispatch races it with a join of its own)."""
    extra_workers.env = _env(ORCH_VISIBILITY_TIMEOUT=str(VISIBILITY_S))
    first = extra_workers.start(f"fork-join-a-{pool}", [FORK_QUEUE], pool=pool,
                                concurrency=2)
    run_id = diamond.submit(n=4, hang="d").run_id
    wait_until(lambda: _started(run_id, "d"), timeout=30, what="d to start")
    assert "d" not in sent(run_id)  # d runs in the delivery of the completing branch
    killed = _kill(first, run_id)
    second = extra_workers.start(f"fork-join-b-{pool}", [FORK_QUEUE], pool=pool,
                                 concurrency=2)
    _succeeded(_terminal(None, run_id, timeout=90), second)
    _back_and_acked(run_id, killed, second)
    run = get_run(run_id)
    _succeeded(run, second)
    assert run.outputs["d"] == 40 + 400 + 1
    assert run.steps["d"].crashes == 1
    assert {step: calls(run_id, step) for step in "abcd"} == {"a": 1, "b": 1, "c": 1, "d": 2}


@pytest.mark.parametrize("pool", POOLS)
def test_a_run_that_starts_with_its_group_joins(pool: str, extra_workers: Workers) -> None:
    worker = extra_workers.start(f"fork-roots-{pool}", [FORK_QUEUE], pool=pool,
                                 concurrency=2)
    run_id = roots.submit(n=3).run_id
    run = _terminal(None, run_id, timeout=60)
    _succeeded(run, worker)
    assert run.outputs["both"] == 4 * 5
    assert {step: calls(run_id, step) for step in ("left", "right", "both")} == {
        "left": 1, "right": 1, "both": 1}
    assert sent(run_id) == ["bundle(left,right)"]  # the join ran "both" inline


@pytest.mark.parametrize("pool", POOLS)
def test_a_failing_branch_fails_the_run_and_skips_the_join(
        pool: str, extra_workers: Workers) -> None:
    worker = extra_workers.start(f"fork-fail-{pool}", [FORK_QUEUE], pool=pool,
                                 concurrency=2)
    run_id = failing.submit(n=5, hang="").run_id
    run = _terminal(None, run_id, timeout=60)
    assert run.status is RunStatus.FAILED, worker.log_tail()
    assert run.steps["c"].status is StepStatus.FAILED
    assert run.steps["b"].status is StepStatus.SUCCEEDED
    assert run.steps["d"].status is StepStatus.SKIPPED
    assert {step: calls(run_id, step) for step in "abcd"} == {"a": 1, "b": 1, "c": 1, "d": 0}
    try:
        wait_until(_drained, timeout=30, what="the fork's queues to drain")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {_waiting()} (this run: {run_id})") from None
    # Nothing stuck: the same worker still runs a diamond to the end.
    after = diamond.submit(n=1, hang="").run_id
    _succeeded(_terminal(None, after, timeout=60), worker)
