"""What a step writes to its run's live stream (``handle.stream()``; docs/live.md).

A :class:`Live` is one step attempt's writer: ``ctx.emit``, ``ctx.partial`` and the
token sink that ``ctx.llm.stream`` calls go through it. Values are redacted with the
workflow's redactor before they are written (as the results DB stores them). Tokens are
written in small batches: a chunk goes out at once when the last write is more than
:data:`TOKEN_FLUSH_S` old, else with the next one (or when the call ends), so a fast
provider costs one write per few milliseconds, not one per chunk. A stream that cannot
be written (Redis down) never fails the step: the event is dropped and logged.
"""

from __future__ import annotations

import time
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
TOKEN_FLUSH_S = 0.005
ERROR_CHARS = 300


def safe_append(stream: RunStream, run_id: str, events: list[dict[str, Any]],
                *, once: bool = False) -> None:
    """Append events, logging (never raising) if the stream cannot be written."""
    try:
        if once:
            stream.append_once(run_id, events[0])
        else:
            stream.append_many(run_id, events)
    except Exception as exc:  # the stream is a view: a step never fails for it
        log.warning("run stream not written; events dropped", run_id=run_id,
                    events=len(events), error=f"{type(exc).__name__}: {exc}")


class Live:
    """One step attempt's writer to its run's stream."""

    def __init__(self, stream: RunStream, run_id: str, step: str, attempt: int,
                 redactor: Redactor | None) -> None:
        self.stream = stream
        self.run_id, self.step, self.attempt = run_id, step, attempt
        self.redactor = redactor
        self.tokens = 0  # token events of this attempt
        self._pending: list[dict[str, Any]] = []
        self._flushed = 0.0

    def emit(self, event_type: str, **fields: Any) -> None:
        """Write one event of this step (fields redacted)."""
        self.flush()
        clean = self.redactor(fields) if self.redactor is not None else fields
        safe_append(self.stream, self.run_id, [event(event_type, self.run_id, step=self.step,
                                                     **clean)])

    def token(self, text: str) -> None:
        """A text chunk of a streamed model answer (``token`` event)."""
        if self.redactor is not None:
            redacted = self.redactor(text)
            text = redacted if isinstance(redacted, str) else text
        self._pending.append(event(TOKEN, self.run_id, step=self.step, attempt=self.attempt,
                                   index=self.tokens, text=text))
        self.tokens += 1
        if time.monotonic() - self._flushed >= TOKEN_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write the tokens held back."""
        if self._pending:
            pending, self._pending = self._pending, []
            safe_append(self.stream, self.run_id, pending)
            self._flushed = time.monotonic()

    def started(self, *, worker: str | None, queue: str | None, model: str | None) -> None:
        """``step_started`` for this attempt."""
        self.emit(STEP_STARTED, attempt=self.attempt, worker=worker, queue=queue, model=model)

    def partial(self, value: Any) -> None:
        """``partial_output``: a value the step shows before it finishes."""
        self.emit(PARTIAL_OUTPUT, attempt=self.attempt, value=value)

    def ended(self, failed: bool) -> None:
        """The attempt ended: its held tokens are written; a failed one's are void."""
        self.flush()
        if failed and self.tokens:
            safe_append(self.stream, self.run_id, [event(
                TOKENS_SUPERSEDED, self.run_id, step=self.step, attempt=self.attempt)])


def record_step_finished(stream: RunStream, run_id: str, step: str, outcome: StepOutcome,
                         latency_s: float | None) -> None:
    """Write ``step_finished`` for a recorded (already redacted) outcome."""
    error = (outcome.error or "").strip().splitlines()
    safe_append(stream, run_id, [event(
        STEP_FINISHED, run_id, step=step, status=outcome.status.value,
        latency_ms=None if latency_s is None else round(latency_s * 1000, 2),
        cost_usd=outcome.cost_usd, output_summary=summary(outcome.output),
        error=error[-1][:ERROR_CHARS] if error else None)])


def run_finished(stream: RunStream, run_id: str, status: str, error: str | None,
                 cost_usd: float) -> None:
    """Close a run's stream with ``run_finished`` (once, whoever closes it)."""
    safe_append(stream, run_id, [event(RUN_FINISHED, run_id, status=status, error=error,
                                       cost_usd=cost_usd)], once=True)
