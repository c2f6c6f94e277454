"""Per-model circuit breakers: what counts, who probes, concurrency, state shared via Redis."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from orchestration.errors import BreakerOpen, ProviderError
from orchestration.llm import breakers
from orchestration.llm.breakers import BreakerPolicy, Breakers, ModelBreaker
from tests.support.services import UNIT_REDIS_URL, delete_keys, unit_redis

MakeBreakers = Callable[[BreakerPolicy], Breakers]


class Interrupted(BaseException):
    """A BaseException that is no Exception, like KeyboardInterrupt or Celery's signals."""


def provider_error(status: int) -> ProviderError:
    return ProviderError(f"HTTP {status}", status=status,
                         retryable=status == 429 or status >= 500)


def raising(exc: BaseException) -> Callable[[], Any]:
    def call() -> Any:
        raise exc
    return call


def fail(breaker: ModelBreaker, status: int = 500) -> None:
    with pytest.raises(ProviderError) as info:
        breaker.call(raising(provider_error(status)))
    # The provider's own error reaches the caller, not pybreaker's CircuitBreakerError.
    assert info.value.status == status and not isinstance(info.value, BreakerOpen)


@pytest.fixture
def shared_redis() -> Iterator[redis.Redis]:
    client = unit_redis()
    yield client
    client.close()


@pytest.fixture
def model() -> Iterator[str]:
    """A model name no other test (or earlier run) used, so Redis state starts fresh."""
    name = f"test-breaker-{uuid.uuid4().hex[:10]}"
    yield name
    delete_keys(f"orchestration:breaker:{name}*")


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def storage(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "redis":
        client = unit_redis()
        request.addfinalizer(client.close)
        request.node.redis_client = client
    yield request.param


@pytest.fixture
def make(storage: str, request: pytest.FixtureRequest, model: str) -> MakeBreakers:
    client = getattr(request.node, "redis_client", None)

    def build(policy: BreakerPolicy) -> Breakers:
        return Breakers(client, {model: policy})
    return build


def trip(breaker: ModelBreaker) -> Callable[[], None]:
    """Open a fail_max=1 breaker; returns a function that waits out its reset timeout."""
    fail(breaker)
    assert breaker.state_name == "open"
    opened = time.monotonic()
    return lambda: time.sleep(max(0.0, opened + breaker.reset_timeout + 0.05 - time.monotonic()))


def test_opens_after_fail_max_retryable_errors(make: MakeBreakers, model: str) -> None:
    breaker = make(BreakerPolicy(fail_max=3, reset_timeout=30)).get(model)
    calls: list[int] = []
    fail(breaker, 500)
    fail(breaker, 429)
    assert breaker.state_name == "closed" and breaker.fail_counter == 2
    fail(breaker, 503)
    assert breaker.state_name == "open"
    with pytest.raises(BreakerOpen, match="circuit breaker open") as info:
        breaker.call(lambda: calls.append(1))
    assert calls == [] and info.value.model == model and not info.value.retryable


def test_client_error_does_not_count_and_resets_the_counter(make: MakeBreakers,
                                                            model: str) -> None:
    breaker = make(BreakerPolicy(fail_max=3, reset_timeout=30)).get(model)
    fail(breaker)
    fail(breaker)
    fail(breaker, 400)  # the provider answered: it is up
    assert breaker.fail_counter == 0 and breaker.state_name == "closed"
    fail(breaker)
    fail(breaker)
    assert breaker.state_name == "closed"
    fail(breaker)
    assert breaker.state_name == "open"


def test_other_exceptions_leave_the_counter_untouched(make: MakeBreakers, model: str) -> None:
    breaker = make(BreakerPolicy(fail_max=3, reset_timeout=30)).get(model)
    fail(breaker)
    fail(breaker)
    with pytest.raises(RuntimeError):
        breaker.call(raising(RuntimeError("bug in the caller")))
    with pytest.raises(Interrupted):
        breaker.call(raising(Interrupted()))
    assert breaker.fail_counter == 2 and breaker.state_name == "closed"
    fail(breaker)
    assert breaker.state_name == "open"


def test_success_resets_the_counter(make: MakeBreakers, model: str) -> None:
    breaker = make(BreakerPolicy(fail_max=2, reset_timeout=30)).get(model)
    fail(breaker)
    assert breaker.call(lambda x: x + 1, 41) == 42
    assert breaker.fail_counter == 0
    fail(breaker)
    assert breaker.state_name == "closed"


def race(breaker: ModelBreaker, fn: Callable[[], Any], threads: int = 8) -> list[str]:
    """``threads`` callers at once; each outcome is 'ok', 'open' or the error's name."""
    barrier = threading.Barrier(threads)
    outcomes: list[str] = []
    lock = threading.Lock()

    def caller() -> None:
        barrier.wait()
        try:
            breaker.call(fn)
            outcome = "ok"
        except BreakerOpen:
            outcome = "open"
        except BaseException as exc:
            outcome = type(exc).__name__
        with lock:
            outcomes.append(outcome)

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    return sorted(outcomes)


PROBE_POLICY = BreakerPolicy(fail_max=1, reset_timeout=0.2)


def test_exactly_one_caller_probes_and_a_successful_probe_closes(
        make: MakeBreakers, model: str) -> None:
    breaker = make(PROBE_POLICY).get(model)
    trip(breaker)()
    probes: list[int] = []

    def slow_probe() -> None:
        probes.append(1)
        time.sleep(0.15)  # the others arrive while the probe is in flight

    outcomes = race(breaker, slow_probe)
    assert probes == [1]
    assert outcomes == ["ok"] + ["open"] * 7
    assert breaker.state_name == "closed"
    assert breaker.call(lambda: "again") == "again"


def test_a_failing_probe_reopens(make: MakeBreakers, model: str) -> None:
    breaker = make(PROBE_POLICY).get(model)
    trip(breaker)()
    probes: list[int] = []

    def failing_probe() -> None:
        probes.append(1)
        time.sleep(0.1)
        raise provider_error(502)

    outcomes = race(breaker, failing_probe)
    assert probes == [1] and outcomes == ["ProviderError"] + ["open"] * 7
    assert breaker.state_name == "open"
    with pytest.raises(BreakerOpen, match="reset timeout not elapsed"):
        breaker.call(lambda: probes.append(2))
    assert probes == [1]


def test_lock_is_not_held_across_the_call(make: MakeBreakers, model: str) -> None:
    breaker = make(BreakerPolicy(fail_max=5, reset_timeout=30)).get(model)
    # Each call returns only once all 8 are inside it: calls serialised by the lock would
    # break the barrier (BrokenBarrierError) instead.
    inside = threading.Barrier(8, timeout=5)
    outcomes = race(breaker, inside.wait)
    assert outcomes == ["ok"] * 8


def test_breakers_keeps_one_breaker_per_model(model: str) -> None:
    breakers = Breakers(None, {model: BreakerPolicy(fail_max=7, reset_timeout=3)})
    assert not breakers.shared
    assert breakers.get(model) is breakers.get(model)
    assert (breakers.get(model).fail_max, breakers.get(model).reset_timeout) == (7, 3)
    other = breakers.get("some-other-model")
    assert other is not breakers.get(model) and other.fail_max == BreakerPolicy().fail_max
    # Per process without Redis: another instance knows nothing of this one's failures.
    fail(breakers.get(model))
    assert Breakers(None).get(model).fail_counter == 0


# -- shared through Redis (two Breakers instances stand for two worker processes) ----------


@pytest.mark.redis
def test_two_processes_share_counter_and_state(shared_redis: redis.Redis, model: str) -> None:
    policy = {model: BreakerPolicy(fail_max=3, reset_timeout=30)}
    first, second = Breakers(shared_redis, policy), Breakers(shared_redis, policy)
    assert first.shared
    fail(first.get(model))
    fail(second.get(model))
    assert first.get(model).fail_counter == 2
    fail(first.get(model))
    assert second.get(model).state_name == "open"
    calls: list[int] = []
    with pytest.raises(BreakerOpen):
        second.get(model).call(lambda: calls.append(1))
    assert calls == []


@pytest.mark.redis
def test_only_one_process_probes(shared_redis: redis.Redis, model: str) -> None:
    policy = {model: BreakerPolicy(fail_max=1, reset_timeout=0.3)}
    first, second = Breakers(shared_redis, policy), Breakers(shared_redis, policy)
    trip(first.get(model))()
    seen: list[str] = []

    def probe() -> None:
        seen.append("probe")
        with pytest.raises(BreakerOpen, match="another caller is probing"):
            second.get(model).call(lambda: seen.append("second"))

    first.get(model).call(probe)
    assert seen == ["probe"]
    assert second.get(model).state_name == "closed"
    assert second.get(model).call(lambda: "up") == "up"


@pytest.mark.redis
def test_failures_of_other_processes_survive_a_resync(shared_redis: redis.Redis,
                                                      model: str) -> None:
    policy = {model: BreakerPolicy(fail_max=3, reset_timeout=0.3)}
    first, second = Breakers(shared_redis, policy), Breakers(shared_redis, policy)
    fail(first.get(model))
    fail(first.get(model))
    wait = trip(first.get(model))
    with pytest.raises(BreakerOpen):
        second.get(model).call(lambda: None)  # second now believes "open"
    wait()
    first.get(model).call(lambda: None)  # the probe succeeds: closed
    fail(first.get(model))
    fail(first.get(model))
    assert first.get(model).fail_counter == 2
    fail(second.get(model))  # the third consecutive failure of the fleet
    assert second.get(model).state_name == "open"


@pytest.mark.redis
def test_shared_breaker_stays_open_for_its_reset_timeout(shared_redis: redis.Redis,
                                                         model: str) -> None:
    breaker = Breakers(shared_redis, {model: BreakerPolicy(fail_max=1, reset_timeout=0.5)}
                       ).get(model)
    while not 0.6 <= time.time() % 1 < 0.8:  # open late in a second (whole seconds: bug)
        time.sleep(0.01)
    wait = trip(breaker)
    calls: list[int] = []
    with pytest.raises(BreakerOpen):
        breaker.call(lambda: calls.append(1))  # ~0 s after opening
    wait()
    breaker.call(lambda: calls.append(2))  # and the reset timeout is not much longer either
    assert calls == [2] and breaker.state_name == "closed"


class CountingRedis(redis.Redis):
    """A Redis client that counts the commands it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]))
        return super().execute_command(*args, **options)


@pytest.fixture
def counting_redis() -> Iterator[CountingRedis]:
    unit_redis().close()  # skips (or fails in CI) without Redis
    client = CountingRedis.from_url(UNIT_REDIS_URL, socket_connect_timeout=1, socket_timeout=5)
    yield client
    client.close()


@pytest.mark.redis
def test_a_healthy_breaker_reads_shared_state_once_per_refresh(
        counting_redis: CountingRedis, model: str) -> None:
    breaker = Breakers(counting_redis, {model: BreakerPolicy(refresh=60)}).get(model)
    counting_redis.commands.clear()

    for _ in range(100):
        assert breaker.call(lambda: "ok") == "ok"
        assert breaker.state_name == "closed"

    assert counting_redis.commands == ["MGET"]  # pybreaker: GET + SET per call


@pytest.mark.redis
def test_refresh_zero_reads_on_every_call(counting_redis: CountingRedis, model: str) -> None:
    breaker = Breakers(counting_redis, {model: BreakerPolicy(refresh=0)}).get(model)
    counting_redis.commands.clear()

    for _ in range(5):
        breaker.call(lambda: "ok")

    assert counting_redis.commands.count("MGET") == 5
    assert "SET" not in counting_redis.commands  # no failures seen: nothing to reset


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.mark.redis
def test_an_open_set_elsewhere_is_seen_within_the_refresh(
        shared_redis: redis.Redis, model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(breakers, "time", clock)  # the age of a reading, on a clock we move
    policy = {model: BreakerPolicy(fail_max=1, reset_timeout=30, refresh=0.2)}
    here, elsewhere = Breakers(shared_redis, policy), Breakers(shared_redis, policy)
    here.get(model).call(lambda: "ok")  # a healthy reading, reused for 0.2 s
    fail(elsewhere.get(model))
    calls: list[float] = []

    # Within the refresh, calls go by the old reading; once it is older, the open is seen.
    for at in (0.0, 0.1, 0.19):
        clock.now = 1000.0 + at
        here.get(model).call(lambda: calls.append(clock.now))
    clock.now = 1000.2
    with pytest.raises(BreakerOpen):
        here.get(model).call(lambda: calls.append(clock.now))

    assert calls == [1000.0, 1000.1, 1000.19]


@pytest.mark.redis
def test_a_reading_with_failures_is_read_again_and_a_success_resets_them(
        counting_redis: CountingRedis, model: str) -> None:
    policy = {model: BreakerPolicy(fail_max=5, reset_timeout=30, refresh=60)}
    here = Breakers(counting_redis, policy).get(model)
    fail(Breakers(counting_redis, policy).get(model))  # another process counts a failure
    counting_redis.commands.clear()

    assert [here.state_name, here.state_name] == ["closed", "closed"]
    assert counting_redis.commands == ["MGET", "MGET"]  # not reused: it saw a failure
    here.call(lambda: "ok")
    assert counting_redis.commands[2:] == ["MGET", "SET"]  # read again, then reset
    counting_redis.commands.clear()
    here.call(lambda: "ok")
    assert counting_redis.commands == []  # healthy now: reused
    assert here.fail_counter == 0


@pytest.mark.redis
def test_one_thread_renews_an_expired_healthy_reading(counting_redis: CountingRedis,
                                                      model: str) -> None:
    breaker = Breakers(counting_redis, {model: BreakerPolicy(refresh=0.2)}).get(model)
    breaker.call(lambda: None)
    time.sleep(0.25)  # the reading expires (elapsed time is what is under test)
    counting_redis.commands.clear()
    barrier = threading.Barrier(32)

    def call() -> None:
        barrier.wait()
        breaker.call(lambda: None)

    threads = [threading.Thread(target=call) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert counting_redis.commands == ["MGET"]


# -- awaited calls (ModelBreaker.acall: async def steps' model calls) ------------------------


def on_loop(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def afail(breaker: ModelBreaker) -> None:
    async def failing() -> None:
        raise provider_error(503)

    with pytest.raises(ProviderError):
        await breaker.acall(failing)


def test_an_awaited_call_counts_as_a_call_does(make: MakeBreakers, model: str) -> None:
    breaker = make(BreakerPolicy(fail_max=2, reset_timeout=30)).get(model)

    async def scenario() -> None:
        async def ok() -> str:
            return "ok"

        async def cancelled() -> None:
            raise asyncio.CancelledError

        assert await breaker.acall(ok) == "ok"
        await afail(breaker)
        with pytest.raises(asyncio.CancelledError):
            await breaker.acall(cancelled)  # a cancelled call is no provider failure
        assert breaker.state_name == "closed"
        await afail(breaker)
        assert breaker.state_name == "open"
        with pytest.raises(BreakerOpen):
            await breaker.acall(ok)

    on_loop(scenario())


def test_exactly_one_awaited_caller_probes(make: MakeBreakers, model: str) -> None:
    breaker = make(PROBE_POLICY).get(model)
    trip(breaker)()
    probes: list[int] = []

    async def scenario() -> list[str]:
        async def slow_probe() -> str:
            probes.append(1)
            await asyncio.sleep(0.15)
            return "ok"

        async def one() -> str:
            try:
                return await breaker.acall(slow_probe)
            except BreakerOpen:
                return "open"

        return list(await asyncio.gather(*(one() for _ in range(8))))

    outcomes = on_loop(scenario())

    assert probes == [1]
    assert sorted(outcomes) == ["ok"] + ["open"] * 7
    assert breaker.state_name == "closed"


@pytest.mark.redis
def test_an_awaited_call_never_waits_for_redis_on_the_loop(
        counting_redis: CountingRedis, model: str) -> None:
    # refresh=0: every call reads the shared state, and failures write it.
    breaker = Breakers(counting_redis, {model: BreakerPolicy(refresh=0, fail_max=3)}).get(model)
    threads: list[int] = []
    send = counting_redis.execute_command

    def recording(*args: Any, **options: Any) -> Any:
        threads.append(threading.get_ident())
        return send(*args, **options)

    counting_redis.execute_command = recording  # type: ignore[method-assign]

    async def scenario() -> int:
        async def ok() -> str:
            return "ok"

        for _ in range(3):
            await breaker.acall(ok)
        await afail(breaker)
        await breaker.acall(ok)  # resets the failure counter: a write
        return threading.get_ident()

    loop_thread = on_loop(scenario())

    assert threads  # Redis was used...
    assert loop_thread not in threads  # ... never from the loop's thread
