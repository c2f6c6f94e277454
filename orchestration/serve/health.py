"""``GET /healthz``: the process answers (for load balancers and ``docker compose``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from orchestration.serve.context import ServeContext


async def healthz(request: Request) -> JSONResponse:
    """200 while the server runs; reads nothing (a liveness probe, not readiness)."""
    return JSONResponse({"status": "ok"})


def routes(context: ServeContext) -> list[BaseRoute]:
    """The health routes."""
    return [Route("/healthz", healthz, methods=["GET"])]
