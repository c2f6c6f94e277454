"""Celery settings: a submitting client fails fast, a worker rides out a Redis restart."""

from __future__ import annotations

from config.celery import (
    BACKEND_RETRY_POLICY,
    CLIENT_BACKEND_RETRY_POLICY,
    celery_config,
    worker_overrides,
)
from config.settings import Settings
from orchestration.app import Orchestrator

REDIS = "redis://127.0.0.1:1/0"  # never connected to here


def _retries(policy: dict[str, float]) -> float:
    """The longest a reconnect policy keeps trying, in seconds (interval sum)."""
    total, wait = 0.0, policy["interval_start"]
    for _ in range(int(policy["max_retries"])):
        total += min(wait, policy["interval_max"])
        wait += policy["interval_step"]
    return total


def test_a_client_gives_up_on_the_result_backend_within_seconds() -> None:
    config = celery_config(Settings(broker_url=REDIS))
    policy = config["result_backend_transport_options"]["retry_policy"]
    assert policy == CLIENT_BACKEND_RETRY_POLICY
    assert _retries(policy) < 5


def test_a_worker_rides_out_minutes_of_backend_restart() -> None:
    settings = Settings(broker_url=REDIS)
    app = Orchestrator(settings)
    try:
        app.as_worker()
        options = app.celery.conf.result_backend_transport_options
        assert options["retry_policy"] == BACKEND_RETRY_POLICY
        assert options["visibility_timeout"] == settings.visibility_timeout
        assert _retries(options["retry_policy"]) >= 240
        assert app.celery.conf.result_backend_max_retries >= 60
    finally:
        app.shutdown()


def test_the_embedded_default_has_no_worker_overrides() -> None:
    assert worker_overrides(Settings()) == {}


def test_the_first_task_of_a_chord_body_whose_header_arrived_as_a_dict() -> None:
    """A chord after a group in a chain: Celery nests it as the first chord's body, with
    its header a group *dict* (that shape once raised KeyError and stranded the run)."""
    from celery import Celery, group
    from celery import chord as make_chord

    from orchestration.worker.result_backend import _first_task

    app = Celery("first-task", set_as_current=False)
    a, b, f = (app.signature(name) for name in ("wf.a", "wf.b", "wf.f"))
    body = make_chord(group(a, b), f)
    body.kwargs["header"] = dict(group(a, b))  # as a worker receives it
    assert isinstance(body.tasks, dict)
    assert _first_task(body) == "wf.a"
    assert _first_task(None) is None
