"""Events: recorded when received (emit, webhook, stream, schedule); triggers start runs.

Floor: beside ``worker``; imports ``submit`` and below, never ``app`` or ``worker``.
"""

from orchestration.events.ingest import (
    Event,
    check_event,
    ingest,
    new_event_id,
    record,
    reject,
    run_key,
    start,
)
from orchestration.events.outcomes import EventOutcome, Outcome

__all__ = [
    "Event",
    "EventOutcome",
    "Outcome",
    "check_event",
    "ingest",
    "new_event_id",
    "record",
    "reject",
    "run_key",
    "start",
]
