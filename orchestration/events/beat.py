"""The beat: every registered :class:`Schedule` fires on its cron ticks (UTC).

Each pass (:meth:`Beat.tick`) looks at the clock (injectable, for tests) and, for every
schedule of the host's workflows, fires the latest tick that came since the last one it
handled. A tick starts its run with the idempotency key ``schedule:<name>:<tick ISO>``:
two beat processes started by mistake fire the same ticks, and the runs table's unique
key lets only one run start per tick (the other beat records ``duplicate``). Every tick
is recorded in the events table (source ``schedule``, trigger = the schedule's name).

Overlap policies, when the schedule's previous run is still pending, running or waiting:

- ``skip``: the tick is recorded ``skipped`` (the reason names the run);
- ``allow``: the run starts anyway;
- ``queue``: the tick is recorded ``queued`` and starts (with its own key, so still at
  most once) when the run before it finishes, oldest tick first; queued ticks survive a
  restart of the beat, since they are rows.

Downtime: a beat that (re)starts after missing ticks fires **only the latest** missed tick,
once, and logs that earlier ones were missed. A schedule that never fired before starts
with the first tick after the beat starts (no catch-up of its past).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from croniter import croniter

from orchestration.core.clock import utcnow
from orchestration.core.names import MAX_NAME
from orchestration.core.status import RunStatus
from orchestration.define.triggers import Schedule
from orchestration.define.workflow import Host, Workflow
from orchestration.errors import ConfigurationError, InvalidInput, WorkflowDefinitionError
from orchestration.events.outcomes import Outcome
from orchestration.store import schedules as rows
from orchestration.store.events import EventRecord

KEY_PREFIX = "schedule:"
ACTIVE = frozenset({RunStatus.PENDING.value, RunStatus.RUNNING.value, RunStatus.WAITING.value})
log = structlog.get_logger("orchestration.events.beat")


@dataclass(frozen=True)
class TickOutcome:
    """What one beat did with one tick of one schedule."""

    schedule: str
    tick: datetime
    outcome: Outcome
    run_id: str | None = None
    reason: str | None = None


def tick_key(schedule: str, tick: datetime) -> str:
    """The idempotency key (and event id) of a schedule's tick."""
    return f"{KEY_PREFIX}{schedule}:{tick.isoformat()}"


def latest_tick(cron: str, now: datetime) -> datetime:
    """The newest tick of ``cron`` at or before ``now`` (UTC)."""
    return croniter(cron, now + timedelta(microseconds=1)).get_prev(datetime)  # type: ignore[no-any-return]


def next_tick(cron: str, after: datetime) -> datetime:
    """The first tick of ``cron`` strictly after ``after`` (UTC)."""
    return croniter(cron, after).get_next(datetime)  # type: ignore[no-any-return]


class Beat:
    """Fires the schedules of ``host``'s workflows; one instance per beat process.

    ``clock`` returns the current time (aware UTC); ``poll`` caps the wait between
    passes (queued ticks and a database that was down are looked at again that often).
    """

    def __init__(self, host: Host, *, clock: Callable[[], datetime] = utcnow,
                 poll: float = 5.0) -> None:
        self.host = host
        self.clock = clock
        self.poll = poll
        self._last: dict[str, datetime] = {}
        for schedule in self.schedules():
            if len(tick_key(schedule.name, utcnow())) > MAX_NAME:
                raise ConfigurationError(f"schedule {schedule.name!r}: the name is too long "
                                         "for its ticks' idempotency keys (at most 160)")

    def schedules(self) -> list[Schedule]:
        """Every schedule of the host's workflows."""
        return [schedule for workflow in list(self.host.workflows.values())
                for schedule in workflow.schedules]

    # -- one pass ----------------------------------------------------------------------

    def tick(self) -> list[TickOutcome]:
        """One pass at ``clock()``: start queued ticks that may go, fire due ticks."""
        now = self.clock()
        done: list[TickOutcome] = []
        for schedule in self.schedules():
            workflow = self.host.workflows[schedule.workflow]
            if schedule.overlap == "queue":
                done.extend(self._drain(schedule, workflow, now))
            due = self._due(schedule, now)
            if due is not None:
                done.append(self._fire(schedule, workflow, due, now))
                self._last[schedule.name] = due  # only once handled: a failure retries it
        return done

    def seconds_to_next(self) -> float:
        """How long to wait before the next pass: until the next tick, at most ``poll``."""
        now = self.clock()
        waits = [(next_tick(s.cron, now) - now).total_seconds() for s in self.schedules()]
        return max(0.01, min([self.poll, *waits]))

    def run(self, stop: threading.Event) -> None:
        """Pass after pass until ``stop`` is set; a failed pass is logged and retried."""
        log.info("beat started", schedules=[f"{s.name} ({s.cron}, {s.overlap})"
                                            for s in self.schedules()])
        while not stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # the database or broker is down: try again
                log.error("beat pass failed; retrying", error=f"{type(exc).__name__}: {exc}")
                stop.wait(self.poll)
                continue
            stop.wait(self.seconds_to_next())

    # -- deciding a tick ---------------------------------------------------------------

    def _due(self, schedule: Schedule, now: datetime) -> datetime | None:
        latest = latest_tick(schedule.cron, now)
        last = self._last.get(schedule.name)
        if last is None:
            last = self._recorded_last(schedule) or latest
            self._last[schedule.name] = last
        if latest <= last:
            return None
        if next_tick(schedule.cron, last) < latest:
            log.warning("missed ticks: firing only the latest", schedule=schedule.name,
                        last_fired=last.isoformat(), firing=latest.isoformat())
        return latest

    def _recorded_last(self, schedule: Schedule) -> datetime | None:
        key = rows.last_tick(self.host.store.engine, schedule.name)
        prefix = f"{KEY_PREFIX}{schedule.name}:"
        if key is None or not key.startswith(prefix):
            return None
        try:
            return datetime.fromisoformat(key[len(prefix):])
        except ValueError:
            return None

    def _fire(self, schedule: Schedule, workflow: Workflow, tick: datetime,
              now: datetime) -> TickOutcome:
        key = tick_key(schedule.name, tick)
        engine = self.host.store.engine
        with rows.tick_lock(engine, key):
            seen = rows.recorded(engine, key)
            if seen is not None:
                return self._record(schedule, tick, now, Outcome.DUPLICATE, seen.run_id,
                                    f"this tick was already {seen.outcome} by another beat")
            if schedule.overlap != "allow":
                busy = self._busy(schedule, key)
                if schedule.overlap == "skip" and busy:
                    return self._record(schedule, tick, now, Outcome.SKIPPED, None, busy)
                if schedule.overlap == "queue" and (
                        busy or rows.queued_ticks(engine, schedule.name)):
                    return self._record(schedule, tick, now, Outcome.QUEUED, None,
                                        busy or "earlier ticks are queued")
            return self._start(schedule, workflow, tick, now, key)

    def _busy(self, schedule: Schedule, key: str) -> str | None:
        """Why the previous run of ``schedule`` blocks tick ``key`` (None: it does not)."""
        previous = rows.previous_run(self.host.store.engine, schedule.workflow,
                                     f"{KEY_PREFIX}{schedule.name}:", exclude=key)
        if previous is None or previous[1] not in ACTIVE:
            return None
        return f"run {previous[0]} of this schedule is still {previous[1]}"

    def _drain(self, schedule: Schedule, workflow: Workflow,
               now: datetime) -> list[TickOutcome]:
        """Start the oldest queued tick of ``schedule`` once its previous run finished."""
        engine = self.host.store.engine
        queued = rows.queued_ticks(engine, schedule.name)
        if not queued:
            return []
        key = queued[0]
        with rows.tick_lock(engine, key):
            seen = rows.recorded(engine, key)
            if seen is None or seen.outcome != Outcome.QUEUED.value or self._busy(schedule,
                                                                                   key):
                return []
            tick = datetime.fromisoformat(key[len(f"{KEY_PREFIX}{schedule.name}:"):])
            handle = self.host.submit(workflow, dict(schedule.inputs), idempotency_key=key,
                                      priority=schedule.priority)
            rows.mark_started(engine, key, handle.run_id)
        log.info("schedule tick", schedule=schedule.name, tick=tick.isoformat(),
                 outcome="started", run_id=handle.run_id, queued=True)
        return [TickOutcome(schedule.name, tick, Outcome.STARTED, handle.run_id)]

    def _start(self, schedule: Schedule, workflow: Workflow, tick: datetime, now: datetime,
               key: str) -> TickOutcome:
        try:
            handle = self.host.submit(workflow, dict(schedule.inputs), idempotency_key=key,
                                      priority=schedule.priority)
        except (InvalidInput, WorkflowDefinitionError) as exc:
            return self._record(schedule, tick, now, Outcome.REJECTED, None, str(exc))
        outcome = Outcome.DUPLICATE if handle.existing else Outcome.STARTED
        return self._record(schedule, tick, now, outcome, handle.run_id, None)

    def _record(self, schedule: Schedule, tick: datetime, now: datetime, outcome: Outcome,
                run_id: str | None, reason: str | None) -> TickOutcome:
        payload: dict[str, Any] = {"tick": tick.isoformat(), "cron": schedule.cron,
                                   "workflow": schedule.workflow}
        self.host.store.events.record([EventRecord(
            event_id=tick_key(schedule.name, tick), name=schedule.name, source=rows.SOURCE,
            payload=payload, received_at=now, outcome=outcome.value, trigger=schedule.name,
            run_id=run_id, reason=reason)])
        log.info("schedule tick", schedule=schedule.name, tick=tick.isoformat(),
                 outcome=outcome.value, run_id=run_id, reason=reason)
        return TickOutcome(schedule.name, tick, outcome, run_id, reason)
