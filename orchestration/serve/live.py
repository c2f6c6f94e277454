"""``GET /runs/{id}/events``: a run's live stream as server-sent events.

Two sources are merged into one response:

- the run's durable stream (``orchestrator.run_stream`` through ``RunHandle.astream``,
  when ``ORCH_STREAM`` is on): each event is sent with its offset as the SSE ``id``, so
  a browser reconnecting with ``Last-Event-ID`` (or a client passing ``?after=``)
  resumes after it, losing and repeating nothing; it ends after ``run_finished``;
- a light poll of the run's step rows (one indexed read a second): a ``snapshot`` event
  (no ``id``) whenever a step's status or attempt count changed. It keeps the page live
  whatever the producers write (a stream turned off, events of steps that emit none) and
  ends the response once the run is finished when the durable stream is off (then with
  a ``run_finished`` of its own, also without ``id``).

Every event is one ``data:`` line of JSON with a ``type`` (the stream's types, see
``orchestration/core/stream_events.py``, plus ``snapshot``); unknown types are opaque.
A comment line every 15 s keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import StreamingResponse

from orchestration.app import Orchestrator
from orchestration.core.results import RunHandle
from orchestration.core.status import RunStatus
from orchestration.core.stream_events import RUN_FINISHED, event
from orchestration.observe.dashboard import run_snapshot

SNAPSHOT = "snapshot"
POLL_S = 1.0
KEEPALIVE_S = 15.0
STREAM_POLL_S = 1.0
END_GRACE_S = 5.0  # the durable stream has this long to close a finished run's stream
_DONE = object()


def sse(data: dict[str, Any], offset: str | None = None) -> str:
    """One server-sent event: ``id:`` (when given) and one ``data:`` line of JSON."""
    head = f"id: {offset}\n" if offset is not None and "\n" not in offset else ""
    return f"{head}data: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


def resume_offset(request: Request) -> str | None:
    """Where to resume: ``Last-Event-ID`` (a reconnecting browser) or ``?after=``."""
    value = request.headers.get("last-event-id") or request.query_params.get("after")
    if not value:
        return None
    if len(value) > 100 or not value.isascii() or not value.isprintable():
        raise HTTPException(400, "Last-Event-ID/after: an offset the stream handed out "
                                 "(at most 100 printable ASCII characters)")
    return value


async def stream_response(orchestrator: Orchestrator, run_id: str,
                          after: str | None) -> StreamingResponse:
    """The SSE response of one run (404 when there is no such run)."""
    first = await run_in_threadpool(run_snapshot, orchestrator, run_id)
    if first is None:
        raise HTTPException(404, f"no run {run_id!r}")
    native = bool(orchestrator.settings.stream)
    return StreamingResponse(
        _events(orchestrator, run_id, after, native), media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _events(orchestrator: Orchestrator, run_id: str, after: str | None,
                  native: bool) -> AsyncIterator[str]:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    tasks = [asyncio.create_task(_poll(orchestrator, run_id, queue, native))]
    if native:
        tasks.append(asyncio.create_task(_pump(orchestrator, run_id, after, queue)))
    yield f"retry: 2000\n: source {'stream+poll' if native else 'poll'}\n\n"
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if item is _DONE:
                return
            text, last = item
            yield text
            if last:
                return
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


async def _pump(orchestrator: Orchestrator, run_id: str, after: str | None,
                queue: asyncio.Queue[Any]) -> None:
    handle = RunHandle(run_id, orchestrator.store, existing=True)
    async for item in handle.astream(after, poll=STREAM_POLL_S):
        await queue.put((sse(item.data, item.offset), item.type == RUN_FINISHED))
    await queue.put(_DONE)


async def _poll(orchestrator: Orchestrator, run_id: str, queue: asyncio.Queue[Any],
                native: bool) -> None:
    seen: tuple[str, dict[str, tuple[str, int]]] | None = None
    finished_at: float | None = None
    while True:
        current = await run_in_threadpool(run_snapshot, orchestrator, run_id)
        if current is None:  # deleted meanwhile (retention)
            await queue.put(_DONE)
            return
        status, steps = current
        if current != seen:
            seen = current
            await queue.put((sse(event(SNAPSHOT, run_id, status=status, steps={
                name: {"status": state, "attempts": attempts}
                for name, (state, attempts) in steps.items()})), False))
        if RunStatus(status).is_terminal:
            if not native:
                await queue.put((sse(event(RUN_FINISHED, run_id, status=status,
                                           derived=True)), True))
                return
            finished_at = finished_at or time.monotonic()
            if time.monotonic() - finished_at > END_GRACE_S:
                await queue.put(_DONE)  # the durable stream never closed: end anyway
                return
        await asyncio.sleep(POLL_S)
