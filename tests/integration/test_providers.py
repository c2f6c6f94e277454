"""Model calls through real workers against a fault-injecting LLM API (``complete`` in
plain steps, ``acomplete`` in async def steps).

A fake OpenAI-compatible server (``tests/fakes/llm_server.py``) runs in this process;
two prefork workers (one child process each, so a run sent to a worker's own queue runs
in a known process) consume ``it.providers`` and a queue of their own, with a model
catalogue written at run time that points provider ``fake`` at the server. Breaker
state and rate limits are shared through the test Redis (DB 15), whose ``orchestration:*``
keys are deleted between tests, as are the fake's behaviours and request log.

What a test asserts about requests it reads from the server's own log (arrival
timestamps and bodies per model), never from what the engine says it did.

The test process submits runs with the default orchestrator of the suite (its catalogue
is the packaged one): only the workers make model calls, so only they need this one.
"""

from __future__ import annotations

import bisect
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pybreaker
import pytest
import redis

from orchestration import RunResult, RunStatus, StepStatus, Workflow
from orchestration.core import keys as orch_keys
from tests.fakes.llm_server import FakeLLMClient, FakeLLMServer
from tests.integration.support.helpers import wait_until
from tests.integration.support.workflows import providers as pw
from tests.support.workers import Worker, Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

KEY_ENV = "FAKE_LLM_KEY"
HANG_LIMIT_S = 30.0
RUN_TIMEOUT_S = 30.0

PRIMARY_FAIL_MAX = 3
PRIMARY_RESET_S = 2.0
EARLY_RESET_S = 2.0
FRAGILE_RESET_S = 1.0
LIMIT_REQUESTS, LIMIT_WINDOW_S = 5, 1.0
RETRY_AFTER_S = 0.5

# priced-a: 200 prompt and 100 completion tokens at $0.01 / $0.03 per 1k = $0.005 a call.
A_TOKENS = (200, 100)
A_COST = (200 * 0.01 + 100 * 0.03) / 1000
# priced-b: 1000 and 500 tokens at $0.002 / $0.004 per 1k = $0.004 a call.
B_TOKENS = (1000, 500)
B_COST = (1000 * 0.002 + 500 * 0.004) / 1000
# flaky: 100 and 50 tokens at $0.01 / $0.02 per 1k = $0.002 a call.
FLAKY_TOKENS = (100, 50)
FLAKY_COST = (100 * 0.01 + 50 * 0.02) / 1000


def catalogue(base_url: str) -> dict[str, Any]:
    """The model catalogue of the provider workers (every model on the fake server)."""
    def model(**options: Any) -> dict[str, Any]:
        return {"provider": "fake", "retries": 0, **options}

    return {
        "providers": {"fake": {"kind": "openai", "base_url": base_url, "api_key_env": KEY_ENV}},
        "models": {
            "primary": model(fallbacks=["backup"], retries=1,
                             breaker={"fail_max": PRIMARY_FAIL_MAX,
                                      "reset_timeout": PRIMARY_RESET_S},
                             input_cost_per_1k=0.001, output_cost_per_1k=0.002),
            "backup": model(input_cost_per_1k=0.0005, output_cost_per_1k=0.001),
            "early": model(fallbacks=["backup"],
                           breaker={"fail_max": 1, "reset_timeout": EARLY_RESET_S}),
            "fragile": model(fallbacks=["backup"], retries=1,
                             breaker={"fail_max": 3, "reset_timeout": FRAGILE_RESET_S}),
            "flaky": model(retries=1, input_cost_per_1k=0.01, output_cost_per_1k=0.02),
            "limited": model(rate_limit={"requests": LIMIT_REQUESTS, "window": LIMIT_WINDOW_S}),
            "priced-a": model(input_cost_per_1k=0.01, output_cost_per_1k=0.03),
            "priced-b": model(input_cost_per_1k=0.002, output_cost_per_1k=0.004),
            "json-fenced": model(),
            "json-prose": model(),
            "json-echo": model(),
            "gate-1": model(), "gate-2": model(), "gate-3": model(),
            "throttled": model(retries=1),
            # Its own call timeout is short, so the fallback model has time left to answer.
            "hang-short": model(timeout=0.3, fallbacks=["backup"]),
            # Only the step's timeout bounds this one.
            "hang-long": model(),
        },
        "default_model": "backup",
    }


# -- fixtures ------------------------------------------------------------------------------


@dataclass
class ProviderWorkers:
    """The two provider workers."""

    w1: Worker
    w2: Worker


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(hang_limit_s=HANG_LIMIT_S) as server:
        yield server


@pytest.fixture(scope="module")
def provider_workers(workers: Workers, worker_logs: Path, fake_server: FakeLLMServer,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProviderWorkers]:
    models_file = tmp_path_factory.mktemp("providers") / "models.yaml"
    models_file.write_text(json.dumps(catalogue(fake_server.url), indent=2))  # JSON is YAML
    env = dict(os.environ, ORCH_MODELS_FILE=str(models_file), **{KEY_ENV: "sk-fake-test"},
               ORCH_IMPORTS="tests.integration.support.workflows.providers")
    pool = Workers(worker_logs, env=env)
    try:
        w1 = pool.start("it-prov-1", [pw.PROVIDERS_QUEUE, pw.W1_QUEUE], pool="prefork",
                        concurrency=1, wait=False)
        w2 = pool.start("it-prov-2", [pw.PROVIDERS_QUEUE, pw.W2_QUEUE], pool="prefork",
                        concurrency=1, wait=False)
        pool.wait_ready(w1)
        pool.wait_ready(w2)
        yield ProviderWorkers(w1, w2)
    finally:
        pool.stop_all()


@pytest.fixture
def fake(fake_server: FakeLLMServer, provider_workers: ProviderWorkers,
         redis_service: redis.Redis) -> Iterator[FakeLLMClient]:
    """The fake's control client, everything reset: behaviours, request log, breakers, limits."""
    def clean() -> None:
        fake_server.reset()
        for key in redis_service.scan_iter(match=f"{orch_keys.PREFIX}:*"):
            redis_service.delete(key)

    clean()
    with FakeLLMClient(fake_server.url) as client:
        yield client
    clean()


# -- helpers -------------------------------------------------------------------------------


def breaker_state(client: redis.Redis, model: str) -> str:
    """A model's breaker state as every worker sees it (the shared Redis storage)."""
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client,
                                            namespace=orch_keys.breaker_namespace(model))
    return str(storage.state)


def submit_all(runs: list[tuple[Workflow, dict[str, Any]]]) -> list[RunResult]:
    """Submit every run first, then wait for each."""
    handles = [workflow.submit(**inputs) for workflow, inputs in runs]
    return [handle.wait(timeout=RUN_TIMEOUT_S) for handle in handles]


def answered(run: RunResult, step: str = "ask") -> dict[str, Any]:
    """The step's output, after checking the run succeeded."""
    assert run.status is RunStatus.SUCCEEDED, (run.error, run.steps[step].error)
    output = run.steps[step].output
    assert isinstance(output, dict)
    return output


def breakers_seen(run: RunResult, step: str = "ask") -> list[str | None]:
    """The non-closed breakers each attempt of the step met (``model:state, ...``)."""
    return [entry["breaker"] for entry in run.steps[step].attempt_log]


def busiest_window(times: list[float], window: float) -> int:
    """The most requests in any window of ``window`` seconds starting at a request."""
    ordered = sorted(times)
    return max((bisect.bisect_left(ordered, start + window) - index
                for index, start in enumerate(ordered)), default=0)


def sleep_until_second_fraction(fraction: float) -> None:
    """Wait until the wall clock is ``fraction`` of a second past a whole second."""
    time.sleep((fraction - time.time() % 1.0) % 1.0)


# -- 1. retries at the call level ----------------------------------------------------------


def test_a_5xx_is_retried_and_only_the_answered_call_is_paid(fake: FakeLLMClient) -> None:
    fake.configure("flaky", status_sequence=[500, 200], prompt_tokens=FLAKY_TOKENS[0],
                   completion_tokens=FLAKY_TOKENS[1])

    run = pw.ask.run(prompt="hello", model="flaky", timeout=RUN_TIMEOUT_S)

    output = answered(run)
    assert output["model"] == "flaky"
    assert output["text"] == "[flaky] echo: hello"
    stats = fake.stats()["flaky"]
    assert stats["requests"] == 2
    assert stats["statuses"] == {"500": 1, "200": 1}
    assert stats["with_auth"] == 2  # the key from FAKE_LLM_KEY went with every request
    step = run.steps["ask"]
    # The retry happened inside the model call: one step attempt.
    assert step.attempts == 1
    assert step.model == "flaky"
    assert step.cost_usd == pytest.approx(FLAKY_COST)
    assert output["cost"] == pytest.approx(FLAKY_COST)
    assert (step.tokens_in, step.tokens_out) == FLAKY_TOKENS
    assert run.cost_usd == pytest.approx(FLAKY_COST)


# -- 2. a breaker shared by two worker processes -------------------------------------------


def test_breaker_opens_for_every_worker_and_one_probe_closes_it(
    fake: FakeLLMClient, provider_workers: ProviderWorkers, redis_service: redis.Redis
) -> None:
    w1, w2 = provider_workers.w1.nodename, provider_workers.w2.nodename
    fake.configure("primary", error_rate=1.0)  # every request: HTTP 500

    # Worker 1: the call and its retry fail (2 failures, counted in Redis); backup answers.
    run = pw.ask_w1.run(prompt="one", model="primary", timeout=RUN_TIMEOUT_S)
    assert answered(run)["model"] == "backup"
    assert run.steps["ask"].worker == w1
    assert len(fake.requests("primary")) == 2
    assert breaker_state(redis_service, "primary") == "closed"

    # Worker 2: its first failure is the third of the shared count, so the breaker opens
    # and the retry of that same call is not sent.
    run = pw.ask_w2.run(prompt="two", model="primary", timeout=RUN_TIMEOUT_S)
    assert answered(run)["model"] == "backup"
    assert run.steps["ask"].worker == w2
    primary = fake.requests("primary")
    assert len(primary) == PRIMARY_FAIL_MAX
    assert breaker_state(redis_service, "primary") == "open"
    opened = primary[-1]

    # While open: runs on both workers go straight to backup; primary hears nothing.
    open_runs = submit_all([(pw.ask_w1, {"prompt": "a", "model": "primary"}),
                            (pw.ask_w2, {"prompt": "b", "model": "primary"}),
                            (pw.ask, {"prompt": "c", "model": "primary"}),
                            (pw.ask_w1, {"prompt": "d", "model": "primary"}),
                            (pw.ask_w2, {"prompt": "e", "model": "primary"}),
                            (pw.ask, {"prompt": "f", "model": "primary"})])
    assert fake.requests("primary") == primary
    for run in open_runs:
        assert answered(run)["model"] == "backup"
        assert breakers_seen(run) == ["primary:open"]
    assert {run.steps["ask"].worker for run in open_runs} == {w1, w2}
    assert all(run.finished_at is not None and run.finished_at.timestamp() < opened
               + PRIMARY_RESET_S for run in open_runs), "the open phase outlasted the timeout"

    # Primary recovers (slowly, so the probe is still in flight when the second run asks).
    fake.configure("primary", latency_ms=1000)
    wait_until(lambda: time.time() > opened + PRIMARY_RESET_S + 0.1,
               timeout=PRIMARY_RESET_S + 1, what="the reset timeout", interval=0.02)
    probing = submit_all([(pw.ask_w1, {"prompt": "probe?", "model": "primary"}),
                          (pw.ask_w2, {"prompt": "probe?", "model": "primary"})])
    assert len(fake.requests("primary", since=opened + 1e-3)) == 1  # exactly one probe
    by_model = {answered(run)["model"]: run for run in probing}
    assert set(by_model) == {"primary", "backup"}
    assert breakers_seen(by_model["backup"]) == ["primary:half-open"]
    assert breaker_state(redis_service, "primary") == "closed"

    # Closed again: both workers' runs are answered by primary.
    later = submit_all([(pw.ask_w1, {"prompt": "x", "model": "primary"}),
                        (pw.ask_w2, {"prompt": "y", "model": "primary"})])
    for run in later:
        assert answered(run)["model"] == "primary"
        assert breakers_seen(run) == [None]
    assert len(fake.requests("primary", since=opened + 1e-3)) == 3


def test_open_breaker_sends_nothing_for_its_whole_reset_timeout(
    fake: FakeLLMClient, redis_service: redis.Redis
) -> None:
    """Regression: pybreaker's Redis storage kept ``opened_at`` in whole seconds, so a
    shared breaker half-opened up to 1 s early (here ~0.3-0.7 s early, by construction)."""
    fake.configure("early", error_rate=1.0)
    # Open it (fail_max 1) about 0.3 s past a whole second of the wall clock.
    sleep_until_second_fraction(0.3)
    assert answered(pw.ask.run(prompt="open", model="early", timeout=RUN_TIMEOUT_S))[
        "model"] == "backup"
    (opened,) = fake.requests("early")
    assert breaker_state(redis_service, "early") == "open"

    # Keep asking, one run at a time, until the reset timeout has surely passed.
    while time.time() < opened + EARLY_RESET_S + 0.3:
        assert answered(pw.ask.run(prompt="again", model="early", timeout=RUN_TIMEOUT_S))[
            "model"] == "backup"

    probes = fake.requests("early", since=opened + 1e-3)
    assert probes, "no probe after the reset timeout"
    assert probes[0] >= opened + EARLY_RESET_S - 0.05, (
        f"probe sent {probes[0] - opened:.2f} s after the breaker opened "
        f"(reset_timeout {EARLY_RESET_S:g} s)")


def test_failures_after_a_close_are_counted_across_workers(
    fake: FakeLLMClient, redis_service: redis.Redis
) -> None:
    """Regression: a worker that had seen the breaker open, on noticing it closed, reset
    the shared failure counter (pybreaker's ``CircuitClosedState(notify=True)``), erasing
    failures other workers had counted since the close."""
    fake.configure("fragile", error_rate=1.0)
    # Worker 1 opens the breaker (fail_max 3: its two calls x (1 + 1 retry), 3 requests).
    pw.ask_w1.run(prompt="1", model="fragile", timeout=RUN_TIMEOUT_S)
    pw.ask_w1.run(prompt="2", model="fragile", timeout=RUN_TIMEOUT_S)
    assert len(fake.requests("fragile")) == 3
    assert breaker_state(redis_service, "fragile") == "open"
    # Worker 2 sees it open (and remembers that).
    run = pw.ask_w2.run(prompt="3", model="fragile", timeout=RUN_TIMEOUT_S)
    assert breakers_seen(run) == ["fragile:open"]

    # Fragile recovers; worker 1 probes it after the reset timeout and the breaker closes.
    fake.configure("fragile")
    wait_until(lambda: answered(pw.ask_w1.run(prompt="probe", model="fragile",
                                              timeout=RUN_TIMEOUT_S))["model"] == "fragile",
               timeout=FRAGILE_RESET_S + 3, what="a successful probe", interval=0.05)
    assert breaker_state(redis_service, "fragile") == "closed"

    # Fragile fails again: two failures on worker 1, then a third on worker 2 must open it
    # (and worker 2's retry must not be sent).
    fake.configure("fragile", error_rate=1.0)
    pw.ask_w1.run(prompt="4", model="fragile", timeout=RUN_TIMEOUT_S)
    before = len(fake.requests("fragile"))
    run = pw.ask_w2.run(prompt="5", model="fragile", timeout=RUN_TIMEOUT_S)
    assert answered(run)["model"] == "backup"
    sent = len(fake.requests("fragile")) - before
    assert (sent, breaker_state(redis_service, "fragile")) == (1, "open"), (
        f"worker 2 sent {sent} request(s) after 2 consecutive failures; the 3rd did not "
        "open the breaker")


# -- 3. cost and budgets -------------------------------------------------------------------


def test_cost_is_recorded_per_step_and_summed_on_the_run(fake: FakeLLMClient) -> None:
    fake.configure("priced-a", prompt_tokens=A_TOKENS[0], completion_tokens=A_TOKENS[1])
    fake.configure("priced-b", prompt_tokens=B_TOKENS[0], completion_tokens=B_TOKENS[1])

    run = pw.costs.run(prompt="price me", timeout=RUN_TIMEOUT_S)

    assert run.status is RunStatus.SUCCEEDED, run.error
    first, second = run.steps["first"], run.steps["second"]
    assert (first.model, second.model) == ("priced-a", "priced-b")
    assert first.cost_usd == pytest.approx(A_COST)
    assert second.cost_usd == pytest.approx(B_COST)
    assert (first.tokens_in, first.tokens_out) == A_TOKENS
    assert (second.tokens_in, second.tokens_out) == B_TOKENS
    assert first.attempt_log[0]["cost_usd"] == pytest.approx(A_COST)
    assert run.cost_usd == pytest.approx(A_COST + B_COST)


def test_max_cost_stops_a_step_without_retrying(fake: FakeLLMClient) -> None:
    fake.configure("priced-a", prompt_tokens=A_TOKENS[0], completion_tokens=A_TOKENS[1])
    assert A_COST < pw.MAX_COST < 2 * A_COST

    run = pw.max_cost.run(prompt="spend", timeout=RUN_TIMEOUT_S)

    assert run.status is RunStatus.FAILED
    step = run.steps["spend"]
    assert step.status is StepStatus.FAILED
    assert step.attempts == 1  # retries=2, but a spent budget is not retried
    assert step.error_type is not None and "BudgetExceeded" in step.error_type
    # The second call crossed max_cost; no third call was made.
    assert fake.stats()["priced-a"]["requests"] == 2
    assert step.cost_usd == pytest.approx(2 * A_COST)
    assert run.cost_usd == pytest.approx(2 * A_COST)


def test_run_budget_stops_later_model_calls(fake: FakeLLMClient) -> None:
    fake.configure("priced-a", prompt_tokens=A_TOKENS[0], completion_tokens=A_TOKENS[1])
    assert A_COST < pw.RUN_BUDGET <= 2 * A_COST  # two calls fit under it, not a third

    run = pw.budget.run(prompt="chain", timeout=RUN_TIMEOUT_S)

    assert run.status is RunStatus.FAILED
    assert run.steps["s1"].status is StepStatus.SUCCEEDED
    assert run.steps["s2"].status is StepStatus.SUCCEEDED
    s3 = run.steps["s3"]
    assert s3.status is StepStatus.FAILED
    assert s3.attempts == 1
    assert s3.error_type is not None and "BudgetExceeded" in s3.error_type
    assert s3.cost_usd == 0
    assert fake.stats()["priced-a"]["requests"] == 2
    assert run.cost_usd == pytest.approx(2 * A_COST)


# -- 4. a rate limit shared by two workers -------------------------------------------------


def test_rate_limit_is_shared_by_two_workers(
    fake: FakeLLMClient, provider_workers: ProviderWorkers
) -> None:
    runs = submit_all([(pw.ask, {"prompt": f"r{index}", "model": "limited"})
                       for index in range(20)])

    for run in runs:
        assert answered(run)["model"] == "limited"
    assert {run.steps["ask"].worker for run in runs} == {
        provider_workers.w1.nodename, provider_workers.w2.nodename}
    times = fake.requests("limited")
    assert len(times) == 20
    # Admission is timed by Redis, arrival by the fake: allow 50 ms between the two.
    assert busiest_window(times, LIMIT_WINDOW_S - 0.05) <= LIMIT_REQUESTS, sorted(times)
    # 20 requests at 5 per second: the last 5 cannot start before 3 windows have passed.
    assert max(times) - min(times) >= 3 * LIMIT_WINDOW_S - 0.05


# -- 5. JSON answers -----------------------------------------------------------------------


def test_fenced_json_is_parsed_on_the_first_answer(fake: FakeLLMClient) -> None:
    fake.configure("json-fenced", fenced_json={"name": "Ada", "score": 7})

    run = pw.json_person.run(prompt="who?", model="json-fenced", timeout=RUN_TIMEOUT_S)

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.steps["person"].output == {"name": "Ada", "score": 7}
    assert fake.stats()["json-fenced"]["requests"] == 1


def test_invalid_json_is_asked_again_then_fails(fake: FakeLLMClient) -> None:
    fake.configure("json-prose", reply='Sure! The person is {"name": "Ada", "score": }.')

    run = pw.json_person.run(prompt="who?", model="json-prose", timeout=RUN_TIMEOUT_S)

    assert run.status is RunStatus.FAILED
    step = run.steps["person"]
    assert step.status is StepStatus.FAILED
    assert step.error_type == "orchestration.errors.InvalidModelOutput"
    stats = fake.stats()["json-prose"]
    assert stats["requests"] == 3  # attempts=3
    # The last re-ask carried the whole conversation: each answer and why it was refused.
    messages = stats["last_request"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"].startswith("Sure! The person is")
    assert "not valid" in messages[-1]["content"]


def test_a_refused_json_answer_is_corrected_on_the_re_ask(fake: FakeLLMClient) -> None:
    # The fake echoes the last user message: first "[5]" (not in the enum), then the
    # engine's re-ask, whose reason quotes the allowed values "[1, 2]" (valid).
    run = pw.json_pick.run(prompt="Pick: [5]", timeout=RUN_TIMEOUT_S)

    assert run.status is RunStatus.SUCCEEDED, (run.error, run.steps["pick"].error)
    assert run.steps["pick"].output == [1, 2]
    stats = fake.stats()["json-echo"]
    assert stats["requests"] == 2
    assert "5 is not one of [1, 2]" in stats["last_request"]["messages"][-1]["content"]


# -- 6. quality gate, on_retry, fallback ---------------------------------------------------


def test_gate_failures_retry_with_new_params_then_fall_back(fake: FakeLLMClient) -> None:
    run = pw.gated.run(prompt="review this", timeout=RUN_TIMEOUT_S)

    assert run.status is RunStatus.SUCCEEDED, run.error
    step = run.steps["review"]
    assert step.status is StepStatus.FALLBACK
    assert step.output == pw.GATE_FALLBACK
    assert step.attempts == 3
    assert step.error_type == "orchestration.errors.GateFailed"
    log = step.attempt_log
    assert [entry["status"] for entry in log] == ["failed"] * 3
    assert all(entry["gate"] == "failed: the answer is not APPROVED" for entry in log), log
    assert [entry["model"] for entry in log] == ["gate-1", "gate-2", "gate-3"]
    # One model per attempt, so the fake's last request of each is that attempt's request.
    stats = fake.stats()
    assert [stats[f"gate-{n}"]["requests"] for n in (1, 2, 3)] == [1, 1, 1]
    temperatures = [stats[f"gate-{n}"]["last_request"]["temperature"] for n in (1, 2, 3)]
    assert temperatures == pytest.approx([0.2, 0.5, 0.8])


# -- 7. 429 with Retry-After ----------------------------------------------------------------


def test_429_retry_after_is_honoured(fake: FakeLLMClient) -> None:
    fake.configure("throttled", status_sequence=[429, 200], retry_after=RETRY_AFTER_S)

    run = pw.ask.run(prompt="slowly", model="throttled", timeout=RUN_TIMEOUT_S)

    assert answered(run)["model"] == "throttled"
    stats = fake.stats()["throttled"]
    assert stats["statuses"] == {"429": 1, "200": 1}
    first, second = stats["timestamps"]
    # The engine's own first backoff is ~0.2 s: only Retry-After explains the wait.
    assert second - first >= RETRY_AFTER_S


# -- 8. a model that never answers ----------------------------------------------------------


def test_hanging_model_times_out_and_the_fallback_model_answers(fake: FakeLLMClient) -> None:
    fake.configure("hang-short", hang=True)

    run = pw.hang.run(prompt="anyone?", model="hang-short", timeout=RUN_TIMEOUT_S)

    output = answered(run)
    # Answered by the fallback model inside the step's 1 s timeout (else the step's own
    # fallback would stand): the model's 0.3 s call timeout cut the hang, not the fake's
    # HANG_LIMIT_S.
    assert output["model"] == "backup"
    assert run.steps["ask"].status is StepStatus.SUCCEEDED
    assert run.steps["ask"].attempts == 1
    assert fake.stats()["hang-short"]["hung"] == 1


def test_hanging_model_is_cut_by_the_step_timeout_and_its_fallback(
    fake: FakeLLMClient
) -> None:
    fake.configure("hang-long", hang=True)

    run = pw.hang.run(prompt="anyone?", model="hang-long", timeout=RUN_TIMEOUT_S)

    assert run.status is RunStatus.SUCCEEDED, run.error
    step = run.steps["ask"]
    assert step.status is StepStatus.FALLBACK
    assert step.output == pw.STEP_FALLBACK
    assert fake.stats()["hang-long"]["hung"] == 1
    # Cut by the step's 1 s timeout (the step's remaining time bounds the call too); the
    # fake would hold the request for HANG_LIMIT_S and then close it unanswered.
    timed_out = {"orchestration.errors.StepTimeout": "timeout of 1 s",
                 "orchestration.errors.ProviderError": "timed out calling hang-long"}
    assert step.error_type in timed_out, (step.error_type, step.error)
    assert timed_out[step.error_type] in (step.error or ""), step.error


# -- awaited calls: ``await ctx.llm.acomplete`` in async def steps ----------------------------
# The call is made on the worker process's event loop (its own connections, in the forked
# child), under the same retries, costs, fallback models and shared breakers.


def test_an_awaited_call_is_retried_and_only_the_answered_call_is_paid(
        fake: FakeLLMClient) -> None:
    fake.configure("flaky", status_sequence=[500, 200], prompt_tokens=FLAKY_TOKENS[0],
                   completion_tokens=FLAKY_TOKENS[1])

    run = pw.aask.run(prompt="hello", model="flaky", timeout=RUN_TIMEOUT_S)

    output = answered(run)
    assert (output["model"], output["text"]) == ("flaky", "[flaky] echo: hello")
    stats = fake.stats()["flaky"]
    assert stats["statuses"] == {"500": 1, "200": 1}
    assert stats["with_auth"] == 2
    step = run.steps["ask"]
    assert step.attempts == 1  # the retry happened inside the call
    assert step.cost_usd == pytest.approx(FLAKY_COST)
    assert (step.tokens_in, step.tokens_out) == FLAKY_TOKENS


def test_an_async_map_of_model_calls_pays_for_every_element(fake: FakeLLMClient) -> None:
    fake.configure("priced-a", latency_ms=50, prompt_tokens=A_TOKENS[0],
                   completion_tokens=A_TOKENS[1])
    prompts = [f"p{i}" for i in range(40)]

    run = pw.amap.run(prompts=prompts, model="priced-a", timeout=RUN_TIMEOUT_S)

    assert run.status is RunStatus.SUCCEEDED, run.error
    output = run.outputs["ask"]
    assert [item["text"] for item in output] == [f"[priced-a] echo: {p}" for p in prompts]
    assert fake.stats()["priced-a"]["requests"] == len(prompts)
    assert run.steps["ask"].cost_usd == pytest.approx(A_COST * len(prompts))
    assert run.cost_usd == pytest.approx(A_COST * len(prompts))


def test_awaited_calls_open_the_shared_breaker_and_the_fallback_answers(
        fake: FakeLLMClient, provider_workers: ProviderWorkers,
        redis_service: redis.Redis) -> None:
    fake.configure("primary", error_rate=1.0)  # every request: HTTP 500

    # Worker 1: the call and its retry fail (2 of fail_max 3, counted in Redis); worker
    # 2: its first failure is the third, so the breaker opens for both.
    first = pw.aask_w1.run(prompt="one", model="primary", timeout=RUN_TIMEOUT_S)
    second = pw.aask_w2.run(prompt="two", model="primary", timeout=RUN_TIMEOUT_S)

    assert answered(first)["model"] == answered(second)["model"] == "backup"
    assert first.steps["ask"].worker == provider_workers.w1.nodename
    assert second.steps["ask"].worker == provider_workers.w2.nodename
    assert len(fake.requests("primary")) == PRIMARY_FAIL_MAX
    assert breaker_state(redis_service, "primary") == "open"

    # Open: awaited calls on either worker skip primary.
    later = submit_all([(pw.aask_w1, {"prompt": "a", "model": "primary"}),
                        (pw.aask_w2, {"prompt": "b", "model": "primary"})])
    for run in later:
        assert answered(run)["model"] == "backup"
        assert breakers_seen(run) == ["primary:open"]
    assert len(fake.requests("primary")) == PRIMARY_FAIL_MAX
