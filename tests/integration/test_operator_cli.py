"""``orchestrate show`` and ``orchestrate stats`` against runs made by a real worker.

The CLI runs as a subprocess with the test process's ``ORCH_*`` environment (as an
operator's shell would), reading the session's PostgreSQL results DB. ``stats`` is
checked against latencies the steps inject (``time.sleep``), retries and fallbacks the
steps force, and model failures the fake LLM server injects (whose own request log is
the ground truth); ``orchestration.observe.queries.workflow_stats`` is asserted directly too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestration import RunResult, RunStatus, StepStatus, default_orchestrator
from orchestration.observe.queries import ModelStats, WorkflowStats, workflow_stats
from tests.fakes.llm_server import FakeLLMServer
from tests.integration.support.observability import (
    FAKE_KEY_ENV,
    obs_env,
    orchestrate,
    write_catalogue,
)
from tests.integration.support.workflows import observability as ow
from tests.support.workers import Worker, Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

RUN_TIMEOUT_S = 60.0
STATS_RUNS = 20
# Fixed seeds: the fake's draws for `coin` and `coin-backed` are the same every session.
COIN_SEED = 11


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def worker(redis_service: Any, postgres_database: str, worker_logs: Path,
           fake_server: FakeLLMServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    models_file = write_catalogue(tmp_path_factory.mktemp("obs-cli"), fake_server.url)
    pool = Workers(worker_logs, env=obs_env(ORCH_MODELS_FILE=str(models_file),
                                            **{FAKE_KEY_ENV: "sk-fake-obs"}))
    try:
        yield pool.start("it-obs-cli", [ow.OBS_QUEUE], pool="threads", concurrency=4)
    finally:
        pool.stop_all()


def run_all(submissions: list[tuple[Any, dict[str, Any]]]) -> list[RunResult]:
    """Submit every run first, then wait for each."""
    handles = [workflow.submit(**inputs) for workflow, inputs in submissions]
    return [handle.wait(timeout=RUN_TIMEOUT_S) for handle in handles]


# -- orchestrate show ----------------------------------------------------------------------


def step_line(output: str, step: str) -> str:
    """The tree line of one step in ``orchestrate show`` output."""
    found = [line for line in output.splitlines() if re.search(rf"\b{step} [a-z]+ \+", line)]
    assert len(found) == 1, f"no single line for step {step!r} in:\n{output}"
    return found[0]


def offset_ms(line: str) -> int:
    match = re.search(r" \+(\d+) ms", line)
    assert match, line
    return int(match.group(1))


def test_show_explains_a_run_with_a_retry_and_a_fallback(worker: Worker) -> None:
    run = ow.show.run(ticket_id=48291, timeout=RUN_TIMEOUT_S)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.steps["fetch"].attempts == 2
    assert run.steps["route"].status is StepStatus.FALLBACK

    output = orchestrate("show", run.run_id).stdout

    assert f"obs_show run {run.run_id}: succeeded" in output
    fetch, route, reply = (step_line(output, name) for name in ("fetch", "route", "reply"))
    assert re.search(rf"fetch succeeded \+\d+ ms took [\d.]+ ms attempts=2 on "
                     rf"{re.escape(ow.OBS_QUEUE)} by it-obs-cli@", fetch), fetch
    assert "route fallback +" in route and "attempts=1" in route
    assert "reply succeeded +" in reply
    # The attempts of `fetch`, with the first one's error, under its line.
    lines = output.splitlines()
    below_fetch = lines[lines.index(fetch) + 1:lines.index(fetch) + 3]
    assert re.search(r"attempt 1: failed [\d.]+ ms .*ticket store returned 503", below_fetch[0])
    assert re.search(r"attempt 2: succeeded [\d.]+ ms", below_fetch[1])
    assert any("router model is down" in line for line in lines[lines.index(route):])
    # The timeline: offsets from the run's creation, in dependency order, matching the DB.
    assert offset_ms(fetch) <= offset_ms(route) <= offset_ms(reply)
    for name, line in (("fetch", fetch), ("route", route), ("reply", reply)):
        started = run.steps[name].started_at
        assert started is not None and run.created_at is not None
        assert offset_ms(line) == pytest.approx(
            (started - run.created_at).total_seconds() * 1000, abs=1.0)

    data = json.loads(orchestrate("show", run.run_id, "--json").stdout)
    assert data["run_id"] == run.run_id and data["status"] == "succeeded"
    assert data["steps"]["fetch"]["attempts"] == 2
    assert data["steps"]["fetch"]["status"] == "succeeded"
    assert data["steps"]["route"]["status"] == "fallback"
    assert "router model is down" in data["steps"]["route"]["error"]
    assert data["outputs"]["route"] == "support_tier_1"


def test_show_of_an_unknown_run_fails_with_a_message(worker: Worker) -> None:
    done = orchestrate("show", "00000000-0000-0000-0000-000000000000", check=False)
    assert done.returncode != 0
    assert "00000000-0000-0000-0000-000000000000" in done.stderr


# -- orchestrate stats ---------------------------------------------------------------------


def stats_rows(output: str) -> dict[str, list[str]]:
    """The cells of each row of the tables printed by ``orchestrate stats``."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃|]", line) if cell.strip()]
        if len(cells) >= 4:
            rows[cells[0]] = cells[1:]
    return rows


def nearest_rank(ordered: list[float], q: int) -> float:
    """The q-th percentile of sorted values: the smallest with q% of them at or below it."""
    return ordered[-(-q * len(ordered) // 100) - 1]


@pytest.fixture(scope="module")
def latency_runs(worker: Worker) -> list[RunResult]:
    runs = run_all([(ow.latency, {"n": n}) for n in range(STATS_RUNS)])
    for run in runs:
        assert run.status is RunStatus.SUCCEEDED, run.error
    return runs


def test_stats_reports_the_injected_latencies_retries_and_fallbacks(
        latency_runs: list[RunResult]) -> None:
    report = workflow_stats(default_orchestrator(), "obs_latency", since=None)
    assert isinstance(report, WorkflowStats)
    assert report.runs == STATS_RUNS
    assert report.runs_by_status == {"succeeded": STATS_RUNS}
    by_step = {s.step: s for s in report.steps}
    assert list(by_step) == ["quick", "slow", "wobbly", "degraded"]  # declaration order
    quick, slow, wobbly, degraded = (by_step[n] for n in ("quick", "slow", "wobbly", "degraded"))
    assert all(s.runs == STATS_RUNS for s in by_step.values())
    # The percentiles of the latencies recorded on the runs (nearest rank), which are at
    # least the steps' sleeps of 50 ms and 200 ms.
    for name, figures, sleep_s in ((("quick", quick, ow.QUICK_S), ("slow", slow, ow.SLOW_S))):
        recorded = sorted(run.steps[name].latency_ms or 0.0 for run in latency_runs)
        assert recorded[0] >= sleep_s * 1000, (name, recorded)
        assert (figures.p50_ms, figures.p95_ms, figures.p99_ms) == (
            nearest_rank(recorded, 50), nearest_rank(recorded, 95),
            nearest_rank(recorded, 99)), (name, recorded)
    assert (wobbly.retries, wobbly.fallbacks, wobbly.failed) == (STATS_RUNS, 0, 0)
    assert (degraded.retries, degraded.fallbacks, degraded.failed) == (0, STATS_RUNS, 0)
    assert (quick.retries, quick.fallbacks, slow.retries, slow.fallbacks) == (0, 0, 0, 0)

    output = orchestrate("stats", "obs_latency").stdout
    assert f"obs_latency over 24h: {STATS_RUNS} runs ({STATS_RUNS} succeeded)" in output
    rows = stats_rows(output)
    # step | runs | p50 | p95 | p99 | retries | fallback % | failed | skipped | cost $
    assert rows["quick"][0] == str(STATS_RUNS)
    assert float(rows["quick"][1]) == pytest.approx(quick.p50_ms, abs=0.1)
    assert float(rows["slow"][1]) == pytest.approx(slow.p50_ms, abs=0.1)
    assert rows["wobbly"][4:7] == [str(STATS_RUNS), "0.0", "0"]
    assert rows["degraded"][4:7] == ["0", "100.0", "0"]
    assert rows["slow"][4:7] == ["0", "0.0", "0"]


@pytest.fixture(scope="module")
def model_runs(worker: Worker, fake_server: FakeLLMServer) -> dict[str, dict[str, Any]]:
    """Runs of obs_models with `coin` and `coin-backed` failing half their calls; returns
    the fake server's per-model request log (the ground truth)."""
    for model in ("coin", "coin-backed"):
        fake_server.configure(model, error_rate=0.5, seed=COIN_SEED)
    runs = run_all([(ow.models, {"prompt": f"toss {n}"}) for n in range(STATS_RUNS)])
    for run in runs:
        assert run.status is RunStatus.SUCCEEDED, run.error
    return fake_server.stats()


def model_stats(name: str) -> ModelStats:
    report = workflow_stats(default_orchestrator(), "obs_models", since=None)
    found = {m.model: m for m in report.models}
    assert name in found, f"no model {name!r} in {found}"
    return found[name]


def test_stats_error_rate_per_model_matches_the_failures_injected(
        model_runs: dict[str, dict[str, Any]]) -> None:
    coin = model_runs["coin"]
    failures = coin["statuses"].get("500", 0)
    assert coin["requests"] == STATS_RUNS  # retries=0: one call per run
    assert 0 < failures < STATS_RUNS, coin  # the seed gives a mix

    stats = model_stats("coin")
    assert (stats.attempts, stats.failed) == (STATS_RUNS, failures)
    assert stats.error_rate == pytest.approx(failures / STATS_RUNS)
    # Every failed call ended in the step's fallback.
    report = workflow_stats(default_orchestrator(), "obs_models", since=None)
    toss = next(s for s in report.steps if s.step == "toss")
    assert toss.fallbacks == failures

    rows = stats_rows(orchestrate("stats", "obs_models", "--since", "all").stdout)
    # attempts, failed, error rate, then the calls' context-window use (p50, max)
    assert rows["coin"][:3] == [str(STATS_RUNS), str(failures),
                                f"{100 * failures / STATS_RUNS:.1f}%"]
    assert all(cell.endswith("%") for cell in rows["coin"][3:5]), rows["coin"]
    assert rows["toss"][5] == f"{100 * failures / STATS_RUNS:.1f}"  # fallback %


def test_stats_error_rate_counts_calls_a_catalogue_fallback_answered(
        model_runs: dict[str, dict[str, Any]]) -> None:
    backed = model_runs["coin-backed"]
    failures = backed["statuses"].get("500", 0)
    assert backed["requests"] == STATS_RUNS and 0 < failures < STATS_RUNS, backed
    assert model_runs["backup"]["requests"] == failures  # the fallback model answered them

    stats = model_stats("coin-backed")
    assert (stats.attempts, stats.failed) == (STATS_RUNS, failures)
