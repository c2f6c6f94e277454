"""``orchestrate serve``: the HTTP entry point (event webhooks, health)."""

from __future__ import annotations

import click

from orchestration.cli.common import orchestrator_for_cli
from orchestration.errors import ConfigurationError
from orchestration.serve.server import check_exposure
from orchestration.serve.server import serve as run_server


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; beyond loopback, authentication is required")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
def serve(host: str, port: int) -> None:
    """Serve POST /events/<name> (webhooks that start triggered runs) and GET /healthz.

    Requests authenticate with ORCH_SERVE_TOKEN (Authorization: Bearer <token>) or an
    HMAC-SHA256 signature of the body under ORCH_WEBHOOK_SECRET
    (X-Orchestrate-Signature or X-Hub-Signature-256: sha256=<hex>). Without either, only
    a loopback address is accepted.
    """
    orchestrator = orchestrator_for_cli()
    try:
        check_exposure(host, orchestrator.settings)  # before importing any workflow
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc
    orchestrator = orchestrator_for_cli(load_workflows=True)
    run_server(orchestrator, host, port)
