"""``ctx.llm.stream`` against the fault-injecting fake server, on the embedded default."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from orchestration import RunStatus, StepContext, Workflow
from orchestration.app import Orchestrator
from orchestration.testing import embedded_orchestrator
from tests.fakes.llm_server import FakeLLMServer

KEY_ENV = "TEST_FAKE_LLM_KEY"
REPLY = "The login fails because the session cookie expired after the update."
CATALOGUE = """
providers:
  fake: {kind: openai, base_url: "URL", api_key_env: TEST_FAKE_LLM_KEY}
  claude: {kind: anthropic, base_url: "ROOT", api_key_env: TEST_FAKE_LLM_KEY}
models:
  streamy: {provider: fake, input_cost_per_1k: 1.0, output_cost_per_1k: 2.0}
  sonnet: {provider: claude, input_cost_per_1k: 3.0, output_cost_per_1k: 15.0}
  erratic: {provider: fake, retries: 2}
  stalling: {provider: fake, retries: 0, fallbacks: [stall-backup]}
  stall-backup: {provider: fake}
  cutting: {provider: fake, retries: 0, fallbacks: [cut-backup], output_cost_per_1k: 1.0,
            breaker: {fail_max: 1, reset_timeout: 600}}
  cut-backup: {provider: claude}
default_model: streamy
"""


def declare(orch: Orchestrator) -> SimpleNamespace:
    wf = Workflow("llm_stream", app=orch)

    @wf.task
    def speak(model: str, first_token_timeout: float | None, ctx: StepContext) -> dict[str, Any]:
        answer = ctx.llm.stream("Why can't I log in?", model=model,
                                first_token_timeout=first_token_timeout)
        chunks = list(answer)
        done = answer.completion
        assert done is not None
        return {"chunks": chunks, "text": done.text, "model": done.model,
                "usage": [done.usage.prompt_tokens, done.usage.completion_tokens],
                "cost": done.cost_usd}

    retried = Workflow("llm_stream_retried", app=orch)

    @retried.task(retries=1, backoff=0)
    def talk(ctx: StepContext) -> dict[str, Any]:
        answer = ctx.llm.stream("Explain the outage", model="cutting")
        return {"text": "".join(answer), "model": answer.completion.model
                if answer.completion else None}

    return SimpleNamespace(wf=wf, retried=retried, orch=orch)


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    directory = tmp_path_factory.mktemp("llm_stream")
    with FakeLLMServer(hang_limit_s=5) as server:
        models = directory / "models.yaml"
        models.write_text(CATALOGUE.replace("URL", server.url).replace("ROOT", server.root_url))
        with embedded_orchestrator(directory, models_file=models, redis_url=None) as orch:
            flows = declare(orch)
            flows.server = server
            yield flows


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-fake")


def tokens(handle: Any) -> list[tuple[int, str]]:
    return [(e["attempt"], e["text"]) for e in handle.stream(timeout=30) if e.type == "token"]


@pytest.mark.parametrize("model", ["streamy", "sonnet"])
def test_chunks_arrive_in_order_with_the_reported_usage(llm: SimpleNamespace,
                                                        model: str) -> None:
    llm.server.configure(model, reply=REPLY, prompt_tokens=40, completion_tokens=12)
    handle = llm.wf.submit(model=model, first_token_timeout=None)
    result = handle.wait(timeout=30)
    assert result.status is RunStatus.SUCCEEDED, result.steps["speak"].error
    out = result.outputs["speak"]
    assert len(out["chunks"]) == len(REPLY.split()) and "".join(out["chunks"]) == REPLY
    assert out["text"] == REPLY and out["model"] == model and out["usage"] == [40, 12]
    prices = {"streamy": (1.0, 2.0), "sonnet": (3.0, 15.0)}[model]
    assert out["cost"] == pytest.approx((40 * prices[0] + 12 * prices[1]) / 1000)
    assert result.cost_usd == pytest.approx(out["cost"])
    assert tokens(handle) == [(1, chunk) for chunk in out["chunks"]]
    assert llm.server.stats()[model]["streams"] == 1


def test_a_5xx_before_the_first_token_is_retried(llm: SimpleNamespace) -> None:
    llm.server.configure("erratic", reply="fine now", status_sequence=[500, 503])
    handle = llm.wf.submit(model="erratic", first_token_timeout=None)
    result = handle.wait(timeout=30)
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs["speak"]["text"] == "fine now"
    assert llm.server.stats()["erratic"]["statuses"] == {"500": 1, "503": 1, "200": 1}
    assert tokens(handle) == [(1, "fine "), (1, "now")]
    calls = result.steps["speak"].attempt_log[0]["calls"]
    assert [c["ok"] for c in calls] == [False, False, True]


def test_a_first_token_timeout_falls_back(llm: SimpleNamespace) -> None:
    llm.server.configure("stalling", reply="too late", first_token_delay_ms=3000)
    llm.server.configure("stall-backup", reply="on time")
    handle = llm.wf.submit(model="stalling", first_token_timeout=0.3)
    result = handle.wait(timeout=30)
    assert result.status is RunStatus.SUCCEEDED
    out = result.outputs["speak"]
    assert (out["text"], out["model"]) == ("on time", "stall-backup")
    calls = result.steps["speak"].attempt_log[0]["calls"]
    assert [(c["model"], c["ok"], c.get("error_kind")) for c in calls] == [
        ("stalling", False, "timeout"), ("stall-backup", True, None)]
    assert tokens(handle) == [(1, "on "), (1, "time")]


def test_a_disconnect_mid_stream_opens_the_breaker_and_the_fallback_continues(
        llm: SimpleNamespace) -> None:
    llm.server.configure("cutting", reply="one two three four five six", disconnect_after=3)
    llm.server.configure("cut-backup", reply="backup answer")
    handle = llm.retried.submit()
    result = handle.wait(timeout=30)
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs["talk"] == {"text": "backup answer", "model": "cut-backup"}
    events = list(handle.stream(timeout=30))
    assert [(e["attempt"], e["text"]) for e in events if e.type == "token"] == [
        (1, "one "), (1, "two "), (1, "three "), (2, "backup "), (2, "answer")]
    superseded = [e["attempt"] for e in events if e.type == "tokens_superseded"]
    assert superseded == [1]
    first, second = result.steps["talk"].attempt_log
    assert first["status"] == "failed" and "broke off" in (first["error"] or "")
    assert first["calls"][0]["breaker"] == "closed"
    # The breaker opened on the mid-stream failure: the retry went straight to the fallback.
    assert [(c["model"], c["ok"], c["breaker"]) for c in second["calls"]] == [
        ("cutting", False, "open"), ("cut-backup", True, "closed")]
    assert llm.server.stats()["cutting"]["requests"] == 1
    assert first["cost_usd"] > 0  # the three chunks received are paid for (estimated)
