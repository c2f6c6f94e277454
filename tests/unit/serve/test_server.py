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
def test_beyond_loopback_with_either_credential_is_allowed(credential: str) -> None:
    settings = Settings(deployment="", **{credential: "c"})
    assert check_exposure("0.0.0.0", settings) is True


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
