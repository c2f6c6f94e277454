"""The beat's arithmetic of ticks (UTC), without a database."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from orchestration.define.triggers import make_schedule
from orchestration.errors import ConfigurationError
from orchestration.events.beat import Beat, latest_tick, next_tick, tick_key


def _at(hour: int, minute: int, second: int = 0, micro: int = 0) -> datetime:
    return datetime(2026, 3, 1, hour, minute, second, micro, tzinfo=UTC)


@pytest.mark.parametrize(("now", "latest"), [
    (_at(9, 15), _at(9, 15)),                  # exactly on a tick: that tick
    (_at(9, 15, 0, 500_000), _at(9, 15)),
    (_at(9, 19, 59, 999_999), _at(9, 15)),
    (_at(9, 14, 59, 999_999), _at(9, 10)),
])
def test_the_latest_tick_is_at_or_before_now(now: datetime, latest: datetime) -> None:
    assert latest_tick("*/5 * * * *", now) == latest


def test_the_next_tick_is_strictly_after() -> None:
    assert next_tick("*/5 * * * *", _at(9, 15)) == _at(9, 20)


def test_a_tick_key_names_the_schedule_and_the_utc_tick() -> None:
    assert tick_key("nightly", _at(2, 0)) == "schedule:nightly:2026-03-01T02:00:00+00:00"


def _host(*schedules: Any) -> Any:
    workflow = SimpleNamespace(schedules=schedules)
    return SimpleNamespace(workflows={"report": workflow})


def test_the_beat_waits_until_the_next_tick_at_most_poll_seconds() -> None:
    hourly = make_schedule("hourly", cron="0 * * * *", workflow="report")
    minutely = make_schedule("minutely", cron="* * * * *", workflow="report")
    now = _at(9, 59, 30)
    assert Beat(_host(hourly), clock=lambda: now, poll=5).seconds_to_next() == 5
    assert Beat(_host(hourly, minutely), clock=lambda: now,
                poll=60).seconds_to_next() == pytest.approx(30)


def test_a_schedule_name_too_long_for_its_keys_is_refused() -> None:
    long = make_schedule("n" * 180, cron="* * * * *", workflow="report")
    with pytest.raises(ConfigurationError, match="too long"):
        Beat(_host(long))
