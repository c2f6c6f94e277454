"""``orchestrate serve`` refuses to listen beyond loopback without authentication."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from orchestration.cli import main
from orchestration.cli import serve as cli_serve
from orchestration.core.settings import Settings
from orchestration.errors import ConfigurationError
from orchestration.serve.server import check_exposure


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org"])
def test_beyond_loopback_without_auth_is_refused(host: str) -> None:
    with pytest.raises(ConfigurationError, match=f"refusing to serve on {host} without "
                                                 "authentication.*ORCH_SERVE_TOKEN"):
        check_exposure(host, Settings(deployment=""))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_without_auth_is_allowed_unauthenticated(host: str) -> None:
    assert check_exposure(host, Settings(deployment="")) is False


@pytest.mark.parametrize("credential", ["serve_token", "webhook_secret"])
def test_beyond_loopback_either_credential_is_enough_for_the_webhooks(credential: str) -> None:
    settings = Settings(deployment="", **{credential: "c"})
    assert check_exposure("0.0.0.0", settings, dashboard=False) is True


def test_beyond_loopback_the_dashboard_needs_the_token() -> None:
    assert check_exposure("0.0.0.0", Settings(deployment="", serve_token="c")) is True
    with pytest.raises(ConfigurationError, match=r"refusing to serve the dashboard on 0\.0\.0\.0 "
                                                 r"without ORCH_SERVE_TOKEN.*--no-dashboard"):
        check_exposure("0.0.0.0", Settings(deployment="", webhook_secret="c"))


def test_the_command_refuses_0_0_0_0_with_a_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("ORCH_SERVE_TOKEN", "ORCH_WEBHOOK_SECRET"):
        monkeypatch.delenv(variable, raising=False)
    served: list[tuple[str, int]] = []
    monkeypatch.setattr(cli_serve, "run_server",
                        lambda orchestrator, host, port: served.append((host, port)))
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", "8080"])
    assert result.exit_code != 0
    assert "refusing to serve on 0.0.0.0 without authentication" in result.output
    assert served == []


def test_the_command_refuses_the_dashboard_with_only_a_webhook_secret(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCH_SERVE_TOKEN", raising=False)
    monkeypatch.setenv("ORCH_WEBHOOK_SECRET", "a-secret-of-the-senders")
    served: list[tuple[str, int, bool]] = []
    monkeypatch.setattr(cli_serve, "run_server",
                        lambda orchestrator, host, port, dashboard=True:
                        served.append((host, port, dashboard)))
    monkeypatch.setattr(cli_serve, "orchestrator_for_cli", lambda **_: _Stub())
    refused = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0"])
    assert refused.exit_code != 0
    assert "without ORCH_SERVE_TOKEN" in refused.output
    assert "a-secret-of-the-senders" not in refused.output
    webhooks_only = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--no-dashboard"])
    assert webhooks_only.exit_code == 0, webhooks_only.output
    assert served == [("0.0.0.0", 8080, False)]


class _Stub:
    """An orchestrator as far as the command looks at it: its settings."""

    @property
    def settings(self) -> Settings:
        return Settings(deployment="")
