"""The Redis result backend rides out a broker/backend restart of a few minutes.

Celery's defaults give up after ~20 s of reconnection attempts ("Retry limit exceeded
while trying to reconnect to the Celery result store backend. The Celery application
must be restarted.") and store a result once. These tests drive Celery's own retry loops
with the sleeps recorded instead of slept (no server, no waiting) and add up how long a
worker keeps trying with our configuration.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from celery import Celery
from redis.exceptions import ConnectionError as RedisConnectionError

from config.celery import celery_config, worker_overrides
from config.settings import Settings

A_FEW_MINUTES_S = 180.0


SETTINGS = Settings(broker_url="redis://127.0.0.1:1/0", result_backend="redis://127.0.0.1:1/0")


@pytest.fixture
def backend() -> Any:
    """The backend of a ``celery worker`` process (``as_worker`` applies the overrides)."""
    app = Celery("backend-retry-test", set_as_current=False)
    app.conf.update({**celery_config(SETTINGS), **worker_overrides(SETTINGS)})
    return app.backend


def test_a_submitting_client_gives_up_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Celery("backend-retry-client", set_as_current=False)
    app.conf.update(celery_config(SETTINGS))
    slept: list[float] = []
    monkeypatch.setattr("kombu.utils.functional.sleep", slept.append)
    with pytest.raises(RedisConnectionError):
        app.backend.ensure(_always_down, ())
    assert sum(slept) < 5


def _always_down() -> None:
    raise RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


def test_reconnecting_keeps_trying_for_a_few_minutes(
        backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("kombu.utils.functional.sleep", slept.append)
    # The path of ResultConsumer._reconnect and of chord counters: backend.ensure.
    with pytest.raises(RedisConnectionError):
        backend.ensure(_always_down, ())
    assert sum(slept) >= A_FEW_MINUTES_S
    assert max(slept) <= 5  # a server back after a restart is found within seconds


def test_storing_a_result_retries_connection_errors_for_a_few_minutes(
        backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(backend, "_sleep", slept.append)
    random.seed(7)  # the backoff has full jitter
    assert backend.always_retry
    with pytest.raises(RedisConnectionError):
        backend._ensure_retryable(_always_down)
    assert sum(slept) >= A_FEW_MINUTES_S
    assert max(slept) <= 10


def test_pooled_backend_connections_are_checked_and_time_out(backend: Any) -> None:
    params = backend.connparams
    assert params["health_check_interval"] > 0
    assert params["retry_on_timeout"] is True
    assert params["socket_connect_timeout"] > 0
