"""``ctx.llm`` end to end: an in-process orchestrator calling the fake LLM server over HTTP."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import wait as wait_futures
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel

from orchestration import RunStatus, StepContext, StepStatus, StepTimeout, Workflow
from orchestration.app import Orchestrator
from orchestration.core.results import RunHandle
from orchestration.errors import ProviderError
from orchestration.execute.timeouts import abandoned, call_with_timeout
from orchestration.llm.json_answers import extract_json
from orchestration.testing import embedded_orchestrator
from tests.fakes.llm_server import FakeLLMServer

KEY_ENV, UNSET_ENV = "TEST_FAKE_LLM_KEY", "TEST_UNSET_LLM_KEY"
CATALOGUE = """
providers:
  fake: {kind: openai, base_url: "URL", api_key_env: TEST_FAKE_LLM_KEY}
  keyless: {kind: openai, base_url: "URL", api_key_env: TEST_UNSET_LLM_KEY}
models:
  happy: {provider: fake, input_cost_per_1k: 1.0, output_cost_per_1k: 2.0}
  flaky: {provider: fake, retries: 2}
  rejecting: {provider: fake, retries: 2, fallbacks: [rejecting-backup]}
  rejecting-backup: {provider: fake}
  tripped: {provider: fake, fallbacks: [tripped-backup], breaker: {fail_max: 1,
            reset_timeout: 600}}
  tripped-backup: {provider: fake}
  throttled: {provider: fake, retries: 1}
  down: {provider: fake, retries: 1, fallbacks: [refusing]}
  refusing: {provider: fake, retries: 2}
  fenced: {provider: fake}
  prose: {provider: fake}
  schemaful: {provider: fake}
  babbler: {provider: fake, input_cost_per_1k: 1.0, output_cost_per_1k: 1.0}
  pricey: {provider: fake, input_cost_per_1k: 10.0, output_cost_per_1k: 10.0}
  budgeted: {provider: fake, input_cost_per_1k: 1.0}
  budgeted-next: {provider: fake, input_cost_per_1k: 1.0}
  hanging: {provider: fake, retries: 2}
  timed: {provider: fake}
  ghost: {provider: keyless, fallbacks: [stand-in]}
  stand-in: {provider: fake}
default_model: happy
"""


class Ticket(BaseModel):
    category: str
    priority: int


TICKET_SCHEMA = {"type": "object", "required": ["category", "priority"],
                 "properties": {"category": {"type": "string"},
                                "priority": {"type": "integer", "minimum": 1}}}


def completion(answer: Any) -> dict[str, Any]:
    return {"text": answer.text, "model": answer.model, "provider": answer.provider,
            "usage": [answer.usage.prompt_tokens, answer.usage.completion_tokens],
            "cost": answer.cost_usd, "local": answer.local_fallback}


def declare(orch: Orchestrator) -> SimpleNamespace:
    ask = Workflow("llm_ask", app=orch)

    @ask.task
    def answer(model: str, ctx: StepContext) -> dict[str, Any]:
        return completion(ctx.llm.complete("Classify: can't log in", model=model))

    as_json = Workflow("llm_json", app=orch)

    @as_json.task
    def parsed(model: str, kind: str, ctx: StepContext) -> Any:
        if kind == "pydantic":
            ticket = ctx.llm.complete_json("Ticket as JSON", schema=Ticket, model=model)
            assert isinstance(ticket, Ticket)
            return ticket.model_dump()
        return ctx.llm.complete_json("Ticket as JSON", schema=TICKET_SCHEMA, model=model)

    capped = Workflow("llm_capped", app=orch)

    @capped.task(retries=2, max_cost=1.0)
    def spend(model: str, ctx: StepContext) -> dict[str, Any]:
        return completion(ctx.llm.complete("Something expensive", model=model))

    budget = Workflow("llm_budget", budget=0.1, app=orch)

    @budget.task
    def first(ctx: StepContext) -> str:
        return ctx.llm.complete("first", model="budgeted").text

    @budget.task
    def second(first: str, ctx: StepContext) -> str:
        return ctx.llm.complete(f"second after {first}", model="budgeted-next").text

    bounded = Workflow("llm_bounded", app=orch)
    timed = Workflow("llm_timed", app=orch)

    @timed.task(timeout=5)
    def ask_in_time(ctx: StepContext) -> str:
        return ctx.llm.complete("quick?", model="timed").text

    @bounded.task(timeout=0.5)
    def wait_for_model(ctx: StepContext) -> str:
        return ctx.llm.complete("are you there?", model="hanging").text

    return SimpleNamespace(ask=ask, json=as_json, capped=capped, budget=budget,
                           bounded=bounded, timed=timed, orch=orch)


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    directory = tmp_path_factory.mktemp("llm")
    with FakeLLMServer(hang_limit_s=5) as server:
        models = directory / "models.yaml"
        models.write_text(CATALOGUE.replace("URL", server.url))
        with embedded_orchestrator(directory, models_file=models, redis_url=None) as orch:
            flows = declare(orch)
            flows.server = server
            yield flows


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-fake")
    monkeypatch.delenv(UNSET_ENV, raising=False)


def stats(llm: SimpleNamespace, model: str) -> dict[str, Any]:
    return llm.server.stats().get(model, {"requests": 0, "statuses": {}, "timestamps": []})


def test_happy_path_returns_the_completion_and_records_cost(llm: SimpleNamespace) -> None:
    llm.server.configure("happy", reply="Category: login", prompt_tokens=100,
                         completion_tokens=50)
    result = llm.ask.run(model="happy", timeout=10)
    assert result.status is RunStatus.SUCCEEDED
    out = result.outputs["answer"]
    cost = (100 * 1.0 + 50 * 2.0) / 1000
    assert out == {"text": "Category: login", "model": "happy", "provider": "fake",
                   "usage": [100, 50], "cost": pytest.approx(cost), "local": False}
    step = result.steps["answer"]
    assert (step.model, step.tokens_in, step.tokens_out) == ("happy", 100, 50)
    assert step.cost_usd == pytest.approx(cost) and result.cost_usd == pytest.approx(cost)
    # The stream's run_finished carries the run's spend (answered by the record that
    # ended the run).
    finished = list(RunHandle(result.run_id, llm.orch.store).stream(timeout=10))[-1]
    assert finished.type == "run_finished" and finished["cost_usd"] == pytest.approx(cost)
    seen = stats(llm, "happy")
    assert (seen["requests"], seen["with_auth"]) == (1, 1)
    assert seen["last_request"]["messages"] == [
        {"role": "user", "content": "Classify: can't log in"}]


def test_transient_500_is_retried(llm: SimpleNamespace) -> None:
    llm.server.configure("flaky", status_sequence=[500])
    result = llm.ask.run(model="flaky", timeout=10)
    assert result.outputs["answer"]["model"] == "flaky"
    assert stats(llm, "flaky")["statuses"] == {"500": 1, "200": 1}
    assert result.steps["answer"].attempts == 1  # retried inside the call, not the step


def test_client_error_is_not_retried_and_falls_back(llm: SimpleNamespace) -> None:
    llm.server.configure("rejecting", error_status=400, error_rate=1.0)
    result = llm.ask.run(model="rejecting", timeout=10)
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs["answer"]["model"] == "rejecting-backup"
    assert stats(llm, "rejecting")["statuses"] == {"400": 1}
    assert stats(llm, "rejecting-backup")["requests"] == 1
    assert result.steps["answer"].model == "rejecting-backup"


def test_open_breaker_goes_straight_to_the_fallback(llm: SimpleNamespace) -> None:
    breaker = llm.orch.resilience.breakers.get("tripped")

    def outage() -> None:
        raise ProviderError("HTTP 503", status=503)

    with pytest.raises(ProviderError):
        breaker.call(outage)
    assert breaker.state_name == "open"
    result = llm.ask.run(model="tripped", timeout=10)
    assert result.outputs["answer"]["model"] == "tripped-backup"
    assert stats(llm, "tripped")["requests"] == 0
    assert result.steps["answer"].attempt_log[0]["breaker"] == "tripped:open"


def test_429_waits_for_retry_after(llm: SimpleNamespace) -> None:
    # 0.5 s: more than the first backoff can be (0.2 s + up to 0.1 s jitter).
    llm.server.configure("throttled", status_sequence=[429], retry_after=0.5)
    result = llm.ask.run(model="throttled", timeout=10)
    assert result.outputs["answer"]["model"] == "throttled"
    seen = stats(llm, "throttled")
    assert seen["statuses"] == {"429": 1, "200": 1}
    first, second = seen["timestamps"]
    assert second - first >= 0.5


def test_every_model_failing_names_each_failure(llm: SimpleNamespace) -> None:
    llm.server.configure("down", error_rate=1.0, error_status=502)
    llm.server.configure("refusing", error_rate=1.0, error_status=403)
    result = llm.ask.run(model="down", timeout=10)
    step = result.steps["answer"]
    assert (result.status, step.status) == (RunStatus.FAILED, StepStatus.FAILED)
    assert step.error_type == "orchestration.errors.ProviderError"
    assert "no model answered (down: fake: HTTP 502 from down; " \
           "refusing: fake: HTTP 403 from refusing)" in step.error
    assert stats(llm, "down")["requests"] == 2  # retries: 1
    assert stats(llm, "refusing")["requests"] == 1  # 403: never retried


@pytest.mark.parametrize(("model", "behaviour", "kind"), [
    ("fenced", {"fenced_json": {"category": "login", "priority": 2}}, "pydantic"),
    ("prose", {"reply": 'I think {"category": "login", "priority": 2} fits best.'},
     "pydantic"),
    ("schemaful", {"reply": '```\n{"category": "login", "priority": 2}\n```'}, "schema"),
])
def test_complete_json(llm: SimpleNamespace, model: str, behaviour: dict[str, Any],
                       kind: str) -> None:
    llm.server.configure(model, **behaviour)
    result = llm.json.run(model=model, kind=kind, timeout=10)
    assert result.outputs["parsed"] == {"category": "login", "priority": 2}
    assert stats(llm, model)["requests"] == 1


def test_invalid_json_is_re_asked_then_fails(llm: SimpleNamespace) -> None:
    llm.server.configure("babbler", reply='{"category": "login", "priority": 0}',
                         prompt_tokens=10, completion_tokens=5)
    result = llm.json.run(model="babbler", kind="schema", timeout=10)
    step = result.steps["parsed"]
    assert step.status is StepStatus.FAILED
    assert step.error_type == "orchestration.errors.InvalidModelOutput"
    assert "no valid JSON after 3 call(s)" in step.error and "minimum" in step.error
    seen = stats(llm, "babbler")
    assert seen["requests"] == 3
    messages = seen["last_request"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[-1]["content"].startswith("That answer is not valid:")
    assert step.cost_usd == pytest.approx(3 * 0.015)  # every call's cost counts


def test_max_cost_stops_the_step_without_retries(llm: SimpleNamespace) -> None:
    llm.server.configure("pricey", prompt_tokens=100, completion_tokens=100)
    result = llm.capped.run(model="pricey", timeout=10)
    step = result.steps["spend"]
    assert (step.status, step.attempts) == (StepStatus.FAILED, 1)
    assert step.error_type == "orchestration.errors.BudgetExceeded"
    assert "max_cost" in step.error
    assert stats(llm, "pricey")["requests"] == 1
    assert step.cost_usd == pytest.approx(2.0)  # what was spent is still recorded


def test_run_budget_stops_the_next_llm_step(llm: SimpleNamespace) -> None:
    llm.server.configure("budgeted", prompt_tokens=200, completion_tokens=10)
    result = llm.budget.run(timeout=10)
    assert result.steps["first"].status is StepStatus.SUCCEEDED
    second = result.steps["second"]
    assert (second.status, second.error_type) == (StepStatus.FAILED,
                                                  "orchestration.errors.BudgetExceeded")
    assert "budget" in second.error
    assert stats(llm, "budgeted-next")["requests"] == 0
    assert result.status is RunStatus.FAILED
    assert result.cost_usd == pytest.approx(0.2)


# The provider's own timeout (the step's remaining time) and the step timeout expire together:
# whichever wins, the attempt thread must end quietly (see the next test).
def test_step_timeout_bounds_a_hanging_call(llm: SimpleNamespace) -> None:
    llm.server.configure("hanging", hang=True)
    result = llm.bounded.run(timeout=10)
    step = result.steps["wait_for_model"]
    assert step.status is StepStatus.FAILED
    # Ended by a timeout (the step's, or the provider's set to the step's remaining time),
    # not by the fake closing the request after its hang limit (a "connection closed").
    timed_out = {"orchestration.errors.StepTimeout": "timeout of 0.5 s",
                 "orchestration.errors.ProviderError": "timed out calling hanging"}
    assert step.error_type in timed_out, step.error_type
    assert timed_out[step.error_type] in (step.error or ""), step.error
    assert stats(llm, "hanging")["requests"] == 1  # no retry past the deadline
    wait_futures(abandoned(), timeout=3)  # so whatever it leaves behind is reported here


def test_a_step_with_a_timeout_keeps_its_provider_connection(llm: SimpleNamespace) -> None:
    # Each attempt under a timeout runs on another thread; the provider keeps one
    # connection per thread. Threads started per attempt opened one connection per run and
    # never closed it (12 open after 12 runs); kept threads reuse theirs: at most one
    # connection each (the pool is the process's, so earlier tests may have grown it).
    before = llm.server.open_connections()
    for _ in range(12):
        result = llm.timed.run(timeout=10)
        assert result.status is RunStatus.SUCCEEDED, result.error
    assert stats(llm, "timed")["requests"] == 12
    kept = [t for t in threading.enumerate() if t.name.startswith("attempt_")]
    assert llm.server.open_connections() - before <= len(kept)


def test_abandoned_attempt_thread_stops_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    escaped: list[str] = []
    monkeypatch.setattr(threading, "excepthook",
                        lambda args: escaped.append(type(args.exc_value).__name__))
    # A blocking call that gives up (its own timeout) just after the step's timeout.
    with pytest.raises(StepTimeout):
        call_with_timeout(queue.SimpleQueue().get, {"timeout": 0.15}, 0.05)
    unwinding = abandoned()
    assert unwinding  # its thread is still blocked in get()
    assert wait_futures(unwinding, timeout=2).not_done == set()
    assert escaped == []


def test_model_without_its_key_is_skipped(llm: SimpleNamespace) -> None:
    result = llm.ask.run(model="ghost", timeout=10)
    out = result.outputs["answer"]
    assert (out["model"], out["local"]) == ("stand-in", False)
    assert stats(llm, "ghost")["requests"] == 0


def test_shutdown_closes_provider_connections(tmp_path: Path, llm: SimpleNamespace) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(CATALOGUE.replace("URL", llm.server.url))
    with embedded_orchestrator(tmp_path, models_file=models, redis_url=None) as orch:
        provider = orch.resilience.provider("fake")
        assert provider is not None
        provider.complete([{"role": "user", "content": "hi"}], model="stand-in", timeout=5)
        assert provider._client.open_connections == 1  # type: ignore[attr-defined]
    assert provider._client.open_connections == 0  # type: ignore[attr-defined]


# -- extract_json ---------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ('{"a": 1}', {"a": 1}),
    ('  [1, 2]\n', [1, 2]),
    ("42", 42),
    ('```json\n{"a": 1}\n```', {"a": 1}),
    ('Here:\n```\n{"a": [1, {"b": null}]}\n```\nDone.', {"a": [1, {"b": None}]}),
    ('Sure: {"a": "x"} as asked', {"a": "x"}),
    ('See [note] and {broken then {"ok": true}.', {"ok": True}),
    ('List: [1, 2, 3] and more', [1, 2, 3]),
    ('```JSON\n{"a": 1}\n```', {"a": 1}),
    ('{"text": "a } b"}', {"text": "a } b"}),
])
def test_extract_json(text: str, expected: Any) -> None:
    assert extract_json(text) == expected


@pytest.mark.parametrize("text", ["", "no JSON here", "{not: json}", "```\nnope\n```"])
def test_extract_json_without_json(text: str) -> None:
    with pytest.raises(ValueError, match="no JSON value found"):
        extract_json(text)
