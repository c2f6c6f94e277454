"""The dashboard's JSON API: the same views as the pages, and the same actions.

``GET /api/runs`` (``workflow``, ``status``, ``since``, ``until``, ``page``),
``GET /api/runs/{id}``, ``GET /api/workflows``, ``GET /api/workflows/{name}`` (``since``),
``GET /api/breakers``, ``GET /api/queues``, ``POST /api/runs/{id}/{approve|cancel|resume}``
(JSON body), the run's stream at ``GET /runs/{id}/events``; the schema at
``GET /openapi.json`` (:mod:`.openapi`). Authenticated like the pages; a bearer token
needs no CSRF token, basic auth or an open loopback server does (``X-CSRF-Token``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from orchestration.errors import RunNotFound
from orchestration.observe.dashboard import workflow_names
from orchestration.serve import data
from orchestration.serve.actions import ActionRefused, check_action, json_fields, run_action
from orchestration.serve.context import ServeContext
from orchestration.serve.openapi import openapi_schema
from orchestration.serve.session import Access, check_csrf, secure


class Api:
    """The JSON side of the dashboard for one served deployment."""

    def __init__(self, context: ServeContext, access: Access) -> None:
        self.context = context
        self.orchestrator = context.orchestrator
        self.access = access

    async def _json(self, request: Request, read: Callable[..., Any], *args: Any,
                    **kwargs: Any) -> Response:
        self.access.check(request)
        try:
            value = await run_in_threadpool(read, self.orchestrator, *args, **kwargs)
        except data.BadParameter as exc:
            raise HTTPException(400, str(exc)) from None
        except RunNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        return secure(JSONResponse(value))

    async def runs(self, request: Request) -> Response:
        """A page of runs."""
        q = request.query_params
        return await self._json(request, data.runs_view, workflow=q.get("workflow"),
                                status=q.get("status"), since=q.get("since"),
                                until=q.get("until"), page=q.get("page"))

    async def run(self, request: Request) -> Response:
        """One run with its graph, steps and attempts."""
        return await self._json(request, data.run_view, request.path_params["run_id"])

    async def workflows(self, request: Request) -> Response:
        """Workflow names."""
        return await self._json(request, lambda host: {"workflows": workflow_names(host)})

    async def workflow(self, request: Request) -> Response:
        """A workflow's figures."""
        return await self._json(request, data.workflow_view, request.path_params["name"],
                                request.query_params.get("since"))

    async def breakers(self, request: Request) -> Response:
        """Breakers per model."""
        return await self._json(request, data.breakers_view)

    async def queues(self, request: Request) -> Response:
        """Queue depths."""
        return await self._json(request, data.queues_view)

    async def act(self, request: Request) -> Response:
        """Approve, cancel or resume a run; 200 with what was done, 404/409 otherwise."""
        principal = self.access.check(request)
        action = check_action(request.path_params["action"])
        fields, _ = await json_fields(request, self.context.settings.webhook_max_bytes)
        check_csrf(request, principal, None)
        run_id = request.path_params["run_id"]
        try:
            result = await run_action(self.orchestrator, request, principal, action, run_id,
                                      fields)
        except ActionRefused as exc:
            raise HTTPException(exc.status, str(exc)) from None
        return secure(JSONResponse({"action": action, "run_id": run_id, "result": result}))

    async def schema(self, request: Request) -> Response:
        """The OpenAPI document of the API (and of the event webhooks)."""
        self.access.check(request)
        return secure(JSONResponse(openapi_schema()))


def routes(context: ServeContext, access: Access) -> list[BaseRoute]:
    """The JSON API's routes."""
    api = Api(context, access)
    return [
        Route("/api/runs", api.runs, methods=["GET"]),
        Route("/api/runs/{run_id}", api.run, methods=["GET"]),
        Route("/api/runs/{run_id}/{action}", api.act, methods=["POST"]),
        Route("/api/workflows", api.workflows, methods=["GET"]),
        Route("/api/workflows/{name:path}", api.workflow, methods=["GET"]),
        Route("/api/breakers", api.breakers, methods=["GET"]),
        Route("/api/queues", api.queues, methods=["GET"]),
        Route("/openapi.json", api.schema, methods=["GET"]),
    ]
