"""The fake LLM server: each injectable fault, per-model isolation, stats, control API, CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.llm_server import FakeLLMClient, FakeLLMServer
from tests.support.polling import wait_until

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def http(server: FakeLLMServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.root_url, timeout=5.0) as client:
        yield client


def chat(http: httpx.Client, model: str, content: str = "hello there",
         **kwargs: Any) -> httpx.Response:
    return http.post("/v1/chat/completions",
                     json={"model": model, "messages": [{"role": "user", "content": content}]},
                     **kwargs)


def statuses(http: httpx.Client, model: str, n: int) -> list[int]:
    return [chat(http, model).status_code for _ in range(n)]


# -- the two API shapes ------------------------------------------------------------------------

def test_chat_completion_is_openai_shaped_and_echoes_the_model(
        control: FakeLLMClient, http: httpx.Client) -> None:
    body = chat(http, "gpt-test", "Can't login since update v3.2").json()

    assert body["model"] == "gpt-test"
    text = body["choices"][0]["message"]["content"]
    assert "gpt-test" in text and "Can't login since update v3.2" in text
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["prompt_tokens"] == 5
    assert body["usage"]["completion_tokens"] == len(text.split())
    assert chat(http, "gpt-test", "Can't login since update v3.2").json()["choices"] \
        == body["choices"]


def test_messages_is_anthropic_shaped(control: FakeLLMClient, http: httpx.Client) -> None:
    response = http.post("/v1/messages", headers={"anthropic-version": "2023-06-01"}, json={
        "model": "claude-test", "max_tokens": 64, "system": "be brief",
        "messages": [{"role": "user", "content": "hi"}]})

    body = response.json()
    assert response.status_code == 200
    assert body["type"] == "message" and body["model"] == "claude-test"
    assert body["content"] == [{"type": "text", "text": "[claude-test] echo: hi"}]
    assert body["usage"] == {"input_tokens": 3, "output_tokens": 3}


@pytest.mark.parametrize(("headers", "body", "problem"), [
    ({}, {"max_tokens": 8, "messages": []}, "anthropic-version"),
    ({"anthropic-version": "2023-06-01"}, {"messages": []}, "max_tokens"),
    ({"anthropic-version": "2023-06-01"},
     {"max_tokens": 8, "messages": [{"role": "system", "content": "x"}]}, "system"),
])
def test_messages_rejects_what_the_real_api_rejects(
        control: FakeLLMClient, http: httpx.Client, headers: dict[str, str],
        body: dict[str, Any], problem: str) -> None:
    response = http.post("/v1/messages", headers=headers, json={"model": "claude-test", **body})

    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert problem in error["error"]["message"]
    assert control.stats()["claude-test"]["statuses"] == {"400": 1}


def test_fixed_reply_and_token_counts(control: FakeLLMClient, http: httpx.Client) -> None:
    control.configure("m", reply="billing", prompt_tokens=120, completion_tokens=3)

    body = chat(http, "m").json()

    assert body["choices"][0]["message"]["content"] == "billing"
    assert body["usage"]["prompt_tokens"] == 120 and body["usage"]["completion_tokens"] == 3


def test_fenced_json_wraps_the_value_in_prose_and_a_json_fence(
        control: FakeLLMClient, http: httpx.Client) -> None:
    value = {"urgency": "high", "score": 0.9, "tags": ["login"]}
    control.configure("m", fenced_json=value)

    text = chat(http, "m").json()["choices"][0]["message"]["content"]

    match = re.search(r"```json\n(.*?)\n```", text, re.DOTALL)
    assert match is not None
    assert json.loads(match.group(1)) == value
    assert text[:match.start()].strip() and text[match.end():].strip()


def test_garbage_is_a_200_with_a_body_that_is_not_json(
        control: FakeLLMClient, http: httpx.Client) -> None:
    control.configure("m", garbage=True)

    response = chat(http, "m")

    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()


# -- faults ------------------------------------------------------------------------------------

def test_latency_delays_the_answer(control: FakeLLMClient, http: httpx.Client) -> None:
    control.configure("slow", latency_ms=300)
    started = time.monotonic()
    assert chat(http, "slow").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_latency_is_per_model() -> None:
    outcome: list[BaseException | int] = []
    with FakeLLMServer() as fake:
        fake.configure("slow", latency_ms=3_600_000)

        def call_slow() -> None:
            try:
                with httpx.Client(base_url=fake.root_url, timeout=3600.0) as client:
                    outcome.append(chat(client, "slow").status_code)
            except httpx.HTTPError as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call_slow, daemon=True)
        caller.start()
        wait_until(lambda: fake.stats().get("slow"), timeout=10, what="the slow request")
        # Another model answers while the slow one's request is held: the delay is its own.
        with httpx.Client(base_url=fake.root_url, timeout=30.0) as client:
            assert chat(client, "fast").status_code == 200
        assert outcome == [] and caller.is_alive()
    caller.join(30)  # stopping the fake released the held request
    assert not caller.is_alive() and isinstance(outcome[0], httpx.HTTPError), outcome


def test_fail_first_fails_the_first_n_with_error_status(
        control: FakeLLMClient, http: httpx.Client) -> None:
    control.configure("m", fail_first=2, error_status=503)

    assert statuses(http, "m", 4) == [503, 503, 200, 200]


def test_status_sequence_is_played_in_order_then_200(
        control: FakeLLMClient, http: httpx.Client) -> None:
    control.configure("m", status_sequence=[500, 429, 200, 401])

    assert statuses(http, "m", 6) == [500, 429, 200, 401, 200, 200]
    error = chat(http, "m").json()
    assert "choices" in error


def test_error_bodies_follow_each_api(control: FakeLLMClient, http: httpx.Client) -> None:
    control.configure("m", status_sequence=[500, 529])

    assert chat(http, "m").json()["error"]["type"] == "server_error"
    response = http.post("/v1/messages", headers={"anthropic-version": "2023-06-01"},
                         json={"model": "m", "max_tokens": 8, "messages": []})
    assert response.status_code == 529 and response.reason_phrase == "Overloaded"
    assert response.json()["error"]["type"] == "overloaded_error"


def test_error_rate_is_deterministic_for_a_seed(
        control: FakeLLMClient, http: httpx.Client) -> None:
    control.configure("m", error_rate=0.3, error_status=502, seed=7)
    first = statuses(http, "m", 40)
    control.configure("m", error_rate=0.3, error_status=502, seed=7)
    again = statuses(http, "m", 40)
    control.configure("m", error_rate=0.3, error_status=502, seed=8)
    other = statuses(http, "m", 40)

    assert first == again
    assert other != first
    assert set(first) == {200, 502}
    assert 4 <= first.count(502) <= 20
    control.configure("m", error_rate=1.0)
    assert statuses(http, "m", 3) == [500, 500, 500]


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_header_on_429_and_503(
        control: FakeLLMClient, http: httpx.Client, status: int) -> None:
    control.configure("m", status_sequence=[status], retry_after=2)

    assert chat(http, "m").headers["retry-after"] == "2"


def test_retry_after_is_not_sent_with_other_statuses_and_may_be_a_date(
        control: FakeLLMClient, http: httpx.Client) -> None:
    date = formatdate(time.time() + 30, usegmt=True)
    control.configure("m", status_sequence=[500, 429], retry_after=date)

    assert "retry-after" not in chat(http, "m").headers
    assert chat(http, "m").headers["retry-after"] == date


def test_hang_never_answers_and_is_counted(control: FakeLLMClient, http: httpx.Client) -> None:
    control.configure("stuck", hang=True)

    # The fake holds it for its hang limit (60 s): the client's 0.3 s timeout ends the call.
    with pytest.raises(httpx.ReadTimeout):
        chat(http, "stuck", timeout=0.3)

    stats = control.stats()["stuck"]
    assert stats["requests"] == 1 and stats["hung"] == 1 and stats["statuses"] == {}
    assert chat(http, "other").status_code == 200


def test_stop_releases_hanging_requests() -> None:
    # Neither the hang limit nor the client's timeout can end the request in this test:
    # only stop() does.
    fake = FakeLLMServer(hang_limit_s=3600).start()
    fake.configure("stuck", hang=True)
    outcome: list[BaseException | int] = []

    def call() -> None:
        try:
            with httpx.Client(timeout=3600.0) as client:
                outcome.append(client.post(f"{fake.url}/chat/completions",
                                           json={"model": "stuck", "messages": []}).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    wait_until(lambda: fake.stats().get("stuck"), timeout=10, what="the request to hang")

    fake.stop()
    caller.join(timeout=30)

    assert not caller.is_alive()
    assert isinstance(outcome[0], httpx.RemoteProtocolError)
    with httpx.Client(timeout=1.0) as client, pytest.raises(httpx.ConnectError):
        client.get(f"{fake.root_url}/control/stats")


# -- isolation, stats, control -----------------------------------------------------------------

def test_behaviour_is_per_model(control: FakeLLMClient, http: httpx.Client) -> None:
    control.configure("bad", fail_first=10)

    assert statuses(http, "bad", 2) == [500, 500]
    assert statuses(http, "good", 2) == [200, 200]
    stats = control.stats()
    assert stats["bad"]["statuses"] == {"500": 2}
    assert stats["good"]["statuses"] == {"200": 2}


def test_stats_count_requests_and_timestamps_per_window(
        control: FakeLLMClient, http: httpx.Client) -> None:
    control.configure("m", status_sequence=[500])
    before = time.time()
    statuses(http, "m", 3)
    middle = time.time()
    statuses(http, "m", 2)

    stats = control.stats()["m"]
    assert stats["requests"] == 5
    assert stats["statuses"] == {"500": 1, "200": 4}
    assert stats["endpoints"] == {"chat.completions": 5}
    assert stats["timestamps"] == sorted(stats["timestamps"])
    assert all(before <= t <= time.time() for t in stats["timestamps"])
    assert len(control.requests("m")) == 5
    assert len(control.requests("m", since=middle)) == 2
    assert control.requests("never-called") == []


def test_reset_stats_keeps_behaviour_and_reset_clears_both(
        control: FakeLLMClient, http: httpx.Client) -> None:
    control.configure("m", reply="fixed")
    chat(http, "m")

    control.reset_stats()
    assert control.stats() == {}
    assert chat(http, "m").json()["choices"][0]["message"]["content"] == "fixed"

    control.reset()
    assert control.stats() == {}
    assert chat(http, "m").json()["choices"][0]["message"]["content"] == "[m] echo: hello there"


def test_records_whether_a_key_was_sent_but_never_the_key(
        control: FakeLLMClient, http: httpx.Client) -> None:
    chat(http, "m", headers={"Authorization": "Bearer sk-very-secret-1"})
    chat(http, "m", headers={"x-api-key": "sk-very-secret-2"})
    chat(http, "m")

    stats = control.stats()["m"]
    assert (stats["with_auth"], stats["without_auth"]) == (2, 1)
    assert "very-secret" not in json.dumps(control.stats())


def test_control_from_another_client_with_awkward_model_names(
        server: FakeLLMServer, control: FakeLLMClient, http: httpx.Client) -> None:
    model = "meta-llama/Llama-3.1-8B:q4 v2"
    with FakeLLMClient(server.root_url) as other:
        applied = other.configure(model, reply="from elsewhere", latency_ms=1)
        assert applied["reply"] == "from elsewhere" and applied["error_rate"] == 0.0

    assert chat(http, model).json()["choices"][0]["message"]["content"] == "from elsewhere"
    assert control.stats()[model]["requests"] == 1
    assert http.get("/control/models").json()[model]["latency_ms"] == 1
    http.delete(f"/control/models/{model.replace('/', '%2F')}")
    assert model not in http.get("/control/models").json()


def test_configure_replaces_rather_than_merges(
        control: FakeLLMClient, http: httpx.Client) -> None:
    control.configure("m", reply="one", fail_first=1)
    control.configure("m", reply="two")

    assert chat(http, "m").json()["choices"][0]["message"]["content"] == "two"


@pytest.mark.parametrize("behaviour", [
    {"error_rat": 0.5}, {"error_rate": 2}, {"error_status": 99}, {"status_sequence": [200, "x"]},
    {"hang": "yes"}, {"latency_ms": -1}, {"fail_first": 1.5}, {"reply": 3},
])
def test_bad_behaviour_is_refused_with_a_reason(
        control: FakeLLMClient, behaviour: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(behaviour))):
        control.configure("m", **behaviour)


def test_unknown_routes_and_bad_requests(control: FakeLLMClient, http: httpx.Client) -> None:
    assert http.post("/v1/embeddings", json={"model": "m"}).status_code == 404
    assert http.get("/nowhere").status_code == 404
    assert http.post("/v1/chat/completions", content=b"not json").status_code == 400
    assert http.post("/v1/chat/completions", json={"messages": []}).status_code == 400


def test_in_process_control_matches_the_http_api() -> None:
    with FakeLLMServer() as fake:
        fake.configure("m", status_sequence=[418])
        with httpx.Client(timeout=5.0) as client:
            response = client.post(f"{fake.url}/chat/completions",
                                   json={"model": "m", "messages": []})
        assert response.status_code == 418
        assert fake.stats()["m"]["statuses"] == {"418": 1}
        fake.reset()
        assert fake.stats() == {}
    with pytest.raises(RuntimeError):
        fake.stats()


# -- as its own process ------------------------------------------------------------------------

def test_module_entry_point_prints_ready_serves_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.llm_server", "--port", "0"], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"READY (\d+)\n", line)
        assert match, line
        url = f"http://127.0.0.1:{match.group(1)}/v1"
        with FakeLLMClient(url) as client, httpx.Client(timeout=5.0) as http:
            client.configure("m", reply="separate process")
            response = http.post(f"{url}/chat/completions", json={"model": "m", "messages": []})
            assert response.json()["choices"][0]["message"]["content"] == "separate process"
            assert client.stats()["m"]["requests"] == 1

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
