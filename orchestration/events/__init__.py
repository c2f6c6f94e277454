"""Events: recorded when received (emit, webhook, stream, schedule); triggers start runs.

Floor: beside ``worker``; imports ``submit`` and below, never ``app`` or ``worker``.
"""

from orchestration.events.ingest import Event, ingest, new_event_id, reject, run_key
from orchestration.events.outcomes import EventOutcome, Outcome

__all__ = [
    "Event",
    "EventOutcome",
    "Outcome",
    "ingest",
    "new_event_id",
    "reject",
    "run_key",
]
