"""Step policies: backoff delays, timeouts and fallbacks as values."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable

import pytest
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_none

from orchestration import Backoff, WorkflowDefinitionError
from orchestration.define.policies import (
    CallableTimeout,
    Fallback,
    FixedTimeout,
    TimeoutPolicy,
    as_backoff,
    as_timeout,
    first_then_retry,
)


def test_delays_grow_exponentially_and_are_capped() -> None:
    backoff = Backoff(initial=0.5, maximum=3.0, multiplier=2.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert backoff.delay(0) == 0.5  # numbering starts at 1
    assert Backoff(initial=1.0, maximum=100.0, multiplier=3.0, jitter=0.0).delay(4) == 27.0


def test_jitter_stays_within_bounds() -> None:
    backoff = Backoff(initial=1.0, maximum=1.0, jitter=0.5)
    rng = random.Random(42)
    delays = [backoff.delay(3, rng) for _ in range(500)]
    assert all(1.0 <= d <= 1.5 for d in delays)
    assert max(delays) - min(delays) > 0.4  # it really varies
    again = [backoff.delay(3, random.Random(42)) for _ in range(3)]
    assert again == [again[0]] * 3 and again[0] == delays[0]  # seeded: reproducible


def test_cap_applies_before_jitter() -> None:
    backoff = Backoff(initial=1.0, maximum=2.0, jitter=0.25)
    delays = [backoff.delay(10, random.Random(seed)) for seed in range(200)]
    assert all(2.0 <= d <= 2.25 for d in delays)


def test_delay_uses_no_deprecated_api() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Backoff(jitter=0.0).delay(1) == 0.5


@pytest.mark.parametrize("kwargs", [
    {"initial": -1.0}, {"maximum": -1.0}, {"multiplier": 0.5}, {"jitter": -0.1},
])
def test_invalid_backoff(kwargs: dict[str, float]) -> None:
    with pytest.raises(WorkflowDefinitionError, match="invalid backoff"):
        Backoff(**kwargs)


def test_as_backoff() -> None:
    assert as_backoff(None, "w") == Backoff()
    custom = Backoff(initial=2.0)
    assert as_backoff(custom, "w") is custom
    assert as_backoff(2, "w") == Backoff(initial=2.0, maximum=30.0, jitter=1.0)
    # the cap is never below the initial wait
    assert as_backoff(45.0, "w") == Backoff(initial=45.0, maximum=45.0, jitter=22.5)
    assert as_backoff(0.02, "w").jitter == 0.01  # jitter in proportion to the wait
    for bad in (True, "1s", [1]):
        with pytest.raises(WorkflowDefinitionError, match="step x: backoff must be a number"):
            as_backoff(bad, "step x")


def test_as_timeout() -> None:
    assert as_timeout(None, "w") is None
    fixed = as_timeout(30, "w")
    assert isinstance(fixed, FixedTimeout) and fixed.seconds() == 30.0
    policy = FixedTimeout(3.0)
    assert as_timeout(policy, "w") is policy
    computed = as_timeout(lambda: 7, "w")
    assert isinstance(computed, CallableTimeout) and computed.seconds() == 7.0
    for bad, message in ((0, "> 0 seconds"), (-1.5, "> 0 seconds"),
                         (True, "seconds, a callable"), ("30", "seconds, a callable")):
        with pytest.raises(WorkflowDefinitionError, match=f"step x: timeout must be.*{message}"):
            as_timeout(bad, "step x")


def test_callable_timeout_is_asked_before_each_attempt() -> None:
    answers = iter([5, 2.5, 0, -1, None])
    timeout = CallableTimeout(lambda: next(answers))
    assert [timeout.seconds() for _ in range(5)] == [5.0, 2.5, None, None, None]


def test_any_object_with_seconds_is_a_timeout_policy() -> None:
    class Adaptive:
        def __init__(self) -> None:
            self.calls = 0

        def seconds(self) -> float | None:
            self.calls += 1
            return 1.0 * self.calls

    adaptive = Adaptive()
    assert isinstance(adaptive, TimeoutPolicy)
    assert as_timeout(adaptive, "w") is adaptive
    assert [adaptive.seconds(), adaptive.seconds()] == [1.0, 2.0]


def test_fallback_value_and_callable() -> None:
    fixed = Fallback("tier_1")
    assert not fixed.is_callable and fixed.resolve({"text": "x"}) == "tier_1"
    computed = Fallback(lambda text, n=1: text * n)
    assert computed.is_callable
    assert computed.resolve({"text": "ab", "n": 2}) == "abab"
    assert repr(fixed) == "Fallback('tier_1')"


# -- first_then_retry ----------------------------------------------------------------------


def _retrying(calls: list[str], attempts: int) -> Callable[[], Retrying]:
    def build() -> Retrying:
        calls.append("built")
        return Retrying(stop=stop_after_attempt(attempts), wait=wait_none(),
                        retry=retry_if_exception_type(ValueError), reraise=True,
                        before_sleep=lambda state: calls.append(f"retry {state.attempt_number}"))
    return build


def test_first_then_retry_builds_nothing_when_the_first_call_succeeds() -> None:
    calls: list[str] = []

    assert first_then_retry(lambda: "ok", _retrying(calls, 3),
                            lambda e: isinstance(e, ValueError)) == "ok"
    assert calls == []


def test_first_then_retry_replays_the_first_failure_into_tenacity() -> None:
    calls: list[str] = []
    outcomes = iter([ValueError("1"), ValueError("2"), "third"])

    def fn() -> str:
        calls.append("call")
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    result = first_then_retry(fn, _retrying(calls, 3), lambda e: isinstance(e, ValueError))

    # Exactly what Retrying(...)(fn) does: 3 calls, hooks numbered from the first one.
    assert result == "third"
    assert calls == ["call", "built", "retry 1", "call", "retry 2", "call"]


def test_first_then_retry_raises_what_is_not_retryable_and_stops_as_tenacity_does() -> None:
    calls: list[str] = []

    def broken() -> str:
        calls.append("call")
        raise KeyError("no")

    with pytest.raises(KeyError):
        first_then_retry(broken, _retrying(calls, 3), lambda e: isinstance(e, ValueError))
    assert calls == ["call"]

    calls.clear()

    def failing() -> str:
        calls.append("call")
        raise ValueError("again")

    with pytest.raises(ValueError, match="again"):
        first_then_retry(failing, _retrying(calls, 2), lambda e: isinstance(e, ValueError))
    assert calls == ["call", "built", "retry 1", "call"]
