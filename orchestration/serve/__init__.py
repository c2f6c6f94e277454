"""``orchestrate serve``: the HTTP entry point (event webhooks, health; the dashboard next).

``create_app(orchestrator)`` is the ASGI application (Starlette, run by uvicorn);
``serve(orchestrator, host, port)`` runs it, refusing to listen beyond loopback without
``ORCH_SERVE_TOKEN`` or ``ORCH_WEBHOOK_SECRET``.
"""

from orchestration.serve.app import create_app
from orchestration.serve.server import check_exposure, serve

__all__ = ["check_exposure", "create_app", "serve"]
