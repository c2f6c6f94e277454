"""What callers get back: run handles, run results and step records."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from orchestration.core.clock import utcnow
from orchestration.core.completion import Completions, Watch
from orchestration.core.status import RunStatus, StepStatus
from orchestration.core.stream_events import RUN_FINISHED, StreamEvent, as_event, event
from orchestration.errors import ConfigurationError, WaitTimeout

FLAT_POLL_SECONDS = 0.1
SAFETY_NET_SECONDS = 0.5  # a waiter woken by notices still re-reads the status this often

class RunStore(Protocol):
    """What a run handle reads and cancels through (the store floor's ``Store``)."""

    def run_status(self, run_id: str) -> RunStatus:
        """A run's current status."""

    def get_run(self, run_id: str) -> RunResult:
        """A run with its steps, as it is now."""

    def cancel_run(self, run_id: str, reason: str) -> list[str]:
        """Cancel one run; the ids of its unfinished child runs."""


@dataclass(frozen=True)
class CallRecord:
    """One model call made by a step attempt, for the trace.

    ``context_utilisation``: the prompt's tokens (as the provider reported them, else as
    estimated) over the model's context window.
    """

    model: str
    ok: bool
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    breaker: str | None = None
    error: str | None = None
    error_kind: str | None = None  # the failure's kind (timeout, model_unavailable, ...)
    policy: str | None = None  # the step's on_error entry that acted ("timeout: retry(3)")
    context_utilisation: float | None = None


def cancel_run(store: RunStore, run_id: str) -> list[str]:
    """Cancel a run and, recursively, its unfinished children."""
    cancelled: list[str] = []
    pending = [run_id]
    while pending:
        current = pending.pop()
        pending.extend(store.cancel_run(current, "cancelled" if current == run_id
                                        else f"cancelled with parent run {run_id}"))
        cancelled.append(current)
    return cancelled


@dataclass(frozen=True)
class StepRecord:
    """One step of a run as recorded: status, output, attempts, timing, cost, error."""

    name: str
    status: StepStatus
    output_name: str
    output: Any = None
    attempts: int = 0
    latency_ms: float | None = None
    cost_usd: float = 0.0
    error: str | None = None
    error_type: str | None = None
    model: str | None = None
    queue: str | None = None
    worker: str | None = None
    deliveries: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt_log: list[dict[str, Any]] = field(default_factory=list)
    gate: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cache_hit: bool = False
    crashes: int = 0  # deliveries whose worker died mid-step

    @property
    def retries(self) -> int:
        """Attempts beyond the first."""
        return max(0, self.attempts - 1)

    @property
    def policies(self) -> list[str | None]:
        """Per attempt, the ``on_error`` policy that acted on it (``"timeout: retry(3)"``)."""
        return [attempt.get("policy") for attempt in self.attempt_log]


@dataclass(frozen=True)
class RunResult:
    """A run read from the results database.

    ``outputs`` maps each step's output name to its output (``None`` for a step that
    failed non-critically or was skipped).
    """

    run_id: str
    workflow: str
    status: RunStatus
    inputs: dict[str, Any]
    steps: dict[str, StepRecord]
    error: str | None = None
    error_type: str | None = None
    cost_usd: float = 0.0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    parent_run_id: str | None = None

    @property
    def outputs(self) -> dict[str, Any]:
        """Every step's output by output name."""
        return {
            step.output_name: step.output if step.status.produced_output else None
            for step in self.steps.values()
        }

    @property
    def succeeded(self) -> bool:
        """True when the run ended ``succeeded``."""
        return self.status is RunStatus.SUCCEEDED

    @property
    def duration_s(self) -> float | None:
        """Seconds from creation to finish, once finished."""
        if self.created_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.created_at).total_seconds()


@dataclass(frozen=True)
class RunSummary:
    """One line of a run listing."""

    run_id: str
    workflow: str
    status: RunStatus
    created_at: datetime | None
    finished_at: datetime | None
    cost_usd: float
    error: str | None


class RunHandle:
    """A submitted run: poll it, wait for it, read it. Reads the results DB, never Celery."""

    def __init__(self, run_id: str, store: RunStore, *, existing: bool = False) -> None:
        self.run_id = run_id
        self._store = store
        self.existing = existing

    def status(self) -> RunStatus:
        """The run's current status."""
        return self._store.run_status(self.run_id)

    def result(self) -> RunResult:
        """The run as it is now (finished or not)."""
        return self._store.get_run(self.run_id)

    def cancel(self) -> list[str]:
        """Cancel the run and its unfinished child runs; returns every run id cancelled."""
        return cancel_run(self._store, self.run_id)

    def wait(self, timeout: float | None = 60.0, *, poll: float = 0.002,
             max_poll: float = 0.05) -> RunResult:
        """Block until the run is terminal and return it.

        Woken by the run's completion notice (core/completion.py: in-process with the
        embedded worker, Redis pub/sub with a shared Redis), re-reading the status every
        :data:`SAFETY_NET_SECONDS` meanwhile in case a notice is lost. Where no notice can
        come (a separate worker and no shared Redis, or Redis unreachable) it polls the
        status (one indexed read) every ``poll`` seconds for the first 0.1 s, then less
        often, up to every ``max_poll`` seconds. Raises
        :class:`~orchestration.errors.WaitTimeout` after ``timeout`` seconds; the run goes on.
        """
        completions: Completions | None = getattr(self._store, "completions", None)
        if completions is None:
            return self._wait(None, timeout, poll, max_poll)
        with completions.watch(self.run_id) as watch:  # before the first read: no lost wake-up
            return self._wait(watch, timeout, poll, max_poll)

    def _wait(self, watch: Watch | None, timeout: float | None, poll: float,
              max_poll: float) -> RunResult:
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        interval = poll
        woken = False
        while True:
            if woken:  # the run said it ended: read it once, not its status and then it
                run = self._store.get_run(self.run_id)
                if run.status.is_terminal:
                    return run
            elif self._store.run_status(self.run_id).is_terminal:
                return self._store.get_run(self.run_id)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"run {self.run_id} is still {self.status().value} after {timeout} s; "
                    f"inspect it with `orchestrate show {self.run_id}`"
                )
            pause = SAFETY_NET_SECONDS if watch is not None and watch.live else interval
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            if watch is None:
                time.sleep(pause)
            else:
                woken = watch.wait(pause)
            if time.monotonic() - started > FLAT_POLL_SECONDS:
                interval = min(interval * 1.2, max_poll)

    def stream(self, after: str | None = None, *, timeout: float | None = None,
               poll: float = 1.0) -> Iterator[StreamEvent]:
        """The run's events as they happen, from its durable stream (docs/live.md).

        Each :class:`StreamEvent` has ``.offset``, ``.type`` and ``.data``; the iterator
        ends after ``run_finished``. Pass the last offset seen as ``after`` to resume
        after it (nothing lost, nothing repeated); a finished run's stream replays.
        Raises :class:`~orchestration.errors.WaitTimeout` if the run has not finished
        within ``timeout`` seconds. ``poll``: the longest wait of one read.
        """
        cursor = _Cursor(self, after, timeout)
        while True:
            events, done = cursor.next(cursor.read(cursor.block(poll)))
            yield from events
            if done:
                return

    async def astream(self, after: str | None = None, *, timeout: float | None = None,
                      poll: float = 1.0) -> AsyncIterator[StreamEvent]:
        """:meth:`stream` as an async iterator (blocking reads run in a thread)."""
        cursor = _Cursor(self, after, timeout)
        while True:
            batch = await asyncio.to_thread(cursor.read, cursor.block(poll))
            events, done = await asyncio.to_thread(cursor.next, batch)
            for item in events:
                yield item
            if done:
                return

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id}>"


CLOSE_GRACE_S = 2.0  # a run finished this long ago whose stream is still open gets closed


class _Cursor:
    """Where a reader of a run's stream is: the last offset, the deadline, the end."""

    def __init__(self, handle: RunHandle, after: str | None, timeout: float | None) -> None:
        self.handle = handle
        self.after = after
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        source = getattr(handle._store, "run_stream", None)
        if source is None:
            raise ConfigurationError(f"run {handle.run_id}: this handle's store has no run "
                                     "stream (handles from an Orchestrator have one)")
        self.source = source

    def block(self, poll: float) -> float:
        if self.deadline is None:
            return poll
        return max(0.0, min(poll, self.deadline - time.monotonic()))

    def read(self, block: float) -> list[tuple[str, dict[str, Any]]]:
        batch: list[tuple[str, dict[str, Any]]] = self.source.read(
            self.handle.run_id, self.after, block=block)
        return batch

    def next(self, batch: list[tuple[str, dict[str, Any]]]) -> tuple[list[StreamEvent], bool]:
        """The events of a read, and whether the stream ended (or raise WaitTimeout)."""
        events: list[StreamEvent] = []
        for offset, data in batch:
            self.after = offset
            events.append(as_event(offset, data))
            if events[-1].type == RUN_FINISHED:
                return events, True
        if events:
            return events, False
        self._close_if_finished()
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise WaitTimeout(f"run {self.handle.run_id} did not finish within "
                              f"{self.timeout} s; stream again with after={self.after!r}")
        return events, False

    def _close_if_finished(self) -> None:
        """A run that ended long enough ago without ``run_finished`` (cancelled, failed by
        the reconciler, or streamed with ORCH_STREAM=off) gets it now, once."""
        store = self.handle._store
        if not store.run_status(self.handle.run_id).is_terminal:
            return
        run = store.get_run(self.handle.run_id)
        finished = run.finished_at
        if finished is not None and (utcnow() - finished).total_seconds() < CLOSE_GRACE_S:
            return  # its last step may still be writing its last events
        append_once = getattr(self.source, "append_once", None)
        if append_once is not None:
            append_once(run.run_id, event(RUN_FINISHED, run.run_id, status=run.status.value,
                                          error=run.error, cost_usd=run.cost_usd))
