"""Running the served application with uvicorn, refusing to expose it unauthenticated.

Beyond loopback, ``orchestrate serve`` needs ``ORCH_SERVE_TOKEN`` (the dashboard and its
API are only reachable with it; ``ORCH_WEBHOOK_SECRET`` alone is enough for the webhooks
served with ``--no-dashboard``): anyone who can reach the port could otherwise read runs,
approve or cancel them, or start new ones. On loopback without either, everything is
accepted unauthenticated (a warning says so, and so does every dashboard page).
"""

from __future__ import annotations

import sys
from typing import Any

import structlog
import uvicorn

from orchestration.app import Orchestrator
from orchestration.core.settings import Settings
from orchestration.errors import ConfigurationError
from orchestration.observe.exporter import is_loopback
from orchestration.serve.app import create_app
from orchestration.serve.auth import Credentials

log = structlog.get_logger("orchestration.serve")


def check_exposure(host: str, settings: Settings, *, dashboard: bool = True) -> bool:
    """Refuse (``ConfigurationError``) to listen beyond loopback without authentication.

    With the dashboard, beyond loopback needs ``ORCH_SERVE_TOKEN`` (a webhook secret
    cannot authenticate a browser). Returns True when requests must authenticate.
    """
    credentials = Credentials.from_settings(settings)
    authenticated = credentials.configured
    if is_loopback(host):
        return authenticated
    if not authenticated:
        raise ConfigurationError(
            f"refusing to serve on {host} without authentication: anyone reaching the port "
            "could read, approve, cancel or start runs. Set ORCH_SERVE_TOKEN (bearer token "
            "or basic-auth password) and/or ORCH_WEBHOOK_SECRET (HMAC signatures), or "
            "listen on 127.0.0.1")
    if dashboard and credentials.token is None:
        raise ConfigurationError(
            f"refusing to serve the dashboard on {host} without ORCH_SERVE_TOKEN: "
            "ORCH_WEBHOOK_SECRET signs webhooks but cannot authenticate a browser. Set "
            "ORCH_SERVE_TOKEN, pass --no-dashboard to serve only the webhooks, or listen "
            "on 127.0.0.1")
    return authenticated


def serve(orchestrator: Orchestrator, host: str, port: int, *, dashboard: bool = True) -> None:
    """Serve ``orchestrator``'s webhooks, health and (unless ``dashboard`` is False) the
    run dashboard on ``host:port`` until stopped."""
    settings = orchestrator.settings
    authenticated = check_exposure(host, settings, dashboard=dashboard)
    if not authenticated:
        log.warning("serving without authentication (loopback only): set ORCH_SERVE_TOKEN "
                    "or ORCH_WEBHOOK_SECRET before exposing it", host=host, port=port)
    # Open event streams (the dashboard's) would hold a graceful shutdown forever.
    config = uvicorn.Config(create_app(orchestrator, settings, dashboard=dashboard),
                            host=host, port=port, log_config=_log_config(settings),
                            server_header=False, proxy_headers=False,
                            timeout_graceful_shutdown=3)
    log.info("serving", host=host, port=port, authenticated=authenticated,
             dashboard=dashboard, max_body_bytes=settings.webhook_max_bytes)
    uvicorn.Server(config).run()


def _log_config(settings: Settings) -> dict[str, Any]:
    """Uvicorn's own lines (start-up, access) in the engine's format; no headers logged."""
    config: dict[str, Any] = dict(uvicorn.config.LOGGING_CONFIG)
    as_json = settings.log_json if settings.log_json is not None else not sys.stderr.isatty()
    if as_json:
        formatter = {"()": "orchestration.core.logs.JsonFormatter"}
        config["formatters"] = {"default": formatter, "access": formatter}
    level = settings.log_level
    config["loggers"] = {name: {**logger, "level": level}
                         for name, logger in config["loggers"].items()}
    return config
