"""``await ctx.llm.acomplete``: the call made on the event loop, with every policy of
``complete`` (retries, timeouts, fallback models, breakers, budgets, cost records).

The client runs on a loop whose executor refuses work: a call that needed a thread
would fail, so each test also shows that the path it takes stays on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from orchestration.core.results import CallRecord
from orchestration.errors import BudgetExceeded, ErrorKind, ProviderError
from orchestration.llm.catalogue import Catalogue
from orchestration.llm.client import LLMClient
from orchestration.llm.resilience import Resilience
from tests.fakes.llm_server import FakeLLMServer

T = TypeVar("T")
KEY_ENV = "TEST_ASYNC_CALLS_KEY"


class Site:
    """The step attempt a client calls for (what ``StepContext`` gives it)."""

    def __init__(self, model: str = "main", run_budget: float | None = None,
                 run_spent: float = 0.0) -> None:
        self.run_id, self.step, self.model = "run-1", "ask", model
        self.deadline: float | None = None
        self.cost_usd = self.spent_before = 0.0
        self.max_cost: float | None = None
        self.run_budget = run_budget
        self.run_spent = run_spent
        self.on_error = None
        self.calls: list[CallRecord] = []

    def run_cost(self) -> float:
        return self.run_spent

    def remaining(self) -> float | None:
        return None

    def record_call(self, call: CallRecord) -> None:
        self.calls.append(call)
        self.cost_usd += call.cost_usd


class NoThreads(concurrent.futures.ThreadPoolExecutor):
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{getattr(fn, '__name__', fn)!r} was sent to a thread")


def on_loop(make: Callable[[], Coroutine[Any, Any, T]], *, threads: bool = False) -> T:
    loop = asyncio.new_event_loop()
    if not threads:
        loop.set_default_executor(NoThreads(max_workers=1))
    try:
        return loop.run_until_complete(make())
    finally:
        loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture
def services(server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Resilience]:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    server.reset()
    server.reset_stats()
    catalogue = Catalogue.model_validate({
        "providers": {"fake": {"kind": "openai", "base_url": server.url, "api_key_env": KEY_ENV}},
        "models": {
            "main": {"provider": "fake", "retries": 2, "timeout": 0.3, "fallbacks": ["backup"],
                     "input_cost_per_1k": 1.0, "breaker": {"fail_max": 2}},
            "backup": {"provider": "fake", "retries": 0},
            "alone": {"provider": "fake", "retries": 0, "timeout": 0.3},
            "steady": {"provider": "fake", "retries": 2},
        },
        "default_model": "main"})
    resilience = Resilience(catalogue, None)
    yield resilience
    resilience.close()


def requests(server: FakeLLMServer, model: str) -> int:
    return int(server.stats().get(model, {}).get("requests", 0))


def test_a_call_is_made_on_the_loop_and_recorded(
        server: FakeLLMServer, services: Resilience) -> None:
    server.configure("main", reply="hello", prompt_tokens=10, completion_tokens=2,
                     latency_ms=100)
    site = Site()
    ticks = 0

    async def call() -> Any:
        nonlocal ticks

        async def ticking() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        ticker = asyncio.ensure_future(ticking())
        try:
            return await LLMClient(site, services).acomplete("hi")
        finally:
            ticker.cancel()
            services.close()

    completion = on_loop(call)

    assert (completion.text, completion.model) == ("hello", "main")
    assert ticks >= 5  # the loop kept running other tasks while the call waited
    assert [(c.model, c.ok) for c in site.calls] == [("main", True)]
    assert site.calls[0].cost_usd == pytest.approx(0.01)


def test_transient_failures_are_retried_on_the_loop(
        server: FakeLLMServer, services: Resilience) -> None:
    server.configure("steady", fail_first=2, error_status=503, reply="third time")
    site = Site(model="steady")

    completion = on_loop(lambda: _closing(services, LLMClient(site, services).acomplete("hi")))

    assert completion.text == "third time"
    assert [c.ok for c in site.calls] == [False, False, True]
    assert requests(server, "steady") == 3


def test_a_model_that_keeps_failing_opens_its_breaker_and_the_fallback_answers(
        server: FakeLLMServer, services: Resilience) -> None:
    server.configure("main", error_rate=1.0, error_status=500)
    server.configure("backup", reply="from backup")

    async def three() -> list[Any]:
        return [await LLMClient(Site(), services).acomplete(f"q{n}") for n in range(3)]

    answers = on_loop(lambda: _closing(services, three()))

    assert [a.model for a in answers] == ["backup"] * 3
    # fail_max 2: the first call's three tries open it; later calls skip it unasked.
    assert requests(server, "main") == 2
    assert services.breakers.get("main").state_name == "open"


def test_a_hung_model_times_out_and_its_connection_is_not_reused(
        server: FakeLLMServer, services: Resilience) -> None:
    server.configure("alone", hang=True)
    site = Site(model="alone")

    with pytest.raises(ProviderError) as failure:
        on_loop(lambda: _closing(services, LLMClient(site, services).acomplete("hi")))

    assert failure.value.kind is ErrorKind.TIMEOUT
    assert [(c.ok, c.error_kind) for c in site.calls] == [(False, ErrorKind.TIMEOUT)]


def test_a_cancelled_call_counts_no_failure(server: FakeLLMServer,
                                            services: Resilience) -> None:
    server.configure("alone", hang=True)

    async def cancelled() -> None:
        task = asyncio.ensure_future(LLMClient(Site(model="alone"), services).acomplete("hi"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    on_loop(lambda: _closing(services, cancelled()))

    assert services.breakers.get("alone").snapshot()[:2] == ("closed", 0)


def test_a_run_over_its_budget_makes_no_call(server: FakeLLMServer,
                                             services: Resilience) -> None:
    site = Site(run_budget=1.0, run_spent=1.0)

    # The run's spend is read from the results DB: that check runs on a thread.
    with pytest.raises(BudgetExceeded, match="budget"):
        on_loop(lambda: _closing(services, LLMClient(site, services).acomplete("hi")),
                threads=True)

    assert requests(server, "main") == 0


def test_acomplete_json_asks_again_until_the_answer_validates(
        server: FakeLLMServer, services: Resilience) -> None:
    server.configure("main", reply='```json\n{"intent": "refund"}\n```')
    schema = {"type": "object", "required": ["intent"]}

    value = on_loop(lambda: _closing(services, LLMClient(Site(), services).acomplete_json(
        "classify", schema=schema)))

    assert value == {"intent": "refund"}


async def _closing(services: Resilience, call: Coroutine[Any, Any, T]) -> T:
    try:
        return await call
    finally:
        services.close()  # the loop's connections, closed on the loop before it closes



def test_a_providers_max_connections_bounds_its_awaited_calls(
        server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    server.reset()
    server.configure("m", latency_ms=100)
    catalogue = Catalogue.model_validate({
        "providers": {"fake": {"kind": "openai", "base_url": server.url,
                               "api_key_env": KEY_ENV, "max_connections": 2}},
        "models": {"m": {"provider": "fake"}}, "default_model": "m"})
    services = Resilience(catalogue, None)

    async def six() -> list[Any]:
        return list(await asyncio.gather(*(LLMClient(Site(model="m"), services).acomplete(
            f"q{n}") for n in range(6))))

    on_loop(lambda: _closing(services, six()))

    timestamps = sorted(server.stats()["m"]["timestamps"])
    # Two at a time: the third call went out only once one of the first two came back.
    assert len(timestamps) == 6
    assert timestamps[2] - timestamps[0] >= 0.09


def test_max_connections_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        Catalogue.model_validate({"providers": {"fake": {"kind": "openai", "base_url": "http://x",
                                                         "max_connections": 0}},
                                  "models": {"m": {"provider": "fake"}}})
