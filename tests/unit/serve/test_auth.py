"""Who may post events: bearer token and HMAC signatures, judged in constant time."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestration.core.settings import Settings
from orchestration.serve.auth import Credentials, Verdict, sign
from tests.unit.serve.support import SECRET, TOKEN, Client, served

BODY = b'{"ticket": {"id": 7}}'


def _hub(body: bytes, secret: str = SECRET) -> str:
    # As a sender computes it, independently of orchestration.serve.auth.sign.
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def client(tmp_path: Path) -> Client:
    app, _ = served(tmp_path, serve_token=TOKEN, webhook_secret=SECRET)
    return Client(app)


def test_sign_is_the_hex_hmac_sha256_of_the_body() -> None:
    assert sign(SECRET.encode(), BODY) == _hub(BODY)


@pytest.mark.parametrize("header", ["X-Orchestrate-Signature", "X-Hub-Signature-256"])
def test_a_good_signature_in_either_header_is_accepted(client: Client, header: str) -> None:
    response = client.post("/events/ticket.created", content=BODY, headers={header: _hub(BODY)})
    assert response.status_code == 202, response.text


def test_a_signature_under_another_secret_is_401(client: Client) -> None:
    response = client.post("/events/ticket.created", content=BODY,
                           headers={"X-Orchestrate-Signature": _hub(BODY, "other")})
    assert response.status_code == 401
    assert "signature" in response.json()["error"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_signature_of_another_body_is_401(client: Client) -> None:
    response = client.post("/events/ticket.created", content=BODY,
                           headers={"X-Orchestrate-Signature": _hub(BODY + b" ")})
    assert response.status_code == 401


def test_a_signature_without_its_prefix_is_401(client: Client) -> None:
    bare = _hub(BODY).removeprefix("sha256=")
    response = client.post("/events/ticket.created", content=BODY,
                           headers={"X-Orchestrate-Signature": bare})
    assert response.status_code == 401


def test_the_bearer_token_is_accepted_and_another_is_401(client: Client) -> None:
    good = client.post("/events/ticket.created", content=BODY,
                       headers={"Authorization": f"Bearer {TOKEN}"})
    bad = client.post("/events/ticket.created", content=BODY,
                      headers={"Authorization": f"Bearer {TOKEN}x"})
    assert good.status_code == 202, good.text
    assert bad.status_code == 401
    assert TOKEN not in bad.text


def test_no_credentials_is_401_when_auth_is_configured(client: Client) -> None:
    response = client.post("/events/ticket.created", content=BODY)
    assert response.status_code == 401
    assert "no credentials" in response.json()["error"]


def test_rejected_requests_reach_no_ingest(tmp_path: Path) -> None:
    app, ingest = served(tmp_path, serve_token=TOKEN, webhook_secret=SECRET)
    client = Client(app)
    client.post("/events/a", content=BODY, headers={"Authorization": "Bearer nope"})
    client.post("/events/a", content=BODY, headers={"X-Hub-Signature-256": "sha256=00"})
    client.post("/events/a", content=BODY)
    assert ingest.calls == []


def test_a_token_alone_does_not_accept_signatures(tmp_path: Path) -> None:
    app, _ = served(tmp_path, serve_token=TOKEN)
    response = Client(app).post("/events/a", content=BODY,
                                    headers={"X-Hub-Signature-256": _hub(BODY)})
    assert response.status_code == 401


def test_without_credentials_configured_every_request_is_allowed(tmp_path: Path) -> None:
    # Only on loopback: `orchestrate serve` refuses anything else (test_server.py).
    assert Credentials().check_headers({}) is Verdict.ALLOWED
    app, ingest = served(tmp_path)
    assert Client(app).post("/events/a", content=BODY).status_code == 202
    assert len(ingest.calls) == 1


@pytest.mark.parametrize("variable", ["ORCH_SERVE_TOKEN", "ORCH_WEBHOOK_SECRET"])
@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_credential_is_a_configuration_error(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=f"{variable} is set but empty"):
        Settings(deployment="")


def test_credentials_never_show_in_settings_or_credentials_repr() -> None:
    settings = Settings(deployment="", serve_token=TOKEN, webhook_secret=SECRET)
    shown = repr(settings) + str(settings) + repr(Credentials.from_settings(settings))
    assert TOKEN not in shown and SECRET not in shown
