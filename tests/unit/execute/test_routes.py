"""Cost-aware model routes: a step with ``model="<route>"`` climbs the route's tiers.

An in-process orchestrator calls the fake LLM server over HTTP; each tier is a model of
its own with its own reply and price, so every attempt's model and cost can be checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from orchestration import RunStatus, StepContext, StepStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.testing import embedded_orchestrator
from tests.fakes.llm_server import FakeLLMServer

KEY_ENV = "TEST_FAKE_LLM_KEY"
CATALOGUE = """
providers:
  fake: {kind: openai, base_url: "URL", api_key_env: TEST_FAKE_LLM_KEY}
models:
  small: {provider: fake, input_cost_per_1k: 0.1, output_cost_per_1k: 0.2, retries: 0}
  mid: {provider: fake, input_cost_per_1k: 1.0, output_cost_per_1k: 2.0, retries: 0}
  big: {provider: fake, input_cost_per_1k: 10.0, output_cost_per_1k: 20.0, retries: 0}
routes:
  tiered: {tiers: [small, mid, big], min_confidence: 0.7}
  gate-only: {tiers: [small, big], escalate_on: [gate_failed]}
"""
LABEL = {"type": "object", "properties": {"label": {"type": "string"}},
         "required": ["label"]}


def declare(orch: Orchestrator) -> SimpleNamespace:
    gated = Workflow("route_gated", app=orch)

    @gated.task(model="tiered", gate=lambda out: out.startswith("good"), fallback="fallback")
    def answer(text: str, ctx: StepContext) -> str:
        return str(ctx.llm.complete(text).text)

    parsed = Workflow("route_json", app=orch)

    @parsed.task(model="tiered")
    def label(text: str, ctx: StepContext) -> Any:
        return ctx.llm.complete_json(text, schema=LABEL, attempts=1)

    sure = Workflow("route_confidence", app=orch)

    @sure.task(model="tiered")
    def judged(text: str, ctx: StepContext) -> Any:
        return ctx.llm.complete_json(text, schema=LABEL, attempts=1)  # {label, confidence}

    told = Workflow("route_ctx_confidence", app=orch)

    @told.task(model="tiered")
    def reported(text: str, ctx: StepContext) -> str:
        answer = ctx.llm.complete(text).text
        ctx.confidence(0.9 if answer == "sure" else 0.1)
        return str(answer)

    retried = Workflow("route_retries", app=orch)

    @retried.task(model="gate-only", retries=1, backoff=0.01,
                  gate=lambda out: out.startswith("good"))
    def attempt(text: str, ctx: StepContext) -> Any:
        return ctx.llm.complete(text).text

    later = Workflow("route_rescheduled", app=orch)

    # a 2.1 s backoff is past the 2 s inline limit: the retry goes back through the broker
    @later.task(model="gate-only", retries=1, backoff=2.1,
                gate=lambda out: out.startswith("good"))
    def handed_back(text: str, ctx: StepContext) -> Any:
        assert "orchestration.route_tier" not in ctx.params
        return ctx.llm.complete(text).text

    skipping = Workflow("route_on_error", app=orch)

    @skipping.task(model="tiered", gate=lambda out: out.startswith("good"),
                   on_error={"gate_failed": "skip"})
    def skippable(text: str, ctx: StepContext) -> Any:
        return ctx.llm.complete(text).text

    unsure = Workflow("route_no_confidence_escalation", app=orch)

    @unsure.task(model="gate-only")
    def lowly(text: str, ctx: StepContext) -> Any:
        ctx.confidence(0.01)  # gate-only does not escalate on confidence
        return ctx.llm.complete(text).text

    return SimpleNamespace(gated=gated, parsed=parsed, sure=sure, told=told, retried=retried,
                           unsure=unsure, later=later, skipping=skipping, orch=orch)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    directory = tmp_path_factory.mktemp("routes")
    with FakeLLMServer() as server:
        models = directory / "models.yaml"
        models.write_text(CATALOGUE.replace("URL", server.url))
        with embedded_orchestrator(directory, models_file=models, redis_url=None) as orch:
            flows = declare(orch)
            flows.server = server
            yield flows


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch, env: SimpleNamespace) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-fake")
    env.server.reset()


def replies(env: SimpleNamespace, **by_model: str) -> None:
    for model, reply in by_model.items():
        env.server.configure(model, reply=reply, prompt_tokens=100, completion_tokens=50)


def requests(env: SimpleNamespace, model: str) -> int:
    return int(env.server.stats().get(model, {}).get("requests", 0))


def cost(per_in: float, per_out: float) -> float:
    return (100 * per_in + 50 * per_out) / 1000


SMALL, MID, BIG = cost(0.1, 0.2), cost(1.0, 2.0), cost(10.0, 20.0)


def test_gate_failure_escalates_and_records_each_tier_with_its_cost(
        env: SimpleNamespace) -> None:
    replies(env, small="bad", mid="good answer", big="good too")
    result = env.gated.run(text="hi", timeout=20)
    assert result.status is RunStatus.SUCCEEDED
    step = result.steps["answer"]
    assert (step.status, step.output, step.model) == (StepStatus.SUCCEEDED, "good answer", "mid")
    log = step.attempt_log
    assert [(a["model"], a["status"]) for a in log] == [("small", "failed"), ("mid", "succeeded")]
    assert [a["cost_usd"] for a in log] == [pytest.approx(SMALL), pytest.approx(MID)]
    assert log[0]["error_kind"] == "gate_failed"
    assert log[0]["policy"] == "escalated on gate_failed: route tiered small -> mid"
    assert step.cost_usd == pytest.approx(SMALL + MID)
    assert requests(env, "big") == 0


def test_first_tier_that_passes_stops_the_climb(env: SimpleNamespace) -> None:
    replies(env, small="good enough", mid="good", big="good")
    step = env.gated.run(text="hi", timeout=20).steps["answer"]
    assert (step.output, step.attempts, step.model) == ("good enough", 1, "small")
    assert step.cost_usd == pytest.approx(SMALL)
    assert (requests(env, "mid"), requests(env, "big")) == (0, 0)


def test_last_tier_failing_fails_the_step_and_its_fallback_applies(env: SimpleNamespace) -> None:
    replies(env, small="bad", mid="bad", big="bad")
    step = env.gated.run(text="hi", timeout=20).steps["answer"]
    assert (step.status, step.output) == (StepStatus.FALLBACK, "fallback")
    assert [a["model"] for a in step.attempt_log] == ["small", "mid", "big"]
    assert [a["policy"] for a in step.attempt_log][-1] is None  # nothing left to climb to
    assert step.cost_usd == pytest.approx(SMALL + MID + BIG)


def test_invalid_json_escalates(env: SimpleNamespace) -> None:
    replies(env, small="no json here", mid='{"label": "billing"}')
    step = env.parsed.run(text="hi", timeout=20).steps["label"]
    assert (step.status, step.output) == (StepStatus.SUCCEEDED, {"label": "billing"})
    log = step.attempt_log
    assert [(a["model"], a["error_kind"]) for a in log] == [("small", "invalid_output"),
                                                           ("mid", None)]
    assert log[0]["policy"] == "escalated on invalid_output: route tiered small -> mid"


def test_low_confidence_in_the_output_escalates(env: SimpleNamespace) -> None:
    replies(env, small='{"label": "bug", "confidence": 0.4}',
            mid='{"label": "billing", "confidence": 0.65}',
            big='{"label": "billing", "confidence": 0.95}')
    step = env.sure.run(text="hi", timeout=20).steps["judged"]
    assert step.output == {"label": "billing", "confidence": 0.95}
    assert [a["model"] for a in step.attempt_log] == ["small", "mid", "big"]
    assert [a["policy"] for a in step.attempt_log][:2] == [
        "escalated on low_confidence: route tiered small -> mid",
        "escalated on low_confidence: route tiered mid -> big"]
    assert "below the route's min_confidence 0.7" in step.attempt_log[0]["error"]


def test_confidence_reported_through_ctx_escalates(env: SimpleNamespace) -> None:
    replies(env, small="unsure", mid="sure")
    step = env.told.run(text="hi", timeout=20).steps["reported"]
    assert (step.output, [a["model"] for a in step.attempt_log]) == ("sure", ["small", "mid"])


def test_escalations_are_apart_from_retries(env: SimpleNamespace) -> None:
    replies(env, small="bad", big="bad")
    step = env.retried.run(text="hi", timeout=20).steps["attempt"]
    assert step.status is StepStatus.FAILED
    # two tiers, then the one retry on the last tier reached
    assert [a["model"] for a in step.attempt_log] == ["small", "big", "big"]


def test_a_retry_through_the_broker_goes_on_from_the_tier_reached(
        env: SimpleNamespace) -> None:
    replies(env, small="bad", big="bad")
    step = env.later.run(text="hi", timeout=30).steps["handed_back"]
    assert step.status is StepStatus.FAILED
    assert [a["model"] for a in step.attempt_log] == ["small", "big", "big"]


def test_the_route_climbs_before_on_error_acts(env: SimpleNamespace) -> None:
    replies(env, small="bad", mid="good", big="good")
    step = env.skipping.run(text="hi", timeout=20).steps["skippable"]
    assert (step.status, step.output, step.model) == (StepStatus.SUCCEEDED, "good", "mid")
    replies(env, mid="bad", big="bad")
    step = env.skipping.run(text="hi", timeout=20).steps["skippable"]
    assert step.status is StepStatus.SKIPPED
    assert [a["model"] for a in step.attempt_log] == ["small", "mid", "big"]


def test_a_route_escalates_only_on_its_reasons(env: SimpleNamespace) -> None:
    replies(env, small="good", big="good")
    step = env.unsure.run(text="hi", timeout=20).steps["lowly"]
    assert (step.status, step.model, step.attempts) == (StepStatus.SUCCEEDED, "small", 1)


def test_a_route_step_goes_to_the_route_queue(env: SimpleNamespace) -> None:
    spec = env.gated.steps["answer"]
    assert env.gated.queue_of(spec) == "model.tiered"
    assert env.gated.run(text="hi", timeout=20).steps["answer"].queue == "model.tiered"
