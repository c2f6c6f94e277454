"""The dashboard on the deployed stores: PostgreSQL runs, the run stream on Redis Streams.

The app is the session's default orchestrator served in-process (no worker needed: the
runs are rows written here and events appended to their Redis stream). SSE ids are Redis
stream ids and resume after one; filters compare timestamps on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from orchestration import default_orchestrator
from orchestration.core.clock import utcnow
from orchestration.core.settings import Settings
from orchestration.core.stream_events import RUN_FINISHED, STEP_FINISHED, STEP_STARTED, event
from orchestration.serve.app import create_app
from orchestration.store.models import RunRow
from orchestration.store.repository import PlannedStep
from orchestration.store.run_stream import RedisRunStream

pytestmark = [pytest.mark.redis, pytest.mark.postgres]
TOKEN = "it-dashboard-token-2b7f"
WORKFLOW = f"it_dashboard_{uuid.uuid4().hex[:8]}"


def _get(path: str, **headers: str) -> httpx.Response:
    orchestrator = default_orchestrator()
    settings = Settings(**{**orchestrator.settings.model_dump(), "serve_token": TOKEN})
    app = create_app(orchestrator, settings)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return await c.get(path, headers={"Authorization": f"Bearer {TOKEN}",
                                              **headers})

    return asyncio.run(call())


def _run(status: str, created_ago: timedelta) -> str:
    store = default_orchestrator().store
    run_id = str(uuid.uuid4())
    store.create_run(run_id, WORKFLOW, "v1", {"text": "hi"},
                     [PlannedStep("a", "a", "default", None, True)])
    with store.engine.begin() as conn:
        conn.execute(update(RunRow).where(RunRow.id == run_id).values(
            status=status, created_at=utcnow() - created_ago))
    return run_id


def _ids(text: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line
                      and not line.startswith(":"))
        if "id" in fields:
            found.append((fields["id"], json.loads(fields["data"])))
    return found


def test_the_stream_on_redis_gives_stream_ids_and_resumes_after_one() -> None:
    orchestrator = default_orchestrator()
    assert isinstance(orchestrator.run_stream, RedisRunStream)
    run_id = _run("succeeded", timedelta(0))
    offsets = orchestrator.run_stream.append_many(run_id, [
        event(STEP_STARTED, run_id, step="a", attempt=1),
        event(STEP_FINISHED, run_id, step="a", status="succeeded"),
        event(RUN_FINISHED, run_id, status="succeeded")])
    replay = _ids(_get(f"/runs/{run_id}/events").text)
    assert [(o, e["type"]) for o, e in replay] == list(zip(
        offsets, [STEP_STARTED, STEP_FINISHED, RUN_FINISHED], strict=True))
    assert all("-" in offset for offset in offsets)  # Redis stream ids
    resumed = _ids(_get(f"/runs/{run_id}/events", **{"Last-Event-ID": offsets[0]}).text)
    assert [o for o, _ in resumed] == offsets[1:]


def test_runs_are_filtered_by_time_and_status_on_postgresql() -> None:
    recent = _run("failed", timedelta(minutes=5))
    old = _run("succeeded", timedelta(days=2))
    listed = _get(f"/api/runs?workflow={WORKFLOW}&since=1h").json()["runs"]
    assert recent in [r["run_id"] for r in listed] and old not in [r["run_id"] for r in listed]
    failed = _get(f"/api/runs?workflow={WORKFLOW}&status=failed").json()["runs"]
    assert [r["run_id"] for r in failed] == [recent]
    page = _get(f"/runs/{recent}")
    assert page.status_code == 200 and 'data-status="failed"' in page.text
