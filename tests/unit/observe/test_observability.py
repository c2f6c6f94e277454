"""Observability pieces without servers: structured log lines, the Prometheus series a
step outcome and a model call record, the per-step figures of ``orchestrate stats``, and
Flower's start-up guard.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from prometheus_client import REGISTRY

from orchestration import ConfigurationError
from orchestration.core import metrics
from orchestration.core.logs import configure_logging
from orchestration.core.redaction import REDACTED, Redactor
from orchestration.core.stats import percentile, step_stats
from orchestration.observe.exporter import flower_command, is_loopback

# -- structured logs -----------------------------------------------------------------------


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    """configure_logging is process-wide: put the previous configuration back."""
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.configure(**saved)
        structlog.contextvars.clear_contextvars()


def test_json_lines_carry_the_bound_step_context_and_are_redacted(
        restore_structlog: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json=True, redactor=Redactor(["customer_ssn"]))
    log = structlog.get_logger("test")
    with structlog.contextvars.bound_contextvars(run_id="r-1", step="wf.classify",
                                                 queue="model.classifier", model="m-1"):
        with structlog.contextvars.bound_contextvars(attempt=2):
            log.warning("step attempt failed; retrying", error="sent Bearer abcdefgh12345678",
                        customer_ssn="123-45-6789", wait_s=0.5)
        log.info("between attempts")
    log.debug("dropped: below INFO")
    log.info("outside any step")

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == [
        "step attempt failed; retrying", "between attempts", "outside any step"]
    warning = lines[0]
    assert {k: warning[k] for k in ("run_id", "step", "queue", "model", "attempt", "level")} == {
        "run_id": "r-1", "step": "wf.classify", "queue": "model.classifier", "model": "m-1",
        "attempt": 2, "level": "warning"}
    assert warning["error"] == f"sent {REDACTED}"
    assert warning["customer_ssn"] == REDACTED
    assert warning["timestamp"].endswith("Z")
    assert "attempt" not in lines[1] and lines[1]["run_id"] == "r-1"
    assert "run_id" not in lines[2]


def test_console_format_when_json_is_off(restore_structlog: None,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("WARNING", json=False)
    structlog.get_logger("test").warning("slow provider", run_id="r-2", password="hunter2")
    structlog.get_logger("test").info("dropped: below WARNING")
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "slow provider" in err and "r-2" in err and "hunter2" not in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err)


# -- Prometheus series ---------------------------------------------------------------------


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_record_step_counts_outcome_latency_retries_fallbacks_and_cost() -> None:
    wf = f"unit_{uuid.uuid4().hex[:8]}"  # fresh label values: the registry is process-wide
    metrics.record_step(wf, "route", "m-1", "fallback", attempts=3, latency_s=0.2,
                        cost_usd=0.004)
    metrics.record_step(wf, "route", "m-1", "succeeded", attempts=1, latency_s=0.02,
                        cost_usd=0.0)
    metrics.record_step(wf, "route", None, "failed", attempts=2, latency_s=None, cost_usd=0.0)

    assert sample("orchestration_step_outcomes_total", workflow=wf, step="route",
                  status="fallback") == 1
    assert sample("orchestration_step_outcomes_total", workflow=wf, step="route",
                  status="succeeded") == 1
    assert sample("orchestration_step_outcomes_total", workflow=wf, step="route",
                  status="failed") == 1
    assert sample("orchestration_step_retries_total", workflow=wf, step="route") == 3
    assert sample("orchestration_step_fallbacks_total", workflow=wf, step="route") == 1
    assert sample("orchestration_run_cost_usd_total", workflow=wf) == pytest.approx(0.004)
    latency: dict[str, Any] = {"workflow": wf, "step": "route", "model": "m-1"}
    assert sample("orchestration_step_latency_seconds_count", **latency) == 2
    assert sample("orchestration_step_latency_seconds_sum", **latency) == pytest.approx(0.22)
    assert sample("orchestration_step_latency_seconds_bucket", le="0.025", **latency) == 1
    assert sample("orchestration_step_latency_seconds_bucket", le="0.25", **latency) == 2


def test_record_call_counts_outcomes_and_keeps_the_last_breaker_state() -> None:
    model = f"unit-{uuid.uuid4().hex[:8]}"
    metrics.record_call(model, True, "closed")
    metrics.record_call(model, False, "closed")
    metrics.record_call(model, False, "open")
    assert sample("orchestration_model_calls_total", model=model, outcome="ok") == 1
    assert sample("orchestration_model_calls_total", model=model, outcome="error") == 2
    assert sample("orchestration_breaker_state", model=model) == 2
    metrics.record_call(model, True, "half-open")
    assert sample("orchestration_breaker_state", model=model) == 1
    metrics.record_call(model, True, None)  # a local answer: no breaker, state unchanged
    assert sample("orchestration_breaker_state", model=model) == 1


# -- per-step figures ----------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([], 50) is None


def test_step_stats_aggregates_rows_in_declared_order() -> None:
    rows = [
        ("b", "succeeded", 1, 200.0, 0.0), ("a", "succeeded", 3, 50.0, 0.01),
        ("a", "fallback", 2, 70.0, 0.02), ("a", "failed", 1, 60.0, 0.0),
        ("a", "skipped", 0, 1.0, 0.0), ("b", "succeeded", 1, None, 0.0),
    ]
    a, b, never = step_stats(rows, order=["a", "b", "never_ran"])
    assert (a.step, a.runs, a.retries, a.fallbacks, a.failed, a.skipped) == ("a", 4, 3, 1, 1, 1)
    assert (a.p50_ms, a.p99_ms) == (60.0, 70.0)  # the skipped step's latency is left out
    assert a.cost_usd == pytest.approx(0.03)
    assert (b.runs, b.p50_ms, b.retries) == (2, 200.0, 0)
    assert (never.step, never.runs, never.p50_ms) == ("never_ran", 0, None)


# -- Flower's guard ------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.com", False),
])
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_flower_on_loopback_needs_no_auth() -> None:
    launch = flower_command("127.0.0.1", 5555, {"FLOWER_BASIC_AUTH": ""})
    assert launch.argv[1:] == ["-m", "celery", "-A", "orchestration", "flower",
                               "--address=127.0.0.1", "--port=5555"]
    # An empty FLOWER_BASIC_AUTH would reach Flower as one empty credential.
    assert "FLOWER_BASIC_AUTH" not in launch.env


@pytest.mark.parametrize("auth", [None, "", "no-colon"])
def test_flower_beyond_loopback_without_auth_is_refused(auth: str | None) -> None:
    env = {} if auth is None else {"FLOWER_BASIC_AUTH": auth}
    with pytest.raises(ConfigurationError, match=r"refusing to start Flower"):
        flower_command("0.0.0.0", 5555, env)


# Empty user or password, on any address: the guard splits on commas as Flower does.
EMPTY_CREDENTIALS = [":", "admin:", ":pw", " : ", "admin: ", "no-colon", "ops:pw,", "ops:pw,:x",
                     "ops:pw,bob:", ","]


@pytest.mark.parametrize("address", ["0.0.0.0", "10.0.0.5", "127.0.0.1", "localhost"])
@pytest.mark.parametrize("auth", EMPTY_CREDENTIALS)
def test_flower_refuses_empty_credentials_on_any_address(auth: str, address: str) -> None:
    with pytest.raises(ConfigurationError, match="neither part empty"):
        flower_command(address, 5555, {"FLOWER_BASIC_AUTH": auth})


@pytest.mark.parametrize("auth", ["ops:s3cret", "ops:s3:cret", "a:b,c:d"])
def test_flower_beyond_loopback_with_auth_passes_it_in_the_environment(auth: str) -> None:
    launch = flower_command("0.0.0.0", 8080, {"FLOWER_BASIC_AUTH": auth, "PATH": "/bin"})
    assert "--address=0.0.0.0" in launch.argv and "--port=8080" in launch.argv
    # Never on the command line, which every local user can read (ps, /proc/*/cmdline).
    assert not any(auth in arg or "basic" in arg for arg in launch.argv)
    assert launch.env == {"FLOWER_BASIC_AUTH": auth, "PATH": "/bin"}
