"""What became of an event, per trigger: the outcome kinds and the value ``ingest`` returns."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """What an event did, as recorded in the events table's ``outcome`` column."""

    STARTED = "started"      # a trigger started run ``run_id``
    DUPLICATE = "duplicate"  # its dedupe key had already started run ``run_id``
    UNMATCHED = "unmatched"  # no trigger listens to it (or every filter refused it)
    REJECTED = "rejected"    # its payload or id could not start a run; ``reason`` says why
    SKIPPED = "skipped"      # a schedule's tick skipped by its overlap policy
    QUEUED = "queued"        # a schedule's tick waiting for its previous run (overlap=queue)


@dataclass(frozen=True)
class EventOutcome:
    """What one event did for one trigger (``trigger`` is None when none matched).

    ``run_id`` names the run started (``started``) or the run its dedupe key had already
    started (``duplicate``); ``reason`` says why for ``rejected``, ``unmatched`` and
    ``skipped``; ``event_id`` is the event's id (generated when none was given).
    """

    trigger: str | None
    outcome: Outcome
    run_id: str | None = None
    reason: str | None = None
    event_id: str | None = None

    @property
    def started(self) -> bool:
        """True when this outcome started a new run."""
        return self.outcome is Outcome.STARTED
