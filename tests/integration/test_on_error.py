"""``on_error`` through a real worker against a real HTTP server answering 503.

One prefork worker consumes ``it.on_error`` with a catalogue pointing provider ``fake``
at the fake LLM server of this process (``tests/fakes/llm_server.py``); breaker state is
shared through the test Redis, whose ``orchestration:*`` keys are deleted between tests.
Every call count is read from the server's own request log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import orchestration
from orchestration import RunStatus, StepStatus
from orchestration.core import keys as orch_keys
from tests.fakes.llm_server import FakeLLMClient, FakeLLMServer
from tests.integration.support.helpers import wait_until
from tests.integration.support.workflows import on_error as flows
from tests.support.workers import Worker, Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

KEY_ENV = "FAKE_LLM_KEY"
RUN_TIMEOUT_S = 30.0
CALM = {"fail_max": 1000, "reset_timeout": 60}  # a breaker these tests never open by accident


def catalogue(base_url: str) -> dict[str, Any]:
    def model(**options: Any) -> dict[str, Any]:
        return {"provider": "fake", "retries": 2, "breaker": CALM, **options}

    return {
        "providers": {"fake": {"kind": "openai", "base_url": base_url, "api_key_env": KEY_ENV}},
        "models": {
            "down": model(fallbacks=["backup"]),
            "cut": model(fallbacks=["backup"], breaker={"fail_max": 1, "reset_timeout": 600}),
            "lone": model(),
            "stalled": model(timeout=0.3),
            "backup": model(),
        },
        "default_model": "backup",
    }


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(hang_limit_s=10) as server:
        yield server


@pytest.fixture(scope="module")
def on_error_worker(workers: Workers, worker_logs: Path, fake_server: FakeLLMServer,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    models_file = tmp_path_factory.mktemp("on_error") / "models.yaml"
    models_file.write_text(json.dumps(catalogue(fake_server.url)))  # JSON is YAML
    env = dict(os.environ, ORCH_MODELS_FILE=str(models_file), **{KEY_ENV: "sk-fake-test"},
               ORCH_IMPORTS="tests.integration.support.workflows.on_error")
    pool = Workers(worker_logs, env=env)
    try:
        yield pool.start("it-on-error", [flows.QUEUE], pool="prefork", concurrency=1)
    finally:
        pool.stop_all()


@pytest.fixture
def fake(fake_server: FakeLLMServer, on_error_worker: Worker,
         redis_service: redis.Redis) -> Iterator[FakeLLMClient]:
    """The fake's control client; behaviours, request log and breakers reset around a test."""
    def clean() -> None:
        fake_server.reset()
        for key in redis_service.scan_iter(match=f"{orch_keys.PREFIX}:*"):
            redis_service.delete(key)

    clean()
    with FakeLLMClient(fake_server.url) as client:
        yield client
    clean()


def calls(fake: FakeLLMClient, model: str) -> int:
    return int(fake.stats().get(model, {}).get("requests", 0))


def test_without_a_policy_the_503_model_is_called_three_times(fake: FakeLLMClient) -> None:
    fake.configure("down", error_rate=1.0, error_status=503)
    run = flows.plain.run(model="down", timeout=RUN_TIMEOUT_S)
    assert run.outputs["ask"]["model"] == "backup"
    assert (calls(fake, "down"), calls(fake, "backup")) == (3, 1)


def test_a_503_with_route_to_fallback_makes_exactly_one_call(fake: FakeLLMClient) -> None:
    fake.configure("down", error_rate=1.0, error_status=503)
    run = flows.route.run(model="down", timeout=RUN_TIMEOUT_S)
    assert run.status is RunStatus.SUCCEEDED
    assert run.outputs["ask"]["model"] == "backup"
    assert (calls(fake, "down"), calls(fake, "backup")) == (1, 1)
    attempt = run.steps["ask"].attempt_log[0]
    assert attempt["policy"] == "model_unavailable: route_to_fallback"
    assert [(c["model"], c.get("policy")) for c in attempt["calls"]] == [
        ("down", "model_unavailable: route_to_fallback"), ("backup", None)]


def test_route_to_fallback_makes_no_call_behind_an_open_breaker(fake: FakeLLMClient) -> None:
    fake.configure("cut", error_rate=1.0, error_status=503)
    opened = flows.plain.run(model="cut", timeout=RUN_TIMEOUT_S)  # fail_max 1: now open
    assert opened.outputs["ask"]["model"] == "backup"
    assert calls(fake, "cut") == 1
    fake.reset_stats()
    run = flows.route.run(model="cut", timeout=RUN_TIMEOUT_S)
    assert run.outputs["ask"]["model"] == "backup"
    assert (calls(fake, "cut"), calls(fake, "backup")) == (0, 1)
    first_call = run.steps["ask"].attempt_log[0]["calls"][0]
    assert (first_call["breaker"], first_call["policy"]) == (
        "open", "model_unavailable: route_to_fallback")


def test_with_no_model_left_the_step_fallback_applies_at_once(fake: FakeLLMClient) -> None:
    fake.configure("lone", error_rate=1.0, error_status=503)
    run = flows.route_value.run(model="lone", timeout=RUN_TIMEOUT_S)
    step = run.steps["ask"]
    assert (step.status, step.output, step.attempts) == (StepStatus.FALLBACK, flows.FALLBACK, 1)
    assert calls(fake, "lone") == 1  # no retry of the call (retries: 2) nor of the step (3)


def test_timeout_retry_3_makes_four_calls(fake: FakeLLMClient) -> None:
    fake.configure("stalled", hang=True)
    run = flows.timeout_retry.run(model="stalled", timeout=RUN_TIMEOUT_S)
    step = run.steps["ask"]
    assert step.status is StepStatus.FAILED
    assert calls(fake, "stalled") == 4
    assert step.attempt_log[0]["error_kind"] == "timeout"
    assert step.policies == ["timeout: retry(3)"]


def test_skip_passes_none_on_and_the_run_succeeds(fake: FakeLLMClient) -> None:
    fake.configure("down", error_rate=1.0, error_status=503)
    run = flows.skip.run(model="down", timeout=RUN_TIMEOUT_S)
    assert run.status is RunStatus.SUCCEEDED
    assert run.steps["ask"].status is StepStatus.SKIPPED
    assert run.outputs["after"] == "after got None"
    assert (calls(fake, "down"), calls(fake, "backup")) == (1, 0)


def test_escalate_parks_the_run_and_the_approved_data_is_the_output(
        fake: FakeLLMClient) -> None:
    fake.configure("down", error_rate=1.0, error_status=503)
    handle = flows.escalate.submit(model="down")
    wait_until(lambda: handle.status() is RunStatus.WAITING, timeout=RUN_TIMEOUT_S,
               what="the escalated run to wait")
    waiting = handle.result().steps["ask"]
    assert waiting.error is not None
    assert waiting.error.startswith("escalated by on_error (model_unavailable: escalate): ")
    assert orchestration.approve(handle.run_id, {"model": "a person", "text": "billing"}) == 1
    run = handle.wait(timeout=RUN_TIMEOUT_S)
    assert run.status is RunStatus.SUCCEEDED
    assert run.outputs == {"ask": {"model": "a person", "text": "billing"},
                           "after": "after got a person"}
    assert calls(fake, "down") == 1
