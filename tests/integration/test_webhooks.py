"""``orchestrate serve`` as deployed: a real uvicorn process, real HTTP, PostgreSQL.

The served process runs the embedded default (its runs execute in-process) against the
session's PostgreSQL database, which the test reads. Credentials are signed the way a
sender does it (``hmac`` over the raw body), not with the engine's helper.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from orchestration import default_orchestrator
from orchestration.core.status import RunStatus
from tests.integration.support.workflows.webhooks import EVENT, WORKFLOW
from tests.support.own_postgres import free_port
from tests.support.polling import wait_until

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "it-serve-token-5d1f"
SECRET = "it-webhook-secret-93ab"
MAX_BYTES = 4096
START_TIMEOUT_S = 60.0


def _serve_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("ORCH_RESULT_BACKEND", "ORCH_SERVE_TOKEN", "ORCH_WEBHOOK_SECRET")}
    env.update({"ORCH_BROKER_URL": "memory://", "ORCH_DATABASE_URL": database_url,
                "ORCH_IMPORTS": "tests.integration.support.workflows.webhooks",
                "ORCH_WEBHOOK_MAX_BYTES": str(MAX_BYTES), "ORCH_LOG_JSON": "true",
                "PYTHONPATH": str(ROOT)}, **extra)
    return env


def _orchestrate(*args: str) -> list[str]:
    return [sys.executable, "-c", "from orchestration.cli import main; main()", *args]


@pytest.fixture(scope="module")
def server(postgres_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``orchestrate serve`` on a free loopback port; its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = _serve_env(postgres_database, ORCH_SERVE_TOKEN=TOKEN, ORCH_WEBHOOK_SECRET=SECRET)
    with log.open("wb") as out:
        process = subprocess.Popen(_orchestrate("serve", "--port", str(port)), env=env,
                                   stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"orchestrate serve exited {process.returncode}:\n"
                                 f"{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, timeout=START_TIMEOUT_S, what="orchestrate serve to answer",
                   interval=0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        text = log.read_text(errors="replace")
        assert TOKEN not in text and SECRET not in text, "a credential was logged"


def _signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Orchestrate-Signature": f"sha256={digest}", "Content-Type": "application/json"}


def _body(ticket_id: int, text: str = "cannot log in") -> bytes:
    return json.dumps({"ticket": {"id": ticket_id, "description": text}}).encode()


def _events(event_id: str) -> list[tuple[str, str | None]]:
    store = default_orchestrator().store
    return sorted((row.record.outcome, row.record.run_id)
                  for row in store.events.recent(event_id=event_id, limit=100))


def _runs() -> int:
    return len(default_orchestrator().store.list_runs(workflow=WORKFLOW, limit=1000))


def test_a_good_signature_starts_a_run_that_gets_the_payload(server: str) -> None:
    event_id = f"zd-{uuid.uuid4()}"
    body = _body(1842, "login fails since v3.2")
    response = httpx.post(f"{server}/events/{EVENT}", content=body,
                          headers={**_signed(body), "X-Event-Id": event_id}, timeout=30)
    assert response.status_code == 202, response.text
    [outcome] = response.json()["outcomes"]
    assert outcome["trigger"] == "it_ticket_hook" and outcome["outcome"] == "started"
    store = default_orchestrator().store
    result = wait_until(lambda: (run := store.get_run(outcome["run_id"])).status.is_terminal
                        and run, timeout=60, what="the webhook's run to finish")
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.outputs["shout"] == "1842:LOGIN FAILS SINCE V3.2"
    assert _events(event_id) == [("started", outcome["run_id"])]


def test_github_style_signature_header_is_accepted(server: str) -> None:
    body = _body(7)
    headers = {"X-Hub-Signature-256": _signed(body)["X-Orchestrate-Signature"],
               "X-Event-Id": f"gh-{uuid.uuid4()}"}
    response = httpx.post(f"{server}/events/{EVENT}", content=body, headers=headers,
                          timeout=30)
    assert response.status_code == 202, response.text


def test_a_bad_signature_is_401_and_records_and_starts_nothing(server: str) -> None:
    event_id = f"bad-{uuid.uuid4()}"
    body = _body(9)
    before = _runs()
    for headers in (_signed(body, "not-the-secret"), _signed(body + b" "),
                    {"X-Orchestrate-Signature": "sha256=" + "0" * 64}):
        response = httpx.post(f"{server}/events/{EVENT}", content=body,
                              headers={**headers, "X-Event-Id": event_id}, timeout=30)
        assert response.status_code == 401, response.text
    assert _events(event_id) == []
    assert _runs() == before


def test_a_bad_or_missing_token_is_401_and_a_good_one_202(server: str) -> None:
    body = _body(11)
    bad_id, good_id = f"tok-bad-{uuid.uuid4()}", f"tok-good-{uuid.uuid4()}"
    bad = httpx.post(f"{server}/events/{EVENT}", content=body, timeout=30,
                     headers={"Authorization": "Bearer wrong", "X-Event-Id": bad_id})
    missing = httpx.post(f"{server}/events/{EVENT}", content=body, timeout=30,
                         headers={"X-Event-Id": bad_id})
    good = httpx.post(f"{server}/events/{EVENT}", content=body, timeout=30,
                      headers={"Authorization": f"Bearer {TOKEN}", "X-Event-Id": good_id})
    assert (bad.status_code, missing.status_code, good.status_code) == (401, 401, 202)
    assert _events(bad_id) == []
    assert [outcome for outcome, _ in _events(good_id)] == ["started"]


def test_a_body_over_the_limit_is_413_and_records_nothing(server: str) -> None:
    event_id = f"big-{uuid.uuid4()}"
    body = _body(13, "x" * MAX_BYTES)
    declared = httpx.post(f"{server}/events/{EVENT}", content=body, timeout=30,
                          headers={**_signed(body), "X-Event-Id": event_id})

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        for start in range(0, len(body), 512):
            yield body[start:start + 512]

    chunked = httpx.post(f"{server}/events/{EVENT}", content=chunks(), timeout=30,
                         headers={**_signed(body), "X-Event-Id": event_id})
    assert declared.status_code == 413, declared.text
    assert chunked.status_code == 413, chunked.text
    assert f"limit is {MAX_BYTES} bytes" in chunked.json()["error"]
    assert _events(event_id) == []


def test_a_body_that_is_not_json_is_400_with_the_reason(server: str) -> None:
    body = b'{"ticket": '
    response = httpx.post(f"{server}/events/{EVENT}", content=body, timeout=30,
                          headers=_signed(body))
    assert response.status_code == 400
    assert response.json()["error"].startswith("the body is not JSON: Expecting value")


def test_eight_concurrent_deliveries_of_one_event_start_one_run(server: str) -> None:
    event_id = f"dup-{uuid.uuid4()}"
    body = _body(21)
    headers = {**_signed(body), "X-Event-Id": event_id}
    before = _runs()
    barrier = threading.Barrier(8)

    def deliver(_: int) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            return client.post(f"{server}/events/{EVENT}", content=body, headers=headers)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(deliver, range(8)))
    assert [a.status_code for a in answers] == [202] * 8, [a.text for a in answers]
    outcomes = [a.json()["outcomes"][0] for a in answers]
    run_ids = {o["run_id"] for o in outcomes}
    assert len(run_ids) == 1
    assert sorted(o["outcome"] for o in outcomes) == ["duplicate"] * 7 + ["started"]
    assert _runs() == before + 1
    [run_id] = run_ids
    assert _events(event_id) == [("duplicate", run_id)] * 7 + [("started", run_id)]


def test_serve_refuses_0_0_0_0_without_authentication(postgres_database: str) -> None:
    port = free_port()
    done = subprocess.run(_orchestrate("serve", "--host", "0.0.0.0", "--port", str(port)),
                          env=_serve_env(postgres_database), capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode != 0
    assert "refusing to serve on 0.0.0.0 without authentication" in done.stderr
    assert "ORCH_SERVE_TOKEN" in done.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
