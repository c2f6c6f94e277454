"""Prometheus metrics (``orchestration/metrics.py``, ``orchestration/exporter.py``).

- A threads worker started with ``ORCH_METRICS_PORT`` serves its own registry: after runs
  with a priced model call, a retry and a fallback, every documented series is there with
  the exact increments those runs caused (read as before/after differences).
- ``orchestrate metrics`` serves ``orchestration_queue_depth{queue}``, read from the broker,
  for a queue whose messages wait because no worker serves it.
- A prefork worker with ``PROMETHEUS_MULTIPROC_DIR`` writes per-child files that
  ``orchestrate metrics`` (same directory) aggregates.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestration import RunStatus, cancel, default_orchestrator
from tests.fakes.llm_server import FakeLLMServer
from tests.integration.support.helpers import wait_until
from tests.integration.support.observability import (
    FAKE_KEY_ENV,
    ORCHESTRATE,
    PRICED_COST,
    PRICED_TOKENS,
    Sample,
    background,
    has,
    obs_env,
    orchestrate,
    scrape,
    value,
    wait_for_http,
    write_catalogue,
)
from tests.integration.support.workflows import observability as ow
from tests.support.processes import free_port
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

RUN_TIMEOUT_S = 30.0
METRICS_TIMEOUT_S = 20.0
RUNS = 3
WF = "obs_metered"


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        server.configure("priced", prompt_tokens=PRICED_TOKENS[0],
                         completion_tokens=PRICED_TOKENS[1])
        yield server


@pytest.fixture(scope="module")
def metrics_worker(redis_service: Any, postgres_database: str, worker_logs: Path,
                   fake_server: FakeLLMServer,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A threads worker serving its own metrics; yields its /metrics URL."""
    port = free_port()
    models_file = write_catalogue(tmp_path_factory.mktemp("obs-metrics"), fake_server.url)
    env = obs_env(ORCH_METRICS_PORT=str(port), ORCH_MODELS_FILE=str(models_file),
                  **{FAKE_KEY_ENV: "sk-fake-obs"})
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    pool = Workers(worker_logs, env=env)
    try:
        pool.start("it-obs-metrics", [ow.OBS_QUEUE], pool="threads", concurrency=4)
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        pool.stop_all()


def test_a_threads_worker_serves_every_step_and_model_series(metrics_worker: str) -> None:
    url = metrics_worker
    wait_until(lambda: _answers(url), timeout=METRICS_TIMEOUT_S, what=f"{url} to answer")
    before = scrape(url)

    handles = [ow.metered.submit(prompt=f"bill {n}") for n in range(RUNS)]
    runs = [handle.wait(timeout=RUN_TIMEOUT_S) for handle in handles]
    for run in runs:
        assert run.status is RunStatus.SUCCEEDED, run.error
        assert run.cost_usd == pytest.approx(PRICED_COST)

    def delta(after: list[Sample], name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    def all_recorded() -> list[Sample] | None:
        # The last step's metrics are recorded just after the run row is finished.
        after = scrape(url)
        done = sum(delta(after, "orchestration_step_outcomes_total", workflow=WF, step=step)
                   for step in ("priced_call", "retried", "fallen"))
        return after if done >= 3 * RUNS else None

    after = wait_until(all_recorded, timeout=METRICS_TIMEOUT_S, what="every step counted")

    # Latency histogram per workflow/step/model: one observation per run, in buckets.
    assert has(after, "orchestration_step_latency_seconds_bucket", workflow=WF,
               step="priced_call", model="priced", le="+Inf")
    assert delta(after, "orchestration_step_latency_seconds_count", workflow=WF,
                 step="priced_call") == RUNS
    assert delta(after, "orchestration_step_latency_seconds_bucket", workflow=WF,
                 step="fallen", le="+Inf") == RUNS
    assert delta(after, "orchestration_step_latency_seconds_sum", workflow=WF,
                 step="priced_call") > 0
    # Outcomes by final status.
    assert delta(after, "orchestration_step_outcomes_total", workflow=WF, step="priced_call",
                 status="succeeded") == RUNS
    assert delta(after, "orchestration_step_outcomes_total", workflow=WF, step="retried",
                 status="succeeded") == RUNS
    assert delta(after, "orchestration_step_outcomes_total", workflow=WF, step="fallen",
                 status="fallback") == RUNS
    # Attempts beyond the first, and fallbacks.
    assert delta(after, "orchestration_step_retries_total", workflow=WF, step="retried") == RUNS
    assert delta(after, "orchestration_step_retries_total", workflow=WF,
                 step="priced_call") == 0
    assert delta(after, "orchestration_step_fallbacks_total", workflow=WF,
                 step="fallen") == RUNS
    assert delta(after, "orchestration_step_fallbacks_total", workflow=WF,
                 step="retried") == 0
    # Model calls, the breaker as last seen (0 = closed), and spend.
    assert delta(after, "orchestration_model_calls_total", model="priced", outcome="ok") == RUNS
    assert delta(after, "orchestration_model_calls_total", model="priced",
                 outcome="error") == 0
    assert has(after, "orchestration_breaker_state", model="priced")
    assert value(after, "orchestration_breaker_state", model="priced") == 0
    assert delta(after, "orchestration_run_cost_usd_total", workflow=WF) == pytest.approx(
        RUNS * PRICED_COST)


def _answers(url: str) -> bool:
    try:
        scrape(url)
    except Exception:
        return False
    return True


def test_exporter_serves_the_depth_of_a_queue_nobody_serves(
        redis_service: Any, postgres_database: str, tmp_path: Path) -> None:
    handles = [ow.parked.submit(n=n) for n in range(RUNS)]
    port = free_port()
    env = obs_env()
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    try:
        # `orchestrate queues` reads the same figure once.
        queues = orchestrate("queues", env=env).stdout
        assert re.search(rf"{re.escape(ow.PARKED_QUEUE)}\s*│\s*{RUNS}\b", queues), queues

        with background([*ORCHESTRATE, "metrics", "--port", str(port)], env,
                        tmp_path / "exporter.log") as exporter:
            url = f"http://127.0.0.1:{port}/metrics"
            wait_for_http(url, exporter, timeout=METRICS_TIMEOUT_S, what="orchestrate metrics")

            def depth() -> list[Sample] | None:
                samples = scrape(url)
                found = has(samples, "orchestration_queue_depth", queue=ow.PARKED_QUEUE)
                return samples if found else None

            samples = wait_until(depth, timeout=METRICS_TIMEOUT_S, what="the queue depth gauge")
            assert value(samples, "orchestration_queue_depth", queue=ow.PARKED_QUEUE) == RUNS
    finally:
        for handle in handles:
            cancel(handle.run_id)
        with default_orchestrator().celery.connection_for_write() as connection:
            connection.default_channel.queue_purge(ow.PARKED_QUEUE)


def test_exporter_aggregates_the_series_of_prefork_children(
        redis_service: Any, postgres_database: str, worker_logs: Path, tmp_path: Path) -> None:
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    env = obs_env(PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir))
    env.pop("ORCH_METRICS_PORT", None)
    pool = Workers(worker_logs, env=env)
    try:
        pool.start("it-obs-multiproc", [ow.MULTIPROC_QUEUE], pool="prefork", concurrency=2)
        runs = 6
        handles = [ow.multiproc.submit(n=n) for n in range(runs)]
        for handle in handles:
            assert handle.wait(timeout=RUN_TIMEOUT_S).status is RunStatus.SUCCEEDED

        def child_files() -> set[str] | None:
            pids = {path.stem.rsplit("_", 1)[1] for path in multiproc_dir.glob("counter_*.db")}
            return pids if len(pids) >= 2 else None

        # Both pool children ran steps, each writing its own files.
        wait_until(child_files, timeout=METRICS_TIMEOUT_S, what="files of two pool children")

        port = free_port()
        with background([*ORCHESTRATE, "metrics", "--port", str(port)], env,
                        tmp_path / "exporter.log") as exporter:
            url = f"http://127.0.0.1:{port}/metrics"
            wait_for_http(url, exporter, timeout=METRICS_TIMEOUT_S, what="orchestrate metrics")

            def aggregated() -> list[Sample] | None:
                samples = scrape(url)
                count = value(samples, "orchestration_step_outcomes_total",
                              workflow="obs_multiproc", step="busy", status="succeeded")
                return samples if count >= runs else None

            samples = wait_until(aggregated, timeout=METRICS_TIMEOUT_S,
                                 what="the children's outcomes in the aggregate")
            assert value(samples, "orchestration_step_outcomes_total", workflow="obs_multiproc",
                         step="busy", status="succeeded") == runs
            assert value(samples, "orchestration_step_latency_seconds_count",
                         workflow="obs_multiproc", step="busy") == runs
            # Each observation took at least the step's 0.3 s sleep.
            assert value(samples, "orchestration_step_latency_seconds_bucket",
                         workflow="obs_multiproc", step="busy", le="0.25") == 0
    finally:
        pool.stop_all()
