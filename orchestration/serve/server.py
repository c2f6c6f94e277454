"""Running the served application with uvicorn, refusing to expose it unauthenticated.

Beyond loopback, ``orchestrate serve`` needs ``ORCH_SERVE_TOKEN`` or
``ORCH_WEBHOOK_SECRET``: anyone who can reach the port could otherwise start runs. On
loopback without either, events are accepted unauthenticated (a warning says so).
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


def check_exposure(host: str, settings: Settings) -> bool:
    """Refuse (``ConfigurationError``) to listen beyond loopback without authentication.

    Returns True when requests must authenticate.
    """
    authenticated = Credentials.from_settings(settings).configured
    if not authenticated and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve on {host} without authentication: anyone reaching the port "
            "could start runs. Set ORCH_SERVE_TOKEN (bearer token) and/or "
            "ORCH_WEBHOOK_SECRET (HMAC signatures), or listen on 127.0.0.1")
    return authenticated


def serve(orchestrator: Orchestrator, host: str, port: int) -> None:
    """Serve ``orchestrator``'s webhooks (and health) on ``host:port`` until stopped."""
    settings = orchestrator.settings
    authenticated = check_exposure(host, settings)
    if not authenticated:
        log.warning("serving without authentication (loopback only): set ORCH_SERVE_TOKEN "
                    "or ORCH_WEBHOOK_SECRET before exposing it", host=host, port=port)
    config = uvicorn.Config(create_app(orchestrator, settings), host=host, port=port,
                            log_config=_log_config(settings), server_header=False,
                            proxy_headers=False)
    log.info("serving", host=host, port=port, authenticated=authenticated,
             max_body_bytes=settings.webhook_max_bytes)
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
