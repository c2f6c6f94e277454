"""``orchestrate serve``: the HTTP entry point (event webhooks, health, run dashboard)."""

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
@click.option("--no-dashboard", "no_dashboard", is_flag=True,
              help="serve only the webhooks and health (no run dashboard, no JSON API)")
def serve(host: str, port: int, no_dashboard: bool) -> None:
    """Serve the run dashboard (/runs, its JSON API under /api, /openapi.json), POST
    /events/<name> (webhooks that start triggered runs) and GET /healthz.

    Requests authenticate with ORCH_SERVE_TOKEN (Authorization: Bearer <token>, or as the
    basic-auth password in a browser) or, for webhooks, an HMAC-SHA256 signature of the
    body under ORCH_WEBHOOK_SECRET (X-Orchestrate-Signature or X-Hub-Signature-256:
    sha256=<hex>). Beyond loopback the dashboard needs ORCH_SERVE_TOKEN; without any
    credential only a loopback address is accepted.
    """
    orchestrator = orchestrator_for_cli()
    dashboard = not no_dashboard
    try:  # before importing any workflow
        check_exposure(host, orchestrator.settings, dashboard=dashboard)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc
    orchestrator = orchestrator_for_cli(load_workflows=True)
    if dashboard:
        run_server(orchestrator, host, port)
    else:
        run_server(orchestrator, host, port, dashboard=False)
