"""A served app with a recording ingest: what the unit tests of ``orchestration.serve`` use."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from orchestration.app import Orchestrator
from orchestration.core.settings import Settings
from orchestration.events import EventOutcome, Outcome
from orchestration.serve.app import create_app

TOKEN = "t0ken-for-tests"
SECRET = "s3cret-for-tests"


@dataclass
class RecordingIngest:
    """Stands in for ``orchestration.events.ingest``: records each call, starts nothing."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, host: Any, name: str, payload: Any, *, event_id: str | None = None,
                 source: str = "emit") -> list[EventOutcome]:
        self.calls.append({"name": name, "payload": payload, "event_id": event_id,
                           "source": source})
        return [EventOutcome("on_it", Outcome.STARTED, "run-1", event_id=event_id)]


def served(tmp_path: Path, **settings: Any) -> tuple[Starlette, RecordingIngest]:
    """An app over a throw-away orchestrator, with the given ``Settings`` fields."""
    chosen = Settings(database_url=f"sqlite:///{tmp_path / 'serve.db'}", deployment="",
                      imports=[], **settings)
    ingest = RecordingIngest()
    return create_app(Orchestrator(chosen), chosen, ingest=ingest), ingest


class Client:
    """A synchronous client of an ASGI app in this process (httpx's ASGI transport)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, answered by the app without a server."""
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                return await c.request(method, path, **kwargs)

        return asyncio.run(call())

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST ``path``."""
        return self.request("POST", path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET ``path``."""
        return self.request("GET", path, **kwargs)
