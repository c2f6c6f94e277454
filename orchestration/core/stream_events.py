"""Events of a run's live stream: JSON dicts with a ``type``, and typed helpers.

Every event has ``type``, ``run_id`` and ``at`` (ISO time, UTC); step events also
``step`` (and ``attempt`` where it applies). The types (docs/live.md):

- ``step_started`` {step, attempt, worker, queue, model}
- ``step_finished`` {step, status, latency_ms, cost_usd, output_summary, error}
- ``partial_output`` {step, value}
- ``token`` {step, attempt, index, text}
- ``tokens_superseded`` {step, attempt}: that attempt was retried, its tokens are void
- ``waiting_for_input`` {step, name}
- ``run_finished`` {status, error, cost_usd}: always the last event of a run's stream

Consumers treat unknown types as opaque (forward compatible). A stream is read as
``(offset, event)`` pairs; the offset is a string the stream hands out (a Redis stream
id, or a row id) and is passed back as ``after`` to resume after it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from orchestration.core.clock import utcnow

STEP_STARTED = "step_started"
STEP_FINISHED = "step_finished"
PARTIAL_OUTPUT = "partial_output"
TOKEN = "token"
TOKENS_SUPERSEDED = "tokens_superseded"
WAITING_FOR_INPUT = "waiting_for_input"
RUN_FINISHED = "run_finished"
EVENT_TYPES = frozenset({STEP_STARTED, STEP_FINISHED, PARTIAL_OUTPUT, TOKEN,
                         TOKENS_SUPERSEDED, WAITING_FOR_INPUT, RUN_FINISHED})
SUMMARY_CHARS = 200  # step_finished's output_summary is cut to this many characters


@dataclass(frozen=True)
class StreamEvent:
    """One event read from a run's stream: its offset, type and fields (``data``)."""

    offset: str
    type: str
    data: dict[str, Any]

    @property
    def step(self) -> str | None:
        """The step the event is about (None for run events)."""
        step = self.data.get("step")
        return step if isinstance(step, str) else None

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        """A field of the event, or ``default``."""
        return self.data.get(key, default)


class EventSource(Protocol):
    """What a reader needs of a run stream (the store floor's ``RunStream``)."""

    def read(self, run_id: str, after: str | None = None, *,
             block: float = 0) -> list[tuple[str, dict[str, Any]]]:
        """Events after ``after`` (all from the start when None), waiting up to ``block`` s."""


def event(event_type: str, run_id: str, **fields: Any) -> dict[str, Any]:
    """An event dict: ``type``, ``run_id``, ``at`` and the given fields."""
    return {"type": event_type, "run_id": run_id, "at": utcnow().isoformat(), **fields}


def summary(value: Any, limit: int = SUMMARY_CHARS) -> str | None:
    """A short text of an output for ``step_finished`` (JSON, cut to ``limit`` chars)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str,
                                                           separators=(",", ":"))
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def as_event(offset: str, data: dict[str, Any]) -> StreamEvent:
    """A stored event as a :class:`StreamEvent` (an event without a type is ``unknown``)."""
    kind = data.get("type")
    return StreamEvent(offset, kind if isinstance(kind, str) else "unknown", data)
