"""The Procfile and docker-compose.yml run the webhook server and the schedules' beat."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from orchestration.core.settings import Settings
from orchestration.serve.server import check_exposure

ROOT = Path(__file__).resolve().parents[3]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_the_procfile_runs_serve_on_loopback_and_the_beat() -> None:
    lines = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines()
                 if line.strip())
    assert lines["serve"].strip().startswith("orchestrate serve --host 127.0.0.1")
    assert lines["schedules"].strip() == "orchestrate beat"


def test_compose_serves_with_the_secret_from_the_environment_never_a_literal() -> None:
    services = _compose()["services"]
    serve = services["serve"]
    assert serve["command"].startswith("orchestrate serve --host 0.0.0.0")
    secret = serve["environment"]["ORCH_WEBHOOK_SECRET"]
    assert re.fullmatch(r"\$\{ORCH_WEBHOOK_SECRET:\?[^}]+\}", secret), secret
    # The dashboard it serves beyond loopback needs the token: compose requires it too.
    token = serve["environment"]["ORCH_SERVE_TOKEN"]
    assert re.fullmatch(r"\$\{ORCH_SERVE_TOKEN:\?[^}]+\}", token), token
    assert "--no-dashboard" not in serve["command"]
    check_exposure("0.0.0.0", Settings(deployment="", serve_token="t", webhook_secret="s"))
    assert services["schedules"]["command"] == "orchestrate beat"
    for name, service in services.items():
        environment = service.get("environment") or {}
        for variable in ("ORCH_SERVE_TOKEN", "ORCH_WEBHOOK_SECRET"):
            value = environment.get(variable)
            assert value is None or str(value).startswith(f"${{{variable}"), (name, variable)
