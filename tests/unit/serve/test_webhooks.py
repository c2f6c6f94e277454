"""POST /events/{name}: body limit while reading, JSON, ids, and what ingest is given."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from orchestration.app import Orchestrator
from orchestration.core.settings import Settings
from orchestration.errors import InvalidInput, SubmitFailed
from orchestration.serve.app import create_app
from tests.unit.serve.support import TOKEN, Client, served

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_a_good_delivery_is_202_with_the_outcomes_and_ingested_as_a_webhook(
        tmp_path: Path) -> None:
    app, ingest = served(tmp_path, serve_token=TOKEN)
    response = Client(app).post("/events/zendesk.ticket.created",
                                    json={"ticket": {"description": "login"}},
                                    headers={**AUTH, "X-Event-Id": "zd-1842"})
    assert response.status_code == 202, response.text
    assert response.json() == {
        "event": "zendesk.ticket.created", "event_id": "zd-1842",
        "outcomes": [{"trigger": "on_it", "outcome": "started", "run_id": "run-1"}]}
    assert ingest.calls == [{"name": "zendesk.ticket.created", "source": "webhook",
                             "payload": {"ticket": {"description": "login"}},
                             "event_id": "zd-1842"}]


def test_the_event_id_comes_from_idempotency_key_or_is_generated(tmp_path: Path) -> None:
    app, ingest = served(tmp_path, serve_token=TOKEN)
    client = Client(app)
    client.post("/events/a", json={}, headers={**AUTH, "Idempotency-Key": "k-1"})
    first = client.post("/events/a", json={}, headers=AUTH).json()["event_id"]
    second = client.post("/events/a", json={}, headers=AUTH).json()["event_id"]
    assert ingest.calls[0]["event_id"] == "k-1"
    assert first and second and first != second


def test_a_bad_event_id_or_name_is_400_naming_it(tmp_path: Path) -> None:
    app, ingest = served(tmp_path, serve_token=TOKEN)
    client = Client(app)
    long_id = client.post("/events/a", json={}, headers={**AUTH, "X-Event-Id": "x" * 201})
    bad_name = client.post("/events/a%20b", json={}, headers=AUTH)
    assert long_id.status_code == 400 and "x-event-id" in long_id.json()["error"]
    assert bad_name.status_code == 400 and "event name" in bad_name.json()["error"]
    assert ingest.calls == []


def test_a_body_that_is_not_json_is_400_with_the_reason(tmp_path: Path) -> None:
    app, ingest = served(tmp_path, serve_token=TOKEN)
    client = Client(app)
    answers = [client.post("/events/a", content=body, headers=AUTH)
               for body in (b"{not json", b"", b"\xff\xfe", b'{"x": NaN}')]
    assert [a.status_code for a in answers] == [400, 400, 400, 400]
    errors = [a.json()["error"] for a in answers]
    assert "not JSON" in errors[0] and "line 1 column 2" in errors[0]
    assert "empty" in errors[1]
    assert "UTF-8" in errors[2]
    assert "NaN is not a JSON number" in errors[3]
    assert ingest.calls == []


def test_a_declared_length_over_the_limit_is_413_before_reading(tmp_path: Path) -> None:
    app, ingest = served(tmp_path, serve_token=TOKEN, webhook_max_bytes=100)
    response = Client(app).post("/events/a", content=b'{"a": "' + b"x" * 200 + b'"}',
                                    headers=AUTH)
    assert response.status_code == 413
    assert "limit is 100 bytes" in response.json()["error"]
    assert ingest.calls == []


def test_a_chunked_body_is_cut_off_as_soon_as_it_passes_the_limit(tmp_path: Path) -> None:
    """No Content-Length: the app stops reading at the limit, not at the end of the body."""
    app, ingest = served(tmp_path, serve_token=TOKEN, webhook_max_bytes=1000)
    chunks = [b"x" * 300] * 100  # 30 kB offered, 300 bytes at a time
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        more = pulled < len(chunks)
        return {"type": "http.request", "body": chunks[pulled - 1], "more_body": more}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/events/a", "raw_path": b"/events/a",
             "root_path": "", "scheme": "http", "query_string": b"", "http_version": "1.1",
             "headers": [(b"authorization", f"Bearer {TOKEN}".encode()),
                         (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8080)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert pulled == 4  # 4 x 300 > 1000: stopped there
    assert "limit is 1000 bytes" in json.loads(sent[1]["body"])["error"]
    assert ingest.calls == []


def test_healthz(tmp_path: Path) -> None:
    app, _ = served(tmp_path, serve_token=TOKEN)
    response = Client(app).get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def _failing(error: Exception) -> Any:
    def ingest(host: Any, name: str, payload: Any, **_: Any) -> Any:
        raise error
    return ingest


def test_a_broker_that_refuses_the_run_is_503_and_a_refused_event_400(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 's.db'}", deployment="",
                        imports=[], serve_token=TOKEN)
    orchestrator = Orchestrator(settings)
    down = create_app(orchestrator, settings, ingest=_failing(
        SubmitFailed("workflow 'w': the broker did not take run r (ConnectionError)")))
    refused = create_app(orchestrator, settings, ingest=_failing(
        InvalidInput("event 'a': the payload must be JSON")))
    answer = Client(down).post("/events/a", json={}, headers=AUTH)
    assert answer.status_code == 503 and "broker did not take" in answer.json()["error"]
    answer = Client(refused).post("/events/a", json={}, headers=AUTH)
    assert answer.status_code == 400 and "must be JSON" in answer.json()["error"]
