"""The dashboard's HTML routes: runs, a run (live), workflows, models, queues, actions.

Each page is authenticated (:mod:`.session`), reads its view (:mod:`.data`) in a thread
and renders it (:mod:`.render`, :mod:`.render_run`); the static stylesheet and script are
served from ``orchestration/serve/static`` (nothing from elsewhere: it works offline).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from orchestration.errors import RunNotFound
from orchestration.observe.dashboard import workflow_names
from orchestration.serve import data, render
from orchestration.serve.actions import ActionRefused, check_action, form_fields, run_action
from orchestration.serve.context import ServeContext
from orchestration.serve.live import resume_offset, stream_response
from orchestration.serve.render_run import live_fragment, run_body
from orchestration.serve.session import (
    Access,
    Principal,
    check_csrf,
    csrf_token,
    secure,
    set_csrf_cookie,
)

STATIC = Path(__file__).parent / "static"


class Pages:
    """The HTML side of the dashboard for one served deployment."""

    def __init__(self, context: ServeContext, access: Access) -> None:
        self.context = context
        self.orchestrator = context.orchestrator
        self.access = access

    async def _page(self, request: Request, title: str, active: str,
                    body: Callable[[str], str], status: int = 200) -> Response:
        principal = self.access.check(request)
        token, new = csrf_token(request)
        html = render.page(title, body(token), active=active,
                           auth_note=render.auth_note(principal.scheme, principal.user))
        response = secure(HTMLResponse(html, status_code=status))
        if new:
            set_csrf_cookie(response, request, token)
        return response

    async def _view(self, request: Request, read: Callable[..., dict[str, Any]],
                    *args: Any, **kwargs: Any) -> dict[str, Any] | Response:
        try:
            return await run_in_threadpool(read, self.orchestrator, *args, **kwargs)
        except data.BadParameter as exc:
            return await self._error(request, 400, str(exc))
        except RunNotFound as exc:
            return await self._error(request, 404, str(exc))

    async def _error(self, request: Request, status: int, message: str,
                     back: str | None = None) -> Response:
        return await self._page(request, f"{status}", "",
                                lambda _: render.error_body(status, message, back), status)

    async def home(self, request: Request) -> Response:
        """``/``: the runs list."""
        self.access.check(request)
        return RedirectResponse("/runs", status_code=303)

    async def runs(self, request: Request) -> Response:
        """The runs list: filters (workflow, status, since/until), newest first, paged."""
        self.access.check(request)
        q = request.query_params
        view = await self._view(request, data.runs_view, workflow=q.get("workflow"),
                                status=q.get("status"), since=q.get("since"),
                                until=q.get("until"), page=q.get("page"))
        if isinstance(view, Response):
            return view
        return await self._page(request, "Runs", "/runs", lambda _: render.runs_body(view))

    async def run(self, request: Request) -> Response:
        """One run: summary, actions, DAG, timeline, steps; live through its events."""
        self.access.check(request)
        view = await self._view(request, data.run_view, request.path_params["run_id"])
        if isinstance(view, Response):
            return view
        return await self._page(request, f"Run {view['run_id']}", "/runs",
                                lambda token: run_body(view, token))

    async def live(self, request: Request) -> Response:
        """The changing part of a run page (what its script swaps in on each event)."""
        self.access.check(request)
        view = await self._view(request, data.run_view, request.path_params["run_id"])
        if isinstance(view, Response):
            return view
        token, _ = csrf_token(request)
        response = secure(HTMLResponse(live_fragment(view, token)))
        response.headers["X-Run-Status"] = view["status"]
        return response

    async def events(self, request: Request) -> Response:
        """``GET /runs/{id}/events``: the run's stream as server-sent events."""
        self.access.check(request)
        return await stream_response(self.orchestrator, request.path_params["run_id"],
                                     resume_offset(request))

    async def workflows(self, request: Request) -> Response:
        """Every workflow known."""
        self.access.check(request)
        names = await run_in_threadpool(workflow_names, self.orchestrator)
        return await self._page(request, "Workflows", "/workflows",
                                lambda _: render.workflows_body(names))

    async def workflow(self, request: Request) -> Response:
        """A workflow's figures over a window (``?since=``, 24h by default)."""
        self.access.check(request)
        name = request.path_params["name"]
        view = await self._view(request, data.workflow_view, name,
                                request.query_params.get("since"))
        if isinstance(view, Response):
            return view
        return await self._page(request, f"Workflow {name}", "/workflows",
                                lambda _: render.workflow_body(view))

    async def models(self, request: Request) -> Response:
        """Breakers per model and their recent failures."""
        self.access.check(request)
        view = await self._view(request, data.breakers_view)
        if isinstance(view, Response):
            return view
        return await self._page(request, "Models", "/models",
                                lambda _: render.models_body(view))

    async def queues(self, request: Request) -> Response:
        """Queue depths from the broker."""
        self.access.check(request)
        view = await self._view(request, data.queues_view)
        if isinstance(view, Response):
            return view
        return await self._page(request, "Queues", "/queues",
                                lambda _: render.queues_body(view))

    async def act(self, request: Request) -> Response:
        """A run page's form: approve, cancel or resume; back to the run page (303)."""
        principal: Principal = self.access.check(request)
        action = check_action(request.path_params["action"])
        run_id = request.path_params["run_id"]
        fields, presented = await form_fields(request, self.context.settings.webhook_max_bytes)
        check_csrf(request, principal, presented)
        back = f"/runs/{run_id}"
        try:
            await run_action(self.orchestrator, request, principal, action, run_id, fields)
        except ActionRefused as exc:
            return await self._error(request, exc.status, str(exc), back)
        return RedirectResponse(back, status_code=303)


def routes(context: ServeContext, access: Access) -> list[BaseRoute]:
    """The dashboard's HTML routes and its static files."""
    pages = Pages(context, access)
    return [
        Route("/", pages.home, methods=["GET"]),
        Route("/runs", pages.runs, methods=["GET"]),
        Route("/runs/{run_id}", pages.run, methods=["GET"]),
        Route("/runs/{run_id}/live", pages.live, methods=["GET"]),
        Route("/runs/{run_id}/events", pages.events, methods=["GET"]),
        Route("/runs/{run_id}/{action}", pages.act, methods=["POST"]),
        Route("/workflows", pages.workflows, methods=["GET"]),
        Route("/workflows/{name:path}", pages.workflow, methods=["GET"]),
        Route("/models", pages.models, methods=["GET"]),
        Route("/queues", pages.queues, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
