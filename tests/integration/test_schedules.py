"""``orchestrate beat`` schedules against PostgreSQL, with a fake clock.

Each beat has its own ``Orchestrator`` (its own engine and connections), as two beat
processes would. Runs go to a queue no worker serves, so they stay ``pending`` (a
"previous run still going") until the test finishes them in the results DB.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestration import Workflow
from orchestration.app import Orchestrator
from orchestration.core.settings import Settings
from orchestration.core.status import RunStatus
from orchestration.events.beat import Beat, TickOutcome, tick_key
from orchestration.events.outcomes import Outcome
from orchestration.store.repository import Store
from tests.integration.support.workflows.schedules import SCHEDULE
from tests.integration.support.workflows.schedules import WORKFLOW as SCHEDULE_WORKFLOW
from tests.support.polling import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "it.beat.unserved"  # no worker: a started run stays pending until finished here
START = datetime(2026, 1, 5, 9, 0, 30, tzinfo=UTC)  # half a minute before the first tick
MINUTE = timedelta(minutes=1)


@dataclass
class FakeClock:
    """The beats' clock: moved by the test only."""

    now: datetime = START

    def __call__(self) -> datetime:
        return self.now

    def to_tick(self, number: int) -> datetime:
        """Move to just after the ``number``-th minute tick (1: 09:01:00); return the tick."""
        tick = START.replace(second=0) + number * MINUTE
        self.now = tick + timedelta(seconds=2)
        return tick


@dataclass
class Deployment:
    """One beat process: its orchestrator, its copy of the workflow, its beat."""

    orchestrator: Orchestrator
    beat: Beat


class Scheduled:
    """Beats of one schedule (a fresh name per test) sharing one fake clock."""

    def __init__(self, overlap: str) -> None:
        self.name = f"it_beat_{uuid.uuid4().hex[:10]}"
        self.overlap = overlap
        self.clock = FakeClock()
        self.deployments: list[Deployment] = []

    def start_beat(self) -> Beat:
        """A new beat process (a fresh orchestrator and workflow declaration)."""
        orchestrator = Orchestrator(Settings())
        workflow = Workflow(self.name, inputs=["report"], queue=QUEUE,
                            orchestrator=orchestrator)

        @workflow.task
        def build(report: str) -> str:
            return report

        workflow.schedule("* * * * *", inputs={"report": "daily"}, overlap=self.overlap,
                          name=self.name)
        beat = Beat(orchestrator, clock=self.clock)
        self.deployments.append(Deployment(orchestrator, beat))
        return beat

    @property
    def store(self) -> Store:
        """The results store (the first beat's connection to it)."""
        return self.deployments[0].orchestrator.store

    def run_ids(self) -> list[str]:
        """Ids of this schedule's runs, oldest first."""
        summaries = self.store.list_runs(workflow=self.name, limit=1000)
        return [s.run_id for s in sorted(summaries, key=lambda s: s.created_at)]

    def key_of(self, tick: datetime) -> str:
        """The tick's idempotency key (its event id)."""
        return tick_key(self.name, tick)

    def rows(self, tick: datetime) -> list[tuple[str, str | None]]:
        """(outcome, run id) of the tick's event rows, sorted."""
        recent = self.store.events.recent(event_id=self.key_of(tick), limit=100)
        return sorted((row.record.outcome, row.record.run_id) for row in recent)

    def run_of(self, tick: datetime) -> str | None:
        """The run started for this tick (found by its idempotency key)."""
        return self.store.find_by_idempotency_key(self.key_of(tick))

    def finish_all(self) -> None:
        """Every run of this schedule ends (succeeded)."""
        for run_id in self.run_ids():
            self.store.finish_run(run_id, RunStatus.SUCCEEDED)

    def close(self) -> None:
        for deployment in self.deployments:
            deployment.orchestrator.shutdown()


Make = Callable[[str], Scheduled]


@pytest.fixture
def scheduled() -> Iterator[Make]:
    """Make a schedule with an overlap policy; its beats' orchestrators are shut at the end."""
    made: list[Scheduled] = []

    def make(overlap: str) -> Scheduled:
        made.append(Scheduled(overlap))
        return made[-1]

    yield make
    for item in made:
        item.close()


def _together(beats: list[Beat]) -> list[TickOutcome]:
    """One pass of every beat at the same moment (threads released by a barrier)."""
    barrier = threading.Barrier(len(beats))

    def one(beat: Beat) -> list[TickOutcome]:
        barrier.wait()
        return beat.tick()

    with ThreadPoolExecutor(len(beats)) as pool:
        return [outcome for done in pool.map(one, beats) for outcome in done]


@pytest.mark.parametrize("overlap", ["skip", "allow", "queue"])
def test_two_beats_fire_each_tick_exactly_once(scheduled: Make, overlap: str) -> None:
    schedule = scheduled(overlap)
    beats = [schedule.start_beat(), schedule.start_beat()]
    assert _together(beats) == []  # before the first tick: nothing
    for number in range(1, 5):
        tick = schedule.clock.to_tick(number)
        outcomes = _together(beats)
        assert sorted(o.outcome for o in outcomes) == [Outcome.DUPLICATE, Outcome.STARTED]
        run_id = schedule.run_of(tick)
        assert run_id is not None
        assert {o.run_id for o in outcomes} == {run_id}
        assert schedule.rows(tick) == [("duplicate", run_id), ("started", run_id)]
        assert _together(beats) == []  # the same tick again: nothing more
        schedule.finish_all()
    assert len(schedule.run_ids()) == 4


def test_two_beats_skip_a_busy_tick_once(scheduled: Make) -> None:
    schedule = scheduled("skip")
    beats = [schedule.start_beat(), schedule.start_beat()]
    _together(beats)
    first = schedule.clock.to_tick(1)
    _together(beats)
    second = schedule.clock.to_tick(2)
    outcomes = _together(beats)
    assert sorted(o.outcome for o in outcomes) == [Outcome.DUPLICATE, Outcome.SKIPPED]
    assert [outcome for outcome, _ in schedule.rows(second)] == ["duplicate", "skipped"]
    assert schedule.run_of(second) is None
    assert schedule.run_ids() == [schedule.run_of(first)]


def test_skip_records_a_tick_while_the_previous_run_is_going(scheduled: Make) -> None:
    schedule = scheduled("skip")
    beat = schedule.start_beat()
    beat.tick()
    first = schedule.clock.to_tick(1)
    [started] = beat.tick()
    assert started.outcome is Outcome.STARTED
    second = schedule.clock.to_tick(2)
    [skipped] = beat.tick()
    assert skipped.outcome is Outcome.SKIPPED
    assert f"run {started.run_id} of this schedule is still pending" in (skipped.reason or "")
    assert schedule.rows(second) == [("skipped", None)]
    schedule.finish_all()
    third = schedule.clock.to_tick(3)
    [again] = beat.tick()
    assert again.outcome is Outcome.STARTED
    assert schedule.run_ids() == [schedule.run_of(first), schedule.run_of(third)]


def test_allow_starts_a_run_while_the_previous_one_is_going(scheduled: Make) -> None:
    schedule = scheduled("allow")
    beat = schedule.start_beat()
    beat.tick()
    for number in (1, 2, 3):
        schedule.clock.to_tick(number)
        [outcome] = beat.tick()
        assert outcome.outcome is Outcome.STARTED
    runs = schedule.run_ids()
    assert len(runs) == 3
    assert all(schedule.store.get_run(r).status is RunStatus.PENDING for r in runs)


def test_queue_starts_each_tick_when_the_one_before_finishes(scheduled: Make) -> None:
    schedule = scheduled("queue")
    beat = schedule.start_beat()
    beat.tick()
    ticks = [schedule.clock.to_tick(1)]
    assert [o.outcome for o in beat.tick()] == [Outcome.STARTED]
    for number in (2, 3):
        ticks.append(schedule.clock.to_tick(number))
        [queued] = beat.tick()
        assert queued.outcome is Outcome.QUEUED
    assert schedule.rows(ticks[1]) == [("queued", None)]
    assert len(schedule.run_ids()) == 1
    # The beat restarts: queued ticks are rows, not memory.
    beat = schedule.start_beat()
    assert beat.tick() == []  # the first run is still pending: nothing may start
    for position in (1, 2):
        schedule.finish_all()
        [started] = beat.tick()
        assert (started.outcome, started.tick) == (Outcome.STARTED, ticks[position])
        assert schedule.rows(ticks[position]) == [("started", started.run_id)]
        assert beat.tick() == []  # its run is pending now: the next one waits
    assert schedule.run_ids() == [schedule.run_of(tick) for tick in ticks]


def test_after_downtime_only_the_latest_missed_tick_fires(scheduled: Make) -> None:
    schedule = scheduled("allow")
    beat = schedule.start_beat()
    beat.tick()
    first = schedule.clock.to_tick(1)
    beat.tick()
    latest = schedule.clock.to_tick(10)  # down for ticks 2..9
    restarted = schedule.start_beat()
    [fired] = restarted.tick()
    assert (fired.outcome, fired.tick) == (Outcome.STARTED, latest)
    assert restarted.tick() == []
    assert schedule.run_ids() == [schedule.run_of(first), schedule.run_of(latest)]
    # The beat that stayed up but did not run a pass (a long pause) does the same.
    schedule.clock.to_tick(15)
    [late] = beat.tick()
    assert late.tick == START.replace(second=0) + 15 * MINUTE
    assert len(schedule.run_ids()) == 3


def test_a_new_schedule_does_not_fire_its_past(scheduled: Make) -> None:
    schedule = scheduled("allow")
    schedule.clock.to_tick(5)
    beat = schedule.start_beat()
    assert beat.tick() == []
    schedule.clock.to_tick(6)
    assert [o.outcome for o in beat.tick()] == [Outcome.STARTED]


def test_two_beat_processes_start_one_run_per_tick(tmp_path: Path,
                                                   request: pytest.FixtureRequest) -> None:
    """Two real ``orchestrate beat`` processes on a one-second schedule, real clock."""
    env = {**os.environ, "ORCH_IMPORTS": "tests.integration.support.workflows.schedules",
           "PYTHONPATH": str(ROOT), "ORCH_LOG_JSON": "true"}
    command = [sys.executable, "-c", "from orchestration.cli import main; main()", "beat",
               "--poll", "0.5"]
    logs = [tmp_path / f"beat-{n}.log" for n in (1, 2)]
    processes = []
    for log in logs:
        with log.open("wb") as out:
            processes.append(subprocess.Popen(command, env=env, stdout=out,
                                              stderr=subprocess.STDOUT, cwd=ROOT))
    reader = Orchestrator(Settings())
    request.addfinalizer(reader.shutdown)
    store = reader.store

    def ticks_fired_by_both() -> int:
        recent = store.events.recent(name=SCHEDULE, limit=1000)
        return sum(1 for row in recent if row.record.outcome == "duplicate")

    try:
        wait_until(lambda: ticks_fired_by_both() >= 3, timeout=90,
                   what="both beats to handle three ticks")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=30) for process in processes]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    rows: dict[str, list[tuple[str, str | None]]] = {}
    for row in store.events.recent(name=SCHEDULE, limit=1000):
        rows.setdefault(row.record.event_id, []).append((row.record.outcome,
                                                         row.record.run_id))
    runs = store.list_runs(workflow=SCHEDULE_WORKFLOW, limit=1000)
    assert len(runs) == len(rows)  # one run per tick...
    for key, outcomes in rows.items():  # ...and each tick decided once, seen at most twice
        started = [run_id for outcome, run_id in outcomes if outcome == "started"]
        assert len(started) == 1 and store.find_by_idempotency_key(key) == started[0], key
        assert sorted(o for o, _ in outcomes) in (["started"], ["duplicate", "started"]), key
        assert {run_id for _, run_id in outcomes} == {started[0]}, key
