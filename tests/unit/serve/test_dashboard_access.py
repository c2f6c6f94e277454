"""Who may use the dashboard, and how its actions resist cross-site requests.

- with ``ORCH_SERVE_TOKEN`` every page and API call needs it (bearer, or as the basic-auth
  password); a page's 401 asks for basic auth, the API's for a bearer token;
- without it (loopback only) the pages say so, and a request addressed to another host
  (a DNS-rebinding page) is refused;
- a state-changing request authenticated by basic auth (or none) needs the session's CSRF
  token in a form field or header, and a cross-site one is refused even with it; a
  bearer-authenticated API call needs no CSRF token;
- each action is recorded in the events table (who, outcome), never with a credential.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from orchestration.core.status import RunStatus
from orchestration.serve.session import CSRF_COOKIE
from tests.unit.serve.dashboard_support import (
    TOKEN,
    Client,
    basic,
    bearer,
    dashboard,
    write_run,
)

PATHS = ["/runs", "/workflows", "/models", "/queues", "/api/runs", "/api/breakers",
         "/api/queues", "/api/workflows", "/openapi.json"]


@pytest.mark.parametrize("path", PATHS)
def test_every_page_and_api_call_needs_the_token(tmp_path: Path, path: str) -> None:
    app, _ = dashboard(tmp_path, serve_token=TOKEN)
    client = Client(app)
    refused = client.get(path)
    assert refused.status_code == 401
    challenge = refused.headers["www-authenticate"]
    api = path.startswith("/api/") or path == "/openapi.json"
    assert challenge.startswith("Bearer" if api else "Basic")
    assert TOKEN not in refused.text
    assert client.get(path, headers=bearer("not-it")).status_code == 401
    assert client.get(path, auth=basic("not-it")).status_code == 401
    assert client.get(path, headers=bearer()).status_code == 200
    assert client.get(path, auth=basic()).status_code == 200


def test_the_run_stream_and_fragment_need_the_token_too(tmp_path: Path) -> None:
    app, orchestrator = dashboard(tmp_path, serve_token=TOKEN)
    run_id = write_run(orchestrator, "flow")
    client = Client(app)
    for path in (f"/runs/{run_id}", f"/runs/{run_id}/live", f"/runs/{run_id}/events",
                 f"/api/runs/{run_id}"):
        assert client.get(path).status_code == 401, path


def test_a_page_says_who_is_logged_in_and_never_the_token(tmp_path: Path) -> None:
    app, _ = dashboard(tmp_path, serve_token=TOKEN)
    page = Client(app).get("/runs", auth=basic(user="alice"))
    assert "authenticated (basic as alice)" in page.text
    assert TOKEN not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


def test_without_a_token_the_pages_say_so_and_answer_loopback_hosts_only(
        tmp_path: Path) -> None:
    app, _ = dashboard(tmp_path)
    page = Client(app, "127.0.0.1:8080").get("/runs")
    assert page.status_code == 200
    assert "no ORCH_SERVE_TOKEN configured" in page.text
    assert Client(app, "localhost:8080").get("/api/runs").status_code == 200
    rebound = Client(app, "attacker.example:8080").get("/api/runs")
    assert rebound.status_code == 403
    assert "loopback" in rebound.json()["error"]


def _session(client: Client, run_id: str) -> tuple[str, dict[str, str]]:
    page = client.get(f"/runs/{run_id}", auth=basic())
    assert page.status_code == 200
    cookie = page.cookies[CSRF_COOKIE]
    set_cookie = page.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie
    assert f'name="csrf" value="{cookie}"' in page.text
    return cookie, {"Cookie": f"{CSRF_COOKIE}={cookie}"}


def test_a_form_action_needs_the_session_csrf_token(tmp_path: Path) -> None:
    app, orchestrator = dashboard(tmp_path, serve_token=TOKEN)
    run_id = write_run(orchestrator, "flow", status="running", steps={"a": "running"})
    client = Client(app)
    token, cookie = _session(client, run_id)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    without = client.post(f"/runs/{run_id}/cancel", auth=basic(), headers={**form, **cookie},
                          content="")
    assert without.status_code == 403 and "CSRF" in without.json()["error"]
    forged = client.post(f"/runs/{run_id}/cancel", auth=basic(), headers={**form, **cookie},
                         content="csrf=" + "x" * 43)
    assert forged.status_code == 403
    no_cookie = client.post(f"/runs/{run_id}/cancel", auth=basic(), headers=form,
                            content=f"csrf={token}")
    assert no_cookie.status_code == 403
    cross_site = client.post(f"/runs/{run_id}/cancel", auth=basic(), content=f"csrf={token}",
                             headers={**form, **cookie, "Sec-Fetch-Site": "cross-site"})
    assert cross_site.status_code == 403
    other_origin = client.post(f"/runs/{run_id}/cancel", auth=basic(), content=f"csrf={token}",
                               headers={**form, **cookie, "Origin": "https://evil.example"})
    assert other_origin.status_code == 403
    assert orchestrator.store.run_status(run_id) is RunStatus.RUNNING
    done = client.post(f"/runs/{run_id}/cancel", auth=basic(), content=f"csrf={token}",
                       headers={**form, **cookie, "Origin": "http://127.0.0.1"})
    assert done.status_code == 303 and done.headers["location"] == f"/runs/{run_id}"
    assert orchestrator.store.run_status(run_id) is RunStatus.CANCELLED


def test_an_open_loopback_server_needs_the_csrf_token_as_well(tmp_path: Path) -> None:
    app, orchestrator = dashboard(tmp_path)
    run_id = write_run(orchestrator, "flow", status="running", steps={"a": "running"})
    refused = Client(app).post(f"/api/runs/{run_id}/cancel", json={})
    assert refused.status_code == 403
    assert orchestrator.store.run_status(run_id) is RunStatus.RUNNING


def test_an_api_action_with_a_bearer_token_needs_no_csrf_and_is_recorded(
        tmp_path: Path) -> None:
    app, orchestrator = dashboard(tmp_path, serve_token=TOKEN)
    run_id = write_run(orchestrator, "flow", status="running", steps={"a": "running"})
    client = Client(app)
    answer = client.post(f"/api/runs/{run_id}/cancel", headers=bearer(), json={})
    assert answer.status_code == 200
    assert answer.json() == {"action": "cancel", "run_id": run_id,
                             "result": {"cancelled": [run_id]}}
    again = client.post(f"/api/runs/{run_id}/cancel", headers=bearer(), json={})
    assert again.status_code == 409 and "already ended cancelled" in again.json()["error"]
    rows = orchestrator.store.events.recent(name="dashboard.cancel")
    assert [(r.record.outcome, r.record.run_id, r.record.source) for r in rows] == [
        ("refused", run_id, "dashboard"), ("done", run_id, "dashboard")]
    assert rows[1].record.payload["by"] == "bearer"
    assert TOKEN not in str([r.record for r in rows])


def test_approving_a_run_that_waits_for_nothing_is_a_conflict(tmp_path: Path) -> None:
    app, orchestrator = dashboard(tmp_path, serve_token=TOKEN)
    run_id = write_run(orchestrator, "flow")
    answer = Client(app).post(f"/api/runs/{run_id}/approve", headers=bearer(),
                              json={"data": {"approved": True}})
    assert answer.status_code == 409
    assert "no step waiting for input" in answer.json()["error"]


@pytest.mark.parametrize(("body", "message"), [
    ("[1]", "the body: a JSON object"), ("{nope", "the body: not JSON"),
    ('{"name": 3}', "name: the input's name as a string"),
    ('{"inputs": [1]}', "inputs: a JSON object")])
def test_a_bad_api_body_is_a_400_naming_it(tmp_path: Path, body: str, message: str) -> None:
    app, orchestrator = dashboard(tmp_path, serve_token=TOKEN)
    run_id = write_run(orchestrator, "flow")
    answer = Client(app).post(f"/api/runs/{run_id}/resume", headers=bearer(), content=body)
    assert answer.status_code == 400
    assert message in answer.json()["error"]


def test_unknown_runs_and_actions_are_404(tmp_path: Path) -> None:
    app, orchestrator = dashboard(tmp_path, serve_token=TOKEN)
    client = Client(app)
    assert client.get("/api/runs/nope", headers=bearer()).status_code == 404
    assert client.get("/runs/nope", headers=bearer()).status_code == 404
    assert client.get("/runs/nope/events", headers=bearer()).status_code == 404
    assert client.post("/api/runs/nope/cancel", headers=bearer(), json={}).status_code == 404
    run_id = write_run(orchestrator, "flow")
    assert client.post(f"/api/runs/{run_id}/delete", headers=bearer(),
                       json={}).status_code == 404


def test_each_action_is_an_audit_log_line_without_the_data_or_a_credential(
        tmp_path: Path) -> None:
    app, orchestrator = dashboard(tmp_path, serve_token=TOKEN)
    running = write_run(orchestrator, "flow", status="running", steps={"a": "running"})
    done = write_run(orchestrator, "flow")
    client = Client(app)
    with capture_logs() as logs:
        client.post(f"/api/runs/{running}/cancel", headers=bearer(), json={})
        client.post(f"/api/runs/{done}/approve", headers=bearer(),
                    json={"data": {"card": "4111 1111 1111 1111"}, "name": "review"})
    audit = [(e["action"], e["run_id"], e["by"], e["outcome"]) for e in logs
             if e.get("event") == "dashboard action"]
    assert audit == [("cancel", running, "bearer", "done"),
                     ("approve", done, "bearer", "refused")]
    assert "4111" not in str(logs) and TOKEN not in str(logs)


def test_resuming_a_run_of_a_workflow_this_server_does_not_know_is_a_conflict(
        tmp_path: Path) -> None:
    app, orchestrator = dashboard(tmp_path, serve_token=TOKEN)
    run_id = write_run(orchestrator, "not_imported_here", status="failed",
                       steps={"a": "failed"}, error="bad")
    answer = Client(app).post(f"/api/runs/{run_id}/resume", headers=bearer(), json={})
    assert answer.status_code == 409
    assert "not_imported_here" in answer.json()["error"]
