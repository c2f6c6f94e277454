"""``on_error`` per model call in ``ctx.llm``: counted on the fake LLM server (real HTTP).

Every model below has ``retries: 2``, so without a policy a failing model gets 3 calls.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from orchestration import RunStatus, StepContext, StepStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.cli import main
from orchestration.errors import ProviderError
from orchestration.testing import embedded_orchestrator
from tests.fakes.llm_server import FakeLLMServer

KEY_ENV = "TEST_ON_ERROR_LLM_KEY"
CATALOGUE = """
providers:
  fake: {kind: openai, base_url: "URL", api_key_env: TEST_ON_ERROR_LLM_KEY}
models:
  primary: {provider: fake, retries: 2, fallbacks: [backup], breaker: {fail_max: 1000}}
  backup: {provider: fake, retries: 2}
  tripped: {provider: fake, retries: 2, fallbacks: [tripped-backup],
            breaker: {fail_max: 1, reset_timeout: 600}}
  tripped-backup: {provider: fake}
  alone: {provider: fake, retries: 2, breaker: {fail_max: 1000}}
  slow: {provider: fake, retries: 2, timeout: 0.2, breaker: {fail_max: 1000}}
  metered: {provider: fake, fallbacks: [backup], rate_limit: {requests: 1, window: 4}}
default_model: primary
"""
ROUTE = {"model_unavailable": "route_to_fallback"}


def declare(orch: Orchestrator) -> SimpleNamespace:
    def flow(name: str, **options: Any) -> Workflow:
        wf = Workflow(name, app=orch)

        @wf.task(backoff=0.01, **options)
        def ask(model: str, ctx: StepContext) -> dict[str, Any]:
            answer = ctx.llm.complete("Classify: can't log in", model=model)
            return {"model": answer.model, "text": answer.text}

        @wf.task
        def after(ask: dict[str, Any] | None) -> str:
            return f"after got {ask!r}"

        return wf

    as_json = Workflow("calls_json", app=orch)

    @as_json.task(retries=3, backoff=0.01, fallback={"category": "general"},
                  on_error={"invalid_output": "route_to_fallback"})
    def parse(model: str, ctx: StepContext) -> Any:
        return ctx.llm.complete_json("Ticket as JSON", model=model, attempts=2,
                                     schema={"type": "object", "required": ["category"]})

    return SimpleNamespace(
        orch=orch,
        as_json=as_json,
        plain=flow("calls_plain", retries=1),
        route=flow("calls_route", retries=3, on_error=ROUTE),
        route_or_value=flow("calls_route_value", retries=3, on_error=ROUTE,
                            fallback={"model": "none", "text": "fallback value"}),
        retry=flow("calls_retry", on_error={"timeout": "retry(3)"}),
        throttled=flow("calls_429", on_error={"rate_limited": "retry(0)"}),
        throttled_route=flow("calls_429_route", on_error={"rate_limited": "route_to_fallback"}),
        metered=flow("calls_metered", timeout=30,
                     on_error={"rate_limited": "route_to_fallback"}),
        skip=flow("calls_skip", retries=3, on_error={"model_unavailable": "skip"}),
        fail=flow("calls_fail", retries=3, fallback={"model": "x", "text": "unused"},
                  on_error={"model_unavailable": "fail"}),
        escalate=flow("calls_escalate", retries=3, on_error={"model_unavailable": "escalate"}),
        other_kind=flow("calls_other", on_error={"timeout": "fail"}),
    )


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    directory = tmp_path_factory.mktemp("on_error_calls")
    with FakeLLMServer(hang_limit_s=5) as server:
        models = directory / "models.yaml"
        models.write_text(CATALOGUE.replace("URL", server.url))
        with embedded_orchestrator(directory, models_file=models, redis_url=None) as orch:
            flows = declare(orch)
            flows.server = server
            flows.directory = directory
            yield flows


@pytest.fixture(autouse=True)
def fresh(llm: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-fake")
    llm.server.reset()
    llm.server.reset_stats()


def calls(llm: SimpleNamespace, model: str) -> int:
    return int(llm.server.stats().get(model, {}).get("requests", 0))


def test_without_a_policy_a_503_model_is_called_three_times(llm: SimpleNamespace) -> None:
    llm.server.configure("primary", error_rate=1.0, error_status=503)
    result = llm.plain.run(model="primary", timeout=20)
    assert result.outputs["ask"]["model"] == "backup"
    assert calls(llm, "primary") == 3  # the model's retries: 2
    assert result.steps["ask"].policies == [None]


def test_route_to_fallback_makes_exactly_one_call_to_the_503_model(llm: SimpleNamespace) -> None:
    llm.server.configure("primary", error_rate=1.0, error_status=503)
    result = llm.route.run(model="primary", timeout=20)
    step = result.steps["ask"]
    assert result.outputs["ask"]["model"] == "backup"
    assert (calls(llm, "primary"), calls(llm, "backup")) == (1, 1)
    assert step.attempts == 1
    attempt = step.attempt_log[0]
    assert (attempt["status"], attempt["error_kind"], attempt["policy"]) == (
        "succeeded", "model_unavailable", "model_unavailable: route_to_fallback")
    first, second = attempt["calls"]
    assert (first["model"], first["ok"], first["error_kind"], first["policy"]) == (
        "primary", False, "model_unavailable", "model_unavailable: route_to_fallback")
    assert (second["model"], second["ok"]) == ("backup", True) and "policy" not in second


def test_route_to_fallback_makes_no_call_to_a_model_whose_breaker_is_open(
        llm: SimpleNamespace) -> None:
    breaker = llm.orch.resilience.breakers.get("tripped")

    def outage() -> None:
        raise ProviderError("HTTP 503", status=503)

    with pytest.raises(ProviderError):
        breaker.call(outage)
    assert breaker.state_name == "open"
    result = llm.route.run(model="tripped", timeout=20)
    assert result.outputs["ask"]["model"] == "tripped-backup"
    assert (calls(llm, "tripped"), calls(llm, "tripped-backup")) == (0, 1)
    call = result.steps["ask"].attempt_log[0]["calls"][0]
    assert (call["model"], call["breaker"], call["policy"]) == (
        "tripped", "open", "model_unavailable: route_to_fallback")


def test_route_to_fallback_with_no_model_left_answers_the_step_fallback_at_once(
        llm: SimpleNamespace) -> None:
    llm.server.configure("alone", error_rate=1.0, error_status=503)
    result = llm.route_or_value.run(model="alone", timeout=20)
    step = result.steps["ask"]
    assert (step.status, step.output["text"]) == (StepStatus.FALLBACK, "fallback value")
    assert calls(llm, "alone") == 1 and step.attempts == 1  # not retries=3
    assert step.policies == ["model_unavailable: route_to_fallback"]


def test_route_to_fallback_with_no_model_and_no_fallback_fails_without_retries(
        llm: SimpleNamespace) -> None:
    llm.server.configure("alone", error_rate=1.0, error_status=503)
    result = llm.route.run(model="alone", timeout=20)
    step = result.steps["ask"]
    assert (result.status, step.status, step.attempts) == (RunStatus.FAILED,
                                                          StepStatus.FAILED, 1)
    assert calls(llm, "alone") == 1
    assert step.attempt_log[0]["error_kind"] == "model_unavailable"


def test_timeout_retry_3_makes_four_calls_to_the_model(llm: SimpleNamespace) -> None:
    llm.server.configure("slow", hang=True)
    result = llm.retry.run(model="slow", timeout=30)
    step = result.steps["ask"]
    assert calls(llm, "slow") == 4  # retry(3), not the model's retries: 2
    assert step.status is StepStatus.FAILED and step.attempts == 1  # not retried again
    assert step.policies == ["timeout: retry(3)"]
    traced = step.attempt_log[0]["calls"]
    assert [c["error_kind"] for c in traced] == ["timeout"] * 4
    assert {c["policy"] for c in traced} == {"timeout: retry(3)"}


def test_rate_limited_retry_0_calls_once_then_routes_as_before(llm: SimpleNamespace) -> None:
    llm.server.configure("primary", error_rate=1.0, error_status=429)
    result = llm.throttled.run(model="primary", timeout=20)
    assert result.outputs["ask"]["model"] == "backup"
    assert calls(llm, "primary") == 1


def test_rate_limited_route_to_fallback(llm: SimpleNamespace) -> None:
    llm.server.configure("primary", error_rate=1.0, error_status=429, retry_after=5)
    started = time.monotonic()
    result = llm.throttled_route.run(model="primary", timeout=20)
    assert result.outputs["ask"]["model"] == "backup"
    assert calls(llm, "primary") == 1
    assert time.monotonic() - started < 4  # no Retry-After wait on the throttled model
    assert result.steps["ask"].policies == ["rate_limited: route_to_fallback"]


def test_a_full_shared_limit_routes_to_the_fallback_without_waiting(
        llm: SimpleNamespace) -> None:
    first = llm.metered.run(model="metered", timeout=20)
    assert first.outputs["ask"]["model"] == "metered"
    started = time.monotonic()
    second = llm.metered.run(model="metered", timeout=20)  # 1 request per 4 s: full
    assert second.outputs["ask"]["model"] == "backup"
    assert time.monotonic() - started < 2  # not waiting for the limit to admit it
    assert (calls(llm, "metered"), calls(llm, "backup")) == (1, 1)
    call = second.steps["ask"].attempt_log[0]["calls"][0]
    assert (call["model"], call["ok"], call["error_kind"], call["policy"]) == (
        "metered", False, "rate_limited", "rate_limited: route_to_fallback")


def test_skip_stops_at_the_first_503_and_dependents_receive_none(llm: SimpleNamespace) -> None:
    llm.server.configure("primary", error_rate=1.0, error_status=503)
    result = llm.skip.run(model="primary", timeout=20)
    step = result.steps["ask"]
    assert (result.status, step.status) == (RunStatus.SUCCEEDED, StepStatus.SKIPPED)
    assert (calls(llm, "primary"), calls(llm, "backup")) == (1, 0)
    assert step.error is not None
    assert step.error.startswith("skipped by on_error (model_unavailable: skip)")
    assert result.outputs["after"] == "after got None"


def test_fail_stops_at_the_first_503_without_the_fallback(llm: SimpleNamespace) -> None:
    llm.server.configure("primary", error_rate=1.0, error_status=503)
    result = llm.fail.run(model="primary", timeout=20)
    step = result.steps["ask"]
    assert (result.status, step.status, step.output) == (RunStatus.FAILED, StepStatus.FAILED,
                                                         None)
    assert (calls(llm, "primary"), calls(llm, "backup"), step.attempts) == (1, 0, 1)
    assert step.policies == ["model_unavailable: fail"]


def test_escalate_then_approve_gives_the_output_and_show_prints_the_error(
        llm: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    llm.server.configure("primary", error_rate=1.0, error_status=503)
    handle = llm.escalate.submit(model="primary")
    deadline = time.monotonic() + 10
    while handle.status() is not RunStatus.WAITING:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert (calls(llm, "primary"), calls(llm, "backup")) == (1, 0)
    shown = show(llm, monkeypatch, handle.run_id)
    assert "ask waiting" in shown
    assert "[on_error model_unavailable: escalate]" in shown
    assert "escalated by on_error (model_unavailable: escalate): " in shown
    assert "approve with: orchestrate" in shown and "approve RUN_ID --data JSON" in shown
    as_json = show(llm, monkeypatch, handle.run_id, "--json")
    assert '"policy": "model_unavailable: escalate"' in as_json
    llm.orch.approve(handle.run_id, {"model": "person", "text": "billing"})
    result = handle.wait(timeout=20)
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs["ask"] == {"model": "person", "text": "billing"}
    assert calls(llm, "primary") == 1


def test_unparseable_json_is_invalid_output_and_takes_the_fallback_at_once(
        llm: SimpleNamespace) -> None:
    llm.server.configure("backup", reply="I would rather not answer in JSON.")
    result = llm.as_json.run(model="backup", timeout=20)
    step = result.steps["parse"]
    assert (step.status, step.output, step.attempts) == (StepStatus.FALLBACK,
                                                        {"category": "general"}, 1)
    assert calls(llm, "backup") == 2  # complete_json's own 2 calls; the step not retried
    assert step.attempt_log[0]["error_kind"] == "invalid_output"
    assert step.policies == ["invalid_output: route_to_fallback"]


def test_an_entry_for_another_kind_leaves_503_handling_as_it_was(llm: SimpleNamespace) -> None:
    llm.server.configure("primary", error_rate=1.0, error_status=503)
    result = llm.other_kind.run(model="primary", timeout=20)
    assert result.outputs["ask"]["model"] == "backup"
    assert calls(llm, "primary") == 3


def show(llm: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    commands = sys.modules["orchestration.cli.main"]  # the module (the package exports main)
    monkeypatch.setattr(commands, "orchestrator_for_cli", lambda **_: llm.orch)
    result = CliRunner().invoke(main, ["show", *args], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return result.output
