"""The submission contract: a submit that raises SubmitFailed created nothing (or says so).

The broker here is a Redis URL on a port nothing listens on, with retry policies cut
short so that each refused publish fails in well under a second. When the broker "comes
back" the orchestrator is pointed at the in-process one, which runs the retried submit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestration import RunStatus, SubmitFailed, Workflow
from orchestration.app import Orchestrator
from orchestration.store.discard import discard_unstarted
from orchestration.store.repository import PlannedStep
from orchestration.testing import embedded_settings
from tests.support.processes import free_port

FAST_FAILURE = {"max_retries": 1, "interval_start": 0, "interval_step": 0.01,
                "interval_max": 0.01}


def rows(database: Path, table: str) -> int:
    with sqlite3.connect(database) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


class Flows:
    """A chain (published to the broker) and a diamond (a chord: the result backend too)."""

    def __init__(self, app: Orchestrator) -> None:
        self.executed: list[str] = []
        self.chain = Workflow("contract_chain", app=app)
        self.diamond = Workflow("contract_diamond", app=app)
        executed = self.executed

        @self.chain.task
        def first(text: str) -> str:
            executed.append(f"first:{text}")
            return text

        @self.chain.task
        def second(first: str) -> str:
            return first.upper()

        @self.diamond.task
        def top(text: str) -> str:
            executed.append(f"top:{text}")
            return text

        @self.diamond.task
        def left(top: str) -> str:
            return top

        @self.diamond.task
        def right(top: str) -> str:
            return top

        @self.diamond.task
        def join(left: str, right: str) -> str:
            return left + right


@pytest.fixture
def refused(tmp_path: Path) -> Iterator[tuple[Orchestrator, Flows, Path]]:
    """An orchestrator whose broker (and result backend) refuses every connection."""
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = Orchestrator(embedded_settings(tmp_path, broker_url=url))
    app.celery.conf.update(
        task_publish_retry_policy=FAST_FAILURE,
        broker_transport_options={"socket_connect_timeout": 0.5, "max_retries": 1},
        result_backend_transport_options={"retry_policy": FAST_FAILURE},
        redis_socket_connect_timeout=0.5,
    )
    flows = Flows(app)
    yield app, flows, tmp_path / "orchestration.db"
    app.shutdown()


def broker_back(app: Orchestrator, directory: Path) -> None:
    """The broker answers again (here: the in-process one, same results DB)."""
    app.reconfigure(embedded_settings(directory))


@pytest.mark.parametrize("shape", ["chain", "diamond"])
def test_a_refused_submit_creates_nothing_and_a_retry_runs_once(
        refused: tuple[Orchestrator, Flows, Path], shape: str) -> None:
    app, flows, database = refused
    wf = flows.chain if shape == "chain" else flows.diamond

    for _ in range(2):  # the client retries on the error, still refused
        with pytest.raises(SubmitFailed) as info:
            wf.submit(text="once")
        assert "nothing was created" in str(info.value)
        assert "retry" in str(info.value) or "again" in str(info.value)
        assert info.value.remaining == ()
        assert rows(database, "runs") == 0
        assert rows(database, "steps") == 0

    broker_back(app, database.parent)
    result = wf.run(text="once", timeout=30)  # the retry that gets through

    assert result.status is RunStatus.SUCCEEDED
    assert app.reconcile(idle_seconds=0).redispatched == []
    assert [run.run_id for run in app.store.list_runs()] == [result.run_id]
    assert len(flows.executed) == 1


def test_an_idempotency_key_is_free_again_after_a_refused_submit(
        refused: tuple[Orchestrator, Flows, Path]) -> None:
    app, flows, database = refused
    with pytest.raises(SubmitFailed):
        flows.chain.submit(text="keyed", idempotency_key="order-42")

    broker_back(app, database.parent)
    handle = flows.chain.submit(text="keyed", idempotency_key="order-42")
    again = flows.chain.submit(text="keyed", idempotency_key="order-42")

    assert not handle.existing and again.existing and again.run_id == handle.run_id
    assert handle.wait(timeout=30).status is RunStatus.SUCCEEDED
    assert rows(database, "runs") == 1


@pytest.mark.parametrize("defer", [False, True])
def test_a_refused_batch_creates_nothing(refused: tuple[Orchestrator, Flows, Path],
                                         defer: bool) -> None:
    app, flows, database = refused
    with pytest.raises(SubmitFailed) as info:
        flows.diamond.submit_many([{"text": str(n)} for n in range(5)], defer=defer)

    assert "5 run(s)" in str(info.value) and "nothing was created" in str(info.value)
    assert rows(database, "runs") == 0 and rows(database, "steps") == 0
    broker_back(app, database.parent)
    assert app.reconcile(idle_seconds=0).redispatched == []
    assert flows.executed == []


def test_runs_that_cannot_be_removed_are_named_with_what_becomes_of_them(
        refused: tuple[Orchestrator, Flows, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    app, flows, database = refused

    def database_gone(*_: Any) -> list[str]:
        raise ConnectionError("results database unreachable")

    monkeypatch.setattr("orchestration.submit.submission.discard_unstarted", database_gone)
    with pytest.raises(SubmitFailed) as info:
        flows.chain.submit(text="stuck", idempotency_key="order-7")

    (run_id,) = info.value.remaining
    message = str(info.value)
    assert run_id in message and "exist" in message and "reconciler starts them" in message
    assert "idempotency_key" in message
    # As the error said: the run exists, and the reconciler runs it (once) later.
    broker_back(app, database.parent)
    assert flows.chain.submit(text="stuck", idempotency_key="order-7").run_id == run_id
    assert app.reconcile(idle_seconds=0).redispatched == [run_id]
    assert app.store.get_run(run_id).status is not RunStatus.FAILED


def test_a_run_a_worker_already_started_is_cancelled_and_named(
        refused: tuple[Orchestrator, Flows, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    app, flows, database = refused
    monkeypatch.setattr("orchestration.submit.submission.discard_unstarted",
                        lambda engine, run_ids: list(run_ids))
    with pytest.raises(SubmitFailed) as info:
        flows.chain.submit(text="half")

    (run_id,) = info.value.remaining
    assert "cancelled" in str(info.value) and run_id in str(info.value)
    assert app.store.get_run(run_id).status is RunStatus.CANCELLED
    broker_back(app, database.parent)
    assert app.reconcile(idle_seconds=0).redispatched == []


def test_discard_removes_only_runs_no_worker_started(tmp_path: Path) -> None:
    app = Orchestrator(embedded_settings(tmp_path))
    try:
        store = app.store
        planned = [PlannedStep("a", "a", "default", None, True),
                   PlannedStep("b", "b", "default", None, True)]
        for run_id in ("fresh", "started"):
            store.create_run(run_id, "wf", "v1", {}, planned)
        store.claim_step("started", "a", worker="w", task_id="t")

        kept = discard_unstarted(store.engine, ["fresh", "started", "unknown"])

        assert kept == ["started", "unknown"]
        assert [run.run_id for run in store.list_runs()] == ["started"]
        assert rows(tmp_path / "orchestration.db", "steps") == 2
    finally:
        app.shutdown()
