"""``async def`` steps on the embedded default: the worker's event loop runs them under the
same policies as plain steps (timeout by cancellation, retries, fallback, ctx.llm's
breakers and fallback models), a cancelled run cancels them, and an async map's elements
wait together as tasks on the loop.

No timed assertions: anything that takes time is polled with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from orchestration import RunStatus, StepContext, StepStatus, Workflow
from orchestration.app import Orchestrator
from orchestration.errors import WorkflowDefinitionError
from orchestration.execute.event_loop import stop_worker_loop, worker_loop
from orchestration.testing import embedded_orchestrator
from tests.fakes.llm_server import FakeLLMServer

KEY_ENV = "TEST_ASYNC_STEPS_LLM_KEY"
CATALOGUE = """
providers:
  fake: {kind: openai, base_url: "URL", api_key_env: TEST_ASYNC_STEPS_LLM_KEY}
models:
  tripped: {provider: fake, retries: 0, fallbacks: [backup],
            breaker: {fail_max: 1, reset_timeout: 600}}
  backup: {provider: fake, retries: 0}
default_model: backup
"""
MAP_SIZE = 2_000
seen: dict[str, Any] = {}  # what the coroutines saw, by test


def declare(orch: Orchestrator) -> SimpleNamespace:
    ns = SimpleNamespace()
    declare_policies(orch, ns)
    declare_llm_cancel_map(orch, ns)
    return ns


def declare_policies(orch: Orchestrator, ns: SimpleNamespace) -> None:
    ns.simple = Workflow("async_simple", inputs=["text"], app=orch)

    @ns.simple.task
    async def shout(text: str) -> str:
        await asyncio.sleep(0)
        return text.upper()

    @ns.simple.task
    def after(shout: str) -> str:  # a plain step after an async one
        return f"{shout}!"

    ns.timed = Workflow("async_timed", inputs=["key"], app=orch)

    @ns.timed.task(timeout=0.2, retries=1, backoff=0.01)
    async def hangs(key: str) -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.setdefault(key, []).append("cancelled")
            raise
        return "never"

    ns.timed_fallback = Workflow("async_timed_fallback", inputs=["key"], app=orch)

    @ns.timed_fallback.task(timeout=0.2, fallback="fallback value")
    async def hangs_then_falls_back(key: str) -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.setdefault(key, []).append("cancelled")
            raise
        return "never"

    ns.flaky = Workflow("async_flaky", inputs=["key"], app=orch)

    @ns.flaky.task(retries=3, backoff=0.01)
    async def flaky(key: str, ctx: StepContext) -> int:
        await asyncio.sleep(0.001)
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} failed")
        return ctx.attempt


def declare_llm_cancel_map(orch: Orchestrator, ns: SimpleNamespace) -> None:
    ns.llm = Workflow("async_llm", inputs=["prompt"], app=orch)

    @ns.llm.task
    async def ask(prompt: str, ctx: StepContext) -> dict[str, Any]:
        first = await ctx.llm.acomplete(prompt, model="tripped")
        second = await ctx.llm.acomplete(prompt, model="tripped")
        return {"models": [first.model, second.model]}

    ns.cancel = Workflow("async_cancel", inputs=["key"], app=orch)

    @ns.cancel.task
    async def long_wait(key: str) -> str:
        seen[key] = "started"
        try:
            await asyncio.sleep(120)
        except asyncio.CancelledError:
            seen[key] = "cancelled"
            raise
        return "finished"

    ns.cancel_map = Workflow("async_cancel_map", inputs=["items"], app=orch)

    @ns.cancel_map.task(map="items", chunk_size=50, concurrency=50)
    async def wait_long(items: int) -> int:
        seen.setdefault("map started", []).append(items)
        try:
            await asyncio.sleep(120)
        except asyncio.CancelledError:
            seen.setdefault("map cancelled", []).append(items)
            raise
        return items

    ns.map = Workflow("async_map", inputs=["items"], app=orch)
    counter = {"in_flight": 0, "max": 0}
    ns.counter = counter

    @ns.map.task(map="items", chunk_size=MAP_SIZE, concurrency=MAP_SIZE)
    async def wait_together(items: int) -> int:
        counter["in_flight"] += 1  # the loop's one thread: no lock needed
        counter["max"] = max(counter["max"], counter["in_flight"])
        deadline = time.monotonic() + 60
        # Every element waits until all are waiting: only concurrent elements finish.
        while counter["max"] < MAP_SIZE and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        counter["in_flight"] -= 1
        return items * 2


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def flows(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """Every test on each event loop (ORCH_EVENT_LOOP): the process's loop is stopped
    first, so the orchestrator's setting starts the next one."""
    directory = tmp_path_factory.mktemp("async_steps")
    seen.clear()
    stop_worker_loop()
    with FakeLLMServer() as server:
        models = directory / "models.yaml"
        models.write_text(CATALOGUE.replace("URL", server.url))
        with embedded_orchestrator(directory, models_file=models, redis_url=None,
                                   event_loop=request.param) as orch:
            ns = declare(orch)
            ns.server, ns.orch, ns.kind = server, orch, request.param
            yield ns
    stop_worker_loop()


@pytest.fixture(autouse=True)
def fresh(flows: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-fake")
    flows.server.reset()
    flows.server.reset_stats()


def poll(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def test_an_async_step_runs_and_returns(flows: SimpleNamespace) -> None:
    result = flows.simple.run(text="hello", timeout=30)
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs == {"shout": "HELLO", "after": "HELLO!"}
    assert result.steps["shout"].attempt_log[0]["status"] == "succeeded"
    # ... on the loop the setting chose
    loop_type = type(worker_loop().loop)
    assert (loop_type.__module__.partition(".")[0] == "uvloop") is (flows.kind == "uvloop")


def test_a_timeout_cancels_the_coroutine_and_the_step_retries_then_fails(
        flows: SimpleNamespace) -> None:
    result = flows.timed.run(key="timed", timeout=30)
    step = result.steps["hangs"]
    assert result.status is RunStatus.FAILED and step.status is StepStatus.FAILED
    assert step.error_type == "orchestration.errors.StepTimeout"
    assert [(a["status"], a["error_type"]) for a in step.attempt_log] == [
        ("failed", "orchestration.errors.StepTimeout")] * 2
    assert seen["timed"] == ["cancelled", "cancelled"]  # each attempt's coroutine saw it


def test_a_timed_out_async_step_answers_its_fallback(flows: SimpleNamespace) -> None:
    result = flows.timed_fallback.run(key="fallback", timeout=30)
    step = result.steps["hangs_then_falls_back"]
    assert step.status is StepStatus.FALLBACK
    assert result.outputs["hangs_then_falls_back"] == "fallback value"
    assert seen["fallback"] == ["cancelled"]


def test_an_async_step_retries_then_succeeds_with_its_attempts_recorded(
        flows: SimpleNamespace) -> None:
    result = flows.flaky.run(key="flaky", timeout=30)
    step = result.steps["flaky"]
    assert result.outputs["flaky"] == 3 and step.attempts == 3
    assert [(a["attempt"], a["status"], (a["error"] or "").splitlines()[-1:])
            for a in step.attempt_log] == [
        (1, "failed", ["ConnectionError: attempt 1 failed"]),
        (2, "failed", ["ConnectionError: attempt 2 failed"]), (3, "succeeded", [])]


def test_acomplete_passes_an_open_breaker_to_the_fallback_model(
        flows: SimpleNamespace) -> None:
    flows.server.configure("tripped", error_rate=1.0, error_status=503)
    result = flows.llm.run(prompt="Classify: can't log in", timeout=30)
    assert result.outputs["ask"] == {"models": ["backup", "backup"]}
    stats = flows.server.stats()
    # The first call failed over to the backup and tripped the breaker (fail_max 1): the
    # second never reached the tripped model.
    assert stats["tripped"]["requests"] == 1 and stats["backup"]["requests"] == 2
    calls = result.steps["ask"].attempt_log[0]["calls"]
    assert [(c["model"], c["ok"]) for c in calls] == [
        ("tripped", False), ("backup", True), ("tripped", False), ("backup", True)]
    assert calls[2]["breaker"] == "open"


def test_cancelling_a_run_cancels_its_in_flight_coroutine(flows: SimpleNamespace) -> None:
    handle = flows.cancel.submit(key="cancel")
    poll(lambda: seen.get("cancel") == "started", "the async step started")
    handle.cancel()
    poll(lambda: seen.get("cancel") == "cancelled", "the coroutine saw CancelledError")
    poll(lambda: handle.result().steps["long_wait"].status is StepStatus.CANCELLED,
         "the step recorded cancelled")
    result = handle.result()
    assert result.status is RunStatus.CANCELLED
    assert result.steps["long_wait"].attempt_log[0]["status"] == "cancelled"


def test_cancelling_a_run_cancels_its_async_map_elements(flows: SimpleNamespace) -> None:
    handle = flows.cancel_map.submit(items=list(range(100)))  # two chunks of 50
    poll(lambda: len(seen.get("map started", [])) == 100, "every element started")
    handle.cancel()
    poll(lambda: len(seen.get("map cancelled", [])) == 100, "every element saw CancelledError")
    poll(lambda: handle.result().steps["wait_long"].status is StepStatus.CANCELLED,
         "the map step recorded cancelled")
    step = handle.result().steps["wait_long"]
    assert step.error is not None and "100 of 100 elements cancelled" in step.error
    assert step.attempts == 100
    assert {a["status"] for a in step.attempt_log} == {"cancelled"}


def test_an_async_map_runs_its_elements_concurrently(flows: SimpleNamespace) -> None:
    result = flows.map.run(items=list(range(MAP_SIZE)), timeout=120)
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs["wait_together"] == [2 * i for i in range(MAP_SIZE)]
    assert flows.counter["max"] == MAP_SIZE  # all waited at once, on one loop


def test_only_the_step_function_may_be_async(flows: SimpleNamespace) -> None:
    wf = Workflow("async_refused", app=flows.orch)

    async def fallback() -> str:
        return "x"

    def plain() -> str:
        return "x"

    with pytest.raises(WorkflowDefinitionError, match=r"its fallback .* is async; only the "
                                                      r"step function itself may be async"):
        wf.task(fallback=fallback)(plain)

    async def batched(texts: list[str]) -> list[str]:
        return texts

    with pytest.raises(WorkflowDefinitionError, match=r"async_refused\.batched.*batch_size"):
        wf.task(batch_size=10)(batched)

    async def stream() -> Any:
        yield 1

    with pytest.raises(WorkflowDefinitionError, match="async generator"):
        wf.task(stream)
