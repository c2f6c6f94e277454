"""Runs written straight into a served app's results DB, and a client with a chosen host.

What the dashboard's unit tests use: no worker runs; each run is the rows a worker would
have written (``Store.create_run`` then updates), so every status and text is under the
test's control (markup included).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import update
from starlette.applications import Starlette

from orchestration.app import Orchestrator
from orchestration.core.clock import utcnow
from orchestration.core.settings import Settings
from orchestration.serve.app import create_app
from orchestration.store.models import RunRow, StepRow
from orchestration.store.repository import AttemptRecord, PlannedStep

TOKEN = "dash-t0ken-for-tests"


def dashboard(tmp_path: Path, **settings: Any) -> tuple[Starlette, Orchestrator]:
    """The served app over a throw-away SQLite DB (no worker, no workflow imported), on
    the embedded broker whatever ``ORCH_*`` the session set (an integration run's Redis)."""
    values: dict[str, Any] = {"database_url": f"sqlite:///{tmp_path / 'dash.db'}",
                              "deployment": "", "imports": [], "broker_url": "memory://",
                              "result_backend": None, "redis_url": None}
    chosen = Settings(**{**values, **settings})
    orchestrator = Orchestrator(chosen)
    return create_app(orchestrator, chosen), orchestrator


def write_run(orchestrator: Orchestrator, workflow: str, *, status: str = "succeeded",
              steps: dict[str, str] | None = None, error: str | None = None,
              output: Any = None, created: datetime | None = None) -> str:
    """A run with the given step statuses (each step one attempt); its id."""
    store = orchestrator.store
    run_id = str(uuid.uuid4())
    planned = steps or {"only": "succeeded"}
    store.create_run(run_id, workflow, "v1", {"text": "hello"},
                     [PlannedStep(name, f"{name}_out", "default", None, True)
                      for name in planned])
    now = created or utcnow()
    with store.engine.begin() as conn:
        for index, (name, state) in enumerate(planned.items()):
            if state == "pending":
                continue
            conn.execute(update(StepRow).where(StepRow.run_id == run_id,
                                               StepRow.name == name).values(
                status=state, output=output, error=error if state == "failed" else None,
                attempts=1, started_at=now + timedelta(milliseconds=10 * index),
                finished_at=now + timedelta(milliseconds=10 * index + 5), latency_ms=5.0))
        conn.execute(update(RunRow).where(RunRow.id == run_id).values(
            status=status, error=error, created_at=now,
            finished_at=now + timedelta(seconds=1) if status in (
                "succeeded", "failed", "cancelled") else None))
    for index, (name, state) in enumerate(planned.items()):
        if state in ("succeeded", "failed"):
            started = now + timedelta(milliseconds=10 * index)
            store.record_attempts(run_id, name, [AttemptRecord(
                1, state, started, started + timedelta(milliseconds=5),
                error=error if state == "failed" else None)])
    return run_id


class Client:
    """Requests to an ASGI app in this process, addressed to ``host``."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1") -> None:
        self.app = app
        self.base = f"http://{host}"

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, answered by the app without a server."""
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=self.base) as c:
                return await c.request(method, path, **kwargs)

        return asyncio.run(call())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET ``path``."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST ``path``."""
        return self.request("POST", path, **kwargs)


def bearer(token: str = TOKEN) -> dict[str, str]:
    """The bearer header."""
    return {"Authorization": f"Bearer {token}"}


def basic(password: str = TOKEN, user: str = "ops") -> tuple[str, str]:
    """Basic auth as httpx takes it."""
    return (user, password)
