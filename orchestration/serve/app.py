"""The ASGI application of ``orchestrate serve``: one Starlette app, routes by module.

:func:`create_app` takes the deployment (an ``Orchestrator``) and its settings and mounts
the route modules: ``health`` and ``webhooks`` (a module with ``routes(context)``), and
the run dashboard: its pages and live stream (``pages``, ``live``) and its JSON API
(``api``, ``openapi``), behind one gate (``session.Access``). Errors are JSON:
``{"error": "..."}`` with the status.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from orchestration.app import Orchestrator
from orchestration.core.settings import Settings
from orchestration.events import ingest as ingest_event
from orchestration.serve import api, health, pages, webhooks
from orchestration.serve.auth import Credentials
from orchestration.serve.context import Ingest, ServeContext
from orchestration.serve.session import Access

ROUTE_MODULES = (health, webhooks)


def create_app(orchestrator: Orchestrator, settings: Settings | None = None, *,
               ingest: Ingest | None = None, dashboard: bool = True) -> Starlette:
    """The served application of ``orchestrator``.

    ``settings`` default to the orchestrator's (the credentials and body limit are read
    from them); ``ingest`` defaults to ``orchestration.events.ingest``; ``dashboard``:
    serve the run dashboard and its API too (it needs ``ORCH_SERVE_TOKEN`` beyond
    loopback, see ``server.check_exposure``).
    """
    chosen = settings or orchestrator.settings
    context = ServeContext(orchestrator=orchestrator, settings=chosen,
                           ingest=ingest or ingest_event,
                           credentials=Credentials.from_settings(chosen))
    routes = [route for module in ROUTE_MODULES for route in module.routes(context)]
    if dashboard:
        access = Access(context.credentials)
        routes += api.routes(context, access) + pages.routes(context, access)
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.context = context
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                        headers=exc.headers)
