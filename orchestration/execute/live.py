"""What a step writes to its run's live stream (``handle.stream()``; docs/live.md).

A :class:`Live` is one step attempt's writer: ``ctx.emit``, ``ctx.partial`` and the
token sink that ``ctx.llm.stream`` calls go through it. Values are redacted with the
workflow's redactor before they are written (as the results DB stores them).

Writes cost the step almost nothing: events go to a :class:`StreamWriter`, one thread
per process and stream, which writes whatever has queued up in one round trip (one
transaction, or one Redis pipeline) as soon as it is free (events nobody waits for
linger :data:`LINGER_S` for company), so a token reaches the stream within a few
milliseconds and a fast provider's chunks, or a short step's start and end, share
writes. Ordering: a step's ``step_finished`` (and ``run_finished``,
``waiting_for_input``) is written *synchronously*, after everything queued before it in
this process, so every event of a step is stored before the step's outcome is passed on:
a dependent's events come after it, and ``run_finished`` is the last event of its run.
Only a dependent in another process needs that wait: where the outcome stays in this
process (every step on the embedded default, a fused chain's next step) or goes nowhere
(the run's last step), this process's one writer already keeps the queue's order, and
the step does not wait (``wait=False``); :func:`flush` and :func:`flush_all` (at shutdown,
when a pool process ends, at interpreter exit) write what is still queued.
The run's completion notice is sent by the writer once ``run_finished`` is written
(``then=``), so a caller woken from ``handle.wait()`` finds the run's stream complete.
A stream that cannot be written (Redis down) never fails the step: the events are
dropped and logged (and the notice still goes out).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from orchestration.core.stream_events import (
    PARTIAL_OUTPUT,
    RUN_FINISHED,
    STEP_FINISHED,
    STEP_STARTED,
    TOKEN,
    TOKENS_SUPERSEDED,
    event,
    summary,
)

if TYPE_CHECKING:
    from orchestration.core.redaction import Redactor
    from orchestration.store.repository import StepOutcome
    from orchestration.store.run_stream import RunStream

log = structlog.get_logger("orchestration.execute.live")
ERROR_CHARS = 300
SYNC_WAIT_S = 10.0  # the longest a step waits for its step_finished to be written
IDLE_EXIT_S = 5.0  # a writer thread with nothing to write for this long ends
LINGER_S = 0.003  # events nobody waits for wait this long for others to share their write


class _Item:
    __slots__ = ("done", "event", "once", "run_id", "then")

    def __init__(self, run_id: str, data: dict[str, Any] | None, once: bool = False,
                 done: threading.Event | None = None,
                 then: Callable[[], None] | None = None) -> None:
        self.run_id, self.event, self.once, self.done = run_id, data, once, done
        self.then = then  # called once the item is written (or dropped)

    @property
    def awaited(self) -> bool:
        """Someone waits for this item: the writer does not linger for company."""
        return self.done is not None or self.then is not None


class StreamWriter:
    """Writes one stream's events from a thread of its own (see the module doc)."""

    def __init__(self, stream: RunStream) -> None:
        self._stream = weakref.ref(stream)  # the writer never keeps a store alive
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._queue: list[_Item] = []
        self._thread: threading.Thread | None = None

    def put(self, run_id: str, data: dict[str, Any]) -> None:
        """Queue an event; written as soon as the writer is free."""
        self._enqueue([_Item(run_id, data)])

    def write(self, run_id: str, events: Sequence[dict[str, Any]], *,
              once: Sequence[dict[str, Any]] = (), wait: bool = True,
              then: Callable[[], None] | None = None) -> None:
        """Write events (then ``once`` ones, see ``append_once``) after everything queued
        before them; return when they are stored (or after :data:`SYNC_WAIT_S`), or at
        once with ``wait=False``. ``then`` is called from the writer's thread once they
        are written, or dropped (it must not raise; an error is logged)."""
        done = threading.Event() if wait else None
        items = [_Item(run_id, data) for data in events]
        items += [_Item(run_id, data, once=True) for data in once]
        items[-1].done, items[-1].then = done, then
        self._enqueue(items)
        if done is not None and not done.wait(SYNC_WAIT_S):
            log.warning("run stream write still pending; step goes on", run_id=run_id)

    def flush(self, timeout: float = SYNC_WAIT_S) -> bool:
        """Wait until everything queued before this call is written (False: not within
        ``timeout``)."""
        with self._cond:
            if self._pid == os.getpid() and self._thread is None and not self._queue:
                return True  # nothing queued, nothing being written
        done = threading.Event()
        self._enqueue([_Item("", None, done=done)])  # a marker: nothing to write
        return done.wait(timeout)

    def _enqueue(self, items: list[_Item]) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's thread is not here
            self._pid, self._cond, self._queue, self._thread = (
                os.getpid(), threading.Condition(), [], None)
        with self._cond:
            self._queue.extend(items)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="run-stream-writer",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._cond.wait(IDLE_EXIT_S)
                if not self._queue:  # idle: the thread ends; the next event starts one
                    self._thread = None
                    return
                # Nobody waits for these yet: let a few more join the same write.
                deadline = time.monotonic() + LINGER_S
                while not any(item.awaited for item in self._queue):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch, self._queue = self._queue, []
            try:
                self._write(batch)
            finally:
                for item in batch:
                    if item.done is not None:
                        item.done.set()
                for item in batch:
                    if item.then is not None:
                        _call(item.then, item.run_id)

    def _write(self, batch: list[_Item]) -> None:
        stream = self._stream()
        if stream is None:
            return  # its store is gone
        for pending, once in write_groups(batch):
            _append(stream, pending, once)


Events = list[tuple[str, dict[str, Any]]]  # (run id, event) pairs


def write_groups(batch: Sequence[_Item]) -> list[tuple[Events, Events]]:
    """The batch as few ``append_all`` calls as keep every run's events in order.

    One call writes its events before its once-events, so a run's event that follows its
    own once-event starts the next call. Other runs' events join the current one: each
    run has its own stream, and the order between runs means nothing. (Cutting at every
    once-event made one write per finished run when many runs end at once.)
    """
    groups: list[tuple[Events, Events]] = []
    pending: Events = []
    once: Events = []
    closed: set[str] = set()  # runs with a once-event in the current call
    for item in batch:
        if item.event is None:
            continue  # a flush marker
        if not item.once and item.run_id in closed:
            groups.append((pending, once))
            pending, once, closed = [], [], set()
        if item.once:
            once.append((item.run_id, item.event))
            closed.add(item.run_id)
        else:
            pending.append((item.run_id, item.event))
    if pending or once:
        groups.append((pending, once))
    return groups


def _append(stream: RunStream, items: list[tuple[str, dict[str, Any]]],
            once: list[tuple[str, dict[str, Any]]]) -> None:
    if items or once:
        try:
            stream.append_all(items, once)
        except Exception as exc:  # the stream is a view: a step never fails for it
            _dropped(len(items) + len(once), exc)


def _call(then: Callable[[], None], run_id: str) -> None:
    try:
        then()
    except Exception:  # the writer thread must outlive a broken callback
        log.exception("run stream write callback failed", run_id=run_id)


def _dropped(count: int, exc: Exception) -> None:
    log.warning("run stream not written; events dropped", events=count,
                error=f"{type(exc).__name__}: {exc}")


_WRITERS: weakref.WeakKeyDictionary[Any, StreamWriter] = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


def writer_for(stream: RunStream) -> StreamWriter:
    """The process's writer of ``stream`` (made on first use)."""
    writer = _WRITERS.get(stream)
    if writer is None:
        with _WRITERS_LOCK:
            writer = _WRITERS.get(stream)
            if writer is None:
                writer = _WRITERS[stream] = StreamWriter(stream)
    return writer


def safe_append(stream: RunStream, run_id: str, events: list[dict[str, Any]],
                *, once: bool = False) -> None:
    """Write events now, after everything this process queued for the stream."""
    if once:
        writer_for(stream).write(run_id, [], once=events)
    else:
        writer_for(stream).write(run_id, events)


class Live:
    """One step attempt's writer to its run's stream."""

    def __init__(self, stream: RunStream, run_id: str, step: str, attempt: int,
                 redactor: Redactor | None) -> None:
        self.writer = writer_for(stream)
        self.run_id, self.step, self.attempt = run_id, step, attempt
        self.redactor = redactor
        self.tokens = 0  # token events of this attempt

    def emit(self, event_type: str, **fields: Any) -> None:
        """Queue one event of this step (fields redacted)."""
        clean = self.redactor(fields) if self.redactor is not None else fields
        self.writer.put(self.run_id, event(event_type, self.run_id, step=self.step, **clean))

    def token(self, text: str) -> None:
        """A text chunk of a streamed model answer (``token`` event)."""
        if self.redactor is not None:
            redacted = self.redactor(text)
            text = redacted if isinstance(redacted, str) else text
        self.writer.put(self.run_id, event(TOKEN, self.run_id, step=self.step,
                                           attempt=self.attempt, index=self.tokens, text=text))
        self.tokens += 1

    def flush(self) -> None:
        """Nothing to do: the writer writes queued events as soon as it can."""

    def started(self, *, worker: str | None, queue: str | None, model: str | None) -> None:
        """``step_started`` for this attempt."""
        self.emit(STEP_STARTED, attempt=self.attempt, worker=worker, queue=queue, model=model)

    def partial(self, value: Any) -> None:
        """``partial_output``: a value the step shows before it finishes."""
        self.emit(PARTIAL_OUTPUT, attempt=self.attempt, value=value)

    def ended(self, failed: bool) -> None:
        """The attempt ended: a failed one's tokens are void (``tokens_superseded``)."""
        if failed and self.tokens:
            self.writer.put(self.run_id, event(TOKENS_SUPERSEDED, self.run_id, step=self.step,
                                               attempt=self.attempt))


def step_finished(run_id: str, step: str, outcome: StepOutcome,
                  latency_s: float | None) -> dict[str, Any]:
    """The ``step_finished`` event of a recorded (already redacted) outcome."""
    error = (outcome.error or "").strip().splitlines()
    return event(STEP_FINISHED, run_id, step=step, status=outcome.status.value,
                 latency_ms=None if latency_s is None else round(latency_s * 1000, 2),
                 cost_usd=outcome.cost_usd, output_summary=summary(outcome.output),
                 error=error[-1][:ERROR_CHARS] if error else None)


def run_finished_event(run_id: str, status: str, error: str | None,
                       cost_usd: float) -> dict[str, Any]:
    """The ``run_finished`` event."""
    return event(RUN_FINISHED, run_id, status=status, error=error, cost_usd=cost_usd)


def record_step_finished(stream: RunStream, run_id: str, step: str, outcome: StepOutcome,
                         latency_s: float | None, finished: dict[str, Any] | None = None,
                         *, wait: bool = True, then: Callable[[], None] | None = None) -> None:
    """Write ``step_finished`` (and the run's ``run_finished``, if it ended) now; with
    ``wait=False`` (every step of the run in this process) queue it and go on. ``then``
    runs once they are written (the run's completion notice)."""
    writer_for(stream).write(run_id, [step_finished(run_id, step, outcome, latency_s)],
                             once=[finished] if finished is not None else [], wait=wait,
                             then=then)


def flush(stream: RunStream, timeout: float = SYNC_WAIT_S) -> bool:
    """Write what this process queued for ``stream``; False if not within ``timeout``."""
    writer = _WRITERS.get(stream)
    return True if writer is None else writer.flush(timeout)


@atexit.register
def flush_all(timeout: float = 5.0) -> None:
    """Write what this process's steps queued and did not wait for, each writer within
    ``timeout`` seconds: at interpreter exit (daemon threads still run then) and when a
    worker's pool process ends (it exits without atexit)."""
    for writer in list(_WRITERS.values()):
        writer.flush(timeout)


def run_finished(stream: RunStream, run_id: str, status: str, error: str | None,
                 cost_usd: float, *, then: Callable[[], None] | None = None) -> None:
    """Close a run's stream with ``run_finished`` (once, whoever closes it); ``then``
    runs once it is written (the run's completion notice)."""
    writer_for(stream).write(run_id, [], once=[run_finished_event(run_id, status, error,
                                                                  cost_usd)], then=then)
