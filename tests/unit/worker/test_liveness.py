"""Crash counting, heartbeats and the sweep, cancelled claims, records held through outages.

Deterministic: clocks are passed in, the DB is a SQLite file, a DB outage is a store
whose writes raise ``OperationalError`` a given number of times.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy.exc import OperationalError

from orchestration import RunStatus, StepStatus
from orchestration.app import Orchestrator
from orchestration.core.clock import utcnow
from orchestration.core.envelope import Envelope
from orchestration.define.workflow import Workflow
from orchestration.errors import ResultsDatabaseUnavailable
from orchestration.execute.attempts import Delivery
from orchestration.execute.runtime import run_step
from orchestration.store.repository import PlannedStep, Store
from orchestration.store.workers import Released, WorkerInfo
from orchestration.worker.heartbeat import Heartbeat

STEPS = [PlannedStep("a", "a", "q.a", None, True), PlannedStep("b", "b", "q.b", None, True)]
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.ensure_schema()
    yield store
    store.dispose()


def new_run(store: Store, workflow: str = "wf") -> str:
    return store.create_run(str(uuid.uuid4()), workflow, "v1", {"x": 1}, STEPS)


def worker(instance: str, *queues: str) -> WorkerInfo:
    return WorkerInfo(instance, f"{instance}@host", "host", 1, list(queues))


def down() -> OperationalError:
    return OperationalError("INSERT ...", {}, Exception("connection refused"))


# -- crash counting ----------------------------------------------------------------------


def test_same_message_claimed_again_while_running_is_a_crash(store: Store) -> None:
    run_id = new_run(store)
    store.claim_step(run_id, "a", worker="w", task_id="t1")
    assert store.claim_step(run_id, "a", worker="w", task_id="t1").crashes == 1


def test_a_delivery_handed_back_during_an_outage_is_no_crash(store: Store) -> None:
    run_id = new_run(store)
    first = store.claim_step(run_id, "a", worker="w", task_id="t1")
    again = store.claim_step(run_id, "a", worker="w", task_id="t1", released=first.delivery)
    assert (first.delivery, again.delivery, again.crashes) == (1, 2, 0)
    # The released delivery is named exactly: a crash of the next one still counts.
    assert store.claim_step(run_id, "a", worker="w", task_id="t1",
                            released=first.delivery).crashes == 1


def test_a_cancelled_runs_running_step_is_not_claimed_again(store: Store) -> None:
    run_id = new_run(store)
    store.claim_step(run_id, "a", worker="w", task_id="t1")
    store.cancel_run(run_id)
    claim = store.claim_step(run_id, "a", worker="w", task_id="t1")
    assert (claim.proceed, claim.status, claim.run_status) == (
        False, StepStatus.CANCELLED, RunStatus.CANCELLED)
    assert store.get_run(run_id).steps["a"].status is StepStatus.CANCELLED


# -- heartbeats and the sweep ------------------------------------------------------------


def test_steps_of_a_dead_holder_are_released_once(store: Store) -> None:
    dead, live = new_run(store), new_run(store)
    store.workers.beat(worker("w-dead"), T0)
    store.workers.beat(worker("w-live"), T0)
    store.claim_step(dead, "a", worker="w", task_id="t1", holder="w-dead")
    store.claim_step(live, "a", worker="w", task_id="t2", holder="w-live")
    later = datetime.now(UTC) + timedelta(seconds=30)
    store.workers.beat(worker("w-live"), later)
    released = store.workers.release_dead(later - timedelta(seconds=10), ["wf"], later)
    assert [(r.run_id, r.steps, r.workflow) for r in released] == [(dead, ["a"], "wf")]
    assert store.get_run(dead).steps["a"].crashes == 1
    assert store.get_run(live).steps["a"].crashes == 0
    assert store.workers.release_dead(later - timedelta(seconds=10), ["wf"], later) == []


def test_the_sweep_leaves_other_workflows_and_just_claimed_steps(store: Store) -> None:
    other = new_run(store, workflow="other")
    store.claim_step(other, "a", worker="w", task_id="t1", holder="never-beat")
    now = datetime.now(UTC)
    assert store.workers.release_dead(now + timedelta(seconds=5), ["wf"], now) == []
    fresh = new_run(store)
    store.claim_step(fresh, "a", worker="w", task_id="t2", holder="never-beat")
    # Claimed after the window began: its holder may simply not have beat yet.
    assert store.workers.release_dead(now - timedelta(seconds=5), ["wf"], now) == []
    released = store.workers.release_dead(now + timedelta(seconds=5), ["wf", "other"], now)
    assert sorted(r.run_id for r in released) == sorted([other, fresh])


def test_release_run_refuses_while_a_live_worker_holds_a_step(store: Store) -> None:
    run_id = new_run(store)
    store.workers.beat(worker("w1"), T0 + timedelta(seconds=100))
    store.claim_step(run_id, "a", worker="w", task_id="t1", holder="w1")
    assert not store.workers.release_run(run_id, T0 + timedelta(seconds=90))
    assert store.get_run(run_id).steps["a"].crashes == 0
    assert store.workers.release_run(run_id, T0 + timedelta(seconds=110))
    assert store.get_run(run_id).steps["a"].crashes == 1


def test_live_queues_are_those_of_workers_that_beat_recently(store: Store) -> None:
    store.workers.beat(worker("old", "q.old"), T0)
    store.workers.beat(worker("new", "q.a", "q.b"), T0 + timedelta(seconds=60))
    store.workers.beat(worker("gone", "q.gone"), T0 + timedelta(seconds=60))
    store.workers.stopped("gone", T0 + timedelta(seconds=61))
    assert store.workers.live_queues(T0 + timedelta(seconds=30)) == {"q.a", "q.b"}


class _DownStore:
    """A store whose every call raises OperationalError, like a stopped server."""

    @property
    def workers(self) -> Any:
        raise down()


def test_heartbeat_reports_an_outage_and_the_recovery(store: Store) -> None:
    state: dict[str, Any] = {"store": _DownStore()}
    redispatched: list[Released] = []
    beat = Heartbeat(lambda: state["store"], worker("me"), interval=1, dead_after=4,
                     workflows=lambda: ["wf"], redispatch=redispatched.append)
    with structlog.testing.capture_logs() as logs:
        assert beat.tick() == []  # never raises
        state["store"] = store
        beat.tick()
    events = [entry["event"] for entry in logs]
    assert events[0].startswith("results database unreachable")
    assert events[-1] == "results database reachable again"


def test_heartbeat_redispatches_what_it_released(store: Store) -> None:
    run_id = new_run(store)
    store.claim_step(run_id, "a", worker="w", task_id="t1", holder="dead")
    redispatched: list[Released] = []
    beat = Heartbeat(lambda: store, worker("me"), interval=1, dead_after=0.001,
                     workflows=lambda: ["wf"], redispatch=redispatched.append)
    wait = datetime.now(UTC) + timedelta(milliseconds=50)
    while datetime.now(UTC) < wait:  # the claim must be older than the window
        pass
    beat.tick()
    assert [r.run_id for r in redispatched] == [run_id]


# -- a finished step held through an outage ----------------------------------------------


class _FlakyStore:
    """Delegates to a real store; ``record_step`` fails ``failures`` times first."""

    def __init__(self, store: Store, failures: int) -> None:
        self._store, self.failures, self.records = store, failures, 0

    def record_step(self, *args: Any, **kwargs: Any) -> bool:
        self.records += 1
        if self.failures:
            self.failures -= 1
            raise down()
        return self._store.record_step(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _hold_run(orchestrator: Orchestrator) -> tuple[Any, str, dict[str, Any]]:
    workflow = Workflow("wf_hold", app=orchestrator)

    @workflow.task
    def a(x: int) -> int:
        return x

    compiled = workflow.validate()
    run_id = orchestrator.store.create_run(str(uuid.uuid4()), workflow.name, compiled.version,
                                           {"x": 1}, [PlannedStep("a", "a", "default", None,
                                                                  True)])
    return compiled.steps["a"], run_id, Envelope.for_inputs(run_id, {"x": 1}, 1000).to_message()


def test_a_finished_step_is_recorded_once_the_db_answers(orchestrator: Orchestrator) -> None:
    bound, run_id, message = _hold_run(orchestrator)
    flaky = _FlakyStore(orchestrator.store, failures=2)
    delivery = Delivery(worker="w", task_id="t1", inline_limit=1000, inline_retry_limit=1,
                        db_hold=30)
    run_step(bound, message, flaky, delivery, finalize=True)  # type: ignore[arg-type]
    run = orchestrator.store.get_run(run_id)
    assert flaky.records == 3
    assert (run.status, run.steps["a"].status, run.steps["a"].attempts) == (
        RunStatus.SUCCEEDED, StepStatus.SUCCEEDED, 1)


def test_past_the_hold_the_step_is_handed_back_naming_its_delivery(
        orchestrator: Orchestrator) -> None:
    bound, run_id, message = _hold_run(orchestrator)
    flaky = _FlakyStore(orchestrator.store, failures=1)
    delivery = Delivery(worker="w", task_id="t1", inline_limit=1000, inline_retry_limit=1)
    with pytest.raises(ResultsDatabaseUnavailable) as raised:
        run_step(bound, message, flaky, delivery)  # type: ignore[arg-type]
    assert (raised.value.step, raised.value.released) == ("a", 1)
    # The next delivery of the same message names it: no crash, and the step runs.
    again = orchestrator.store.claim_step(run_id, "a", worker="w", task_id="t1",
                                          released=raised.value.released)
    assert (again.proceed, again.crashes) == (True, 0)


def test_a_dead_after_window_shorter_than_two_beats_is_refused() -> None:
    from pydantic import ValidationError

    from orchestration.core.settings import Settings

    with pytest.raises(ValidationError, match="ORCH_WORKER_DEAD_AFTER"):
        Settings(heartbeat_interval=5, worker_dead_after=6)


def test_orchestrate_workers_tells_alive_stopped_and_dead(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from orchestration.cli import main
    from orchestration.define import host as host_module
    now = utcnow()
    store.workers.beat(worker("alive-one", "q.a"), now)
    store.workers.beat(worker("dead-one", "q.b"), now - timedelta(minutes=5))
    store.workers.beat(worker("stopped-one", "q.c"), now)
    store.workers.stopped("stopped-one", now)
    monkeypatch.setenv("ORCH_DATABASE_URL", store.url)
    monkeypatch.setenv("ORCH_IMPORTS", "")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("ORCH_BROKER_URL", raising=False)
    monkeypatch.setattr(host_module, "_default", None)
    try:
        result = CliRunner().invoke(main, ["workers"])
    finally:
        built = host_module._default
        if built is not None:
            built.shutdown()
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines()
             if "-one@host" in line}
    assert "alive" in lines["alive-one@host"] and "q.a" in lines["alive-one@host"]
    assert "dead" in lines["dead-one@host"]
    assert "stopped" in lines["stopped-one@host"]


class _InputsDownStore(_FlakyStore):
    """Reading a by-reference input fails as if the results DB were down."""

    def load_inputs(self, run_id: str) -> Any:
        raise down()


def test_an_outage_while_reading_inputs_hands_the_step_back(orchestrator: Orchestrator) -> None:
    bound, run_id, _ = _hold_run(orchestrator)
    by_reference = Envelope.for_inputs(run_id, {"x": "text"}, 0).to_message()  # x is a ref
    store = _InputsDownStore(orchestrator.store, failures=0)
    delivery = Delivery(worker="w", task_id="t1", inline_limit=0, inline_retry_limit=1)
    with pytest.raises(ResultsDatabaseUnavailable):
        run_step(bound, by_reference, store, delivery)  # type: ignore[arg-type]
    assert orchestrator.store.get_run(run_id).steps["a"].status is StepStatus.RUNNING


def test_each_beat_records_the_queues_consumed_now(store: Store) -> None:
    consumed = ["q.a"]
    beat = Heartbeat(lambda: store, worker("growing"), interval=1, dead_after=4,
                     workflows=lambda: [], redispatch=lambda run: None,
                     queues=lambda: consumed)
    beat.tick()
    consumed.append("q.b")
    beat.tick()
    assert store.workers.live_queues(T0) == {"q.a", "q.b"}


# -- one step, two messages: a re-dispatch racing the broker's re-delivery ----------------


def test_a_step_a_live_worker_holds_is_not_claimed_by_another_message(store: Store) -> None:
    run_id = new_run(store)
    now = datetime.now(UTC)
    store.workers.beat(worker("live"), now)
    store.claim_step(run_id, "a", worker="w", task_id="t-redispatch", holder="live")
    window = now - timedelta(seconds=20)
    other = store.claim_step(run_id, "a", worker="w", task_id="t-original", holder="x",
                             alive_since=window)
    assert (other.proceed, other.held_elsewhere, other.status) == (
        False, True, StepStatus.RUNNING)
    # The same message again (a pool process died under it) is still claimed: a crash.
    same = store.claim_step(run_id, "a", worker="w", task_id="t-redispatch", holder="live",
                            alive_since=window)
    assert (same.proceed, same.crashes) == (True, 1)
    # Once the holder stopped beating, another message may take the step over.
    later = store.claim_step(run_id, "a", worker="w", task_id="t-original", holder="x",
                             alive_since=now + timedelta(seconds=1))
    assert later.proceed and not later.held_elsewhere


def test_the_dead_workers_own_message_is_no_second_crash_after_the_sweep(store: Store) -> None:
    run_id = new_run(store)
    store.claim_step(run_id, "a", worker="w", task_id="t1", holder="dead")
    now = datetime.now(UTC) + timedelta(seconds=30)
    assert store.workers.release_dead(now - timedelta(seconds=10), ["wf"], now)
    redelivered = store.claim_step(run_id, "a", worker="w", task_id="t1", holder="new")
    assert (redelivered.proceed, redelivered.crashes) == (True, 1)


def test_run_step_stops_a_delivery_of_a_step_held_elsewhere(orchestrator: Orchestrator) -> None:
    from orchestration.errors import HeldElsewhere

    bound, run_id, message = _hold_run(orchestrator)
    store = orchestrator.store
    store.workers.beat(worker("live"), datetime.now(UTC))
    store.claim_step(run_id, "a", worker="w", task_id="t-first", holder="live")
    delivery = Delivery(worker="w", task_id="t-second", inline_limit=1000,
                        inline_retry_limit=1, holder="other", dead_after=20)
    with pytest.raises(HeldElsewhere):
        run_step(bound, message, store, delivery)
    assert store.get_run(run_id).steps["a"].attempts == 0


def test_after_an_outage_the_sweep_waits_for_live_workers_to_beat_again(store: Store) -> None:
    import time

    run_id = new_run(store)
    store.claim_step(run_id, "a", worker="w", task_id="t1", holder="stale-but-alive")
    state: dict[str, Any] = {"store": _DownStore()}
    beat = Heartbeat(lambda: state["store"], worker("me"), interval=0.1, dead_after=0.2,
                     workflows=lambda: ["wf"], redispatch=lambda run: None)
    time.sleep(0.3)  # the claim is older than the window: its holder looks dead
    beat.tick()  # the DB is down
    state["store"] = store
    assert beat.tick() == []  # back, but every beat is stale: nobody is judged yet
    assert store.get_run(run_id).steps["a"].crashes == 0
    time.sleep(0.3)  # one window later a holder that did not beat again is dead
    assert [run.run_id for run in beat.tick()] == [run_id]


def test_a_recorded_step_no_longer_names_a_holder(store: Store) -> None:
    from orchestration.store.repository import StepOutcome

    run_id = new_run(store)
    store.claim_step(run_id, "a", worker="w", task_id="t1", holder="h1")
    store.record_step(run_id, "a", StepOutcome(StepStatus.SUCCEEDED, output=1))
    now = datetime.now(UTC) + timedelta(seconds=30)
    assert store.workers.release_dead(now, ["wf"], now) == []
    with store.reader.connect() as conn:
        from sqlalchemy import text

        assert conn.execute(text("SELECT holder FROM steps WHERE run_id = :r AND name = 'a'"),
                            {"r": run_id}).scalar() is None
