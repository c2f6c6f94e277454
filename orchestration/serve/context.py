"""What every route of ``orchestrate serve`` is given: the deployment, settings, ingest.

Routes live in their own modules (``webhooks``, ``health``; the dashboard and the run
stream join them) and each builds its routes from one :class:`ServeContext`, so a test
can hand the app another ingest function or other settings without a server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from orchestration.app import Orchestrator
from orchestration.core.settings import Settings
from orchestration.events import EventOutcome
from orchestration.serve.auth import Credentials


class Ingest(Protocol):
    """Record an event and start the runs of its triggers (``orchestration.events.ingest``)."""

    def __call__(self, host: Any, name: str, payload: Any, *, event_id: str | None = None,
                 source: str = "emit") -> Sequence[EventOutcome]:
        """The outcome for each trigger (one ``unmatched`` when none listens)."""


@dataclass(frozen=True)
class ServeContext:
    """The deployment and settings the routes serve, and how events are ingested."""

    orchestrator: Orchestrator
    settings: Settings
    ingest: Ingest
    credentials: Credentials
