"""Conversation memory through real workers: Redis broker, PostgreSQL results DB.

Memory workers (threads, 8 slots) import ``support/workflows/memory.py`` with a catalogue
whose ``chat`` and ``summarizer`` models are the fake LLM server of this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import inspect, text

from orchestration import RunStatus, default_orchestrator, get_run, resume
from orchestration.cli.main import main as cli
from orchestration.store.memory import Turn
from tests.fakes.llm_server import FakeLLMServer
from tests.integration.support.helpers import wait_until
from tests.integration.support.workflows import memory as mw
from tests.support.memory_flows import KEY_ENV, MEMORY_CATALOGUE, marker
from tests.support.workers import Workers

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.workers]

FAST_BEATS = {"ORCH_HEARTBEAT_INTERVAL": "1", "ORCH_WORKER_DEAD_AFTER": "4"}
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def memory_env(fake_server: FakeLLMServer,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    models = tmp_path_factory.mktemp("memory") / "models.yaml"
    models.write_text(MEMORY_CATALOGUE.replace("URL", fake_server.url))
    return {**os.environ, **FAST_BEATS, "ORCH_MODELS_FILE": str(models), KEY_ENV: "sk-fake",
            "ORCH_IMPORTS": "tests.integration.support.workflows.memory"}


@pytest.fixture(scope="module")
def memory_workers(workers: Workers, worker_logs: Path,
                   memory_env: dict[str, str]) -> Iterator[Workers]:
    pool = Workers(worker_logs, env=memory_env)
    try:
        pool.start("it-memory", [mw.QUEUE], pool="threads", concurrency=8)
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture
def fake(fake_server: FakeLLMServer, memory_workers: Workers) -> FakeLLMServer:
    fake_server.reset()
    return fake_server


def turns(conversation: str) -> list[Turn]:
    found = default_orchestrator().store.memory.turns(conversation)
    return [turn for listed in found.values() for turn in listed]


def succeeded(run: Any) -> Any:
    assert run.status is RunStatus.SUCCEEDED, (run.error, {n: s.error for n, s in
                                                          run.steps.items()})
    return run


def test_window_and_summary_across_30_turns(fake: FakeLLMServer) -> None:
    for i in range(1, 16):
        succeeded(mw.chat.run(conversation_id="it-thirty", message=marker(i), timeout=TIMEOUT))
    view = succeeded(mw.chat.run(conversation_id="it-thirty", message="next",
                                 timeout=TIMEOUT)).outputs["answer"]
    assert view["upto"] == 20
    assert view["turns"] == [t for i in range(11, 16) for t in (marker(i), f"re {marker(i)}")]
    assert all(view["summary"].count(marker(i)) == 2 for i in range(1, 11))
    assert not any(marker(i) in view["summary"] for i in range(11, 16))
    assert fake.stats()["summarizer"]["requests"] == 10
    assert [t.seq for t in turns("it-thirty")] == list(range(1, 33))


def test_200_turns_never_exceed_the_budget_while_the_summariser_fails_at_times(
        fake: FakeLLMServer) -> None:
    fake.configure("summarizer", error_status=503, error_rate=0.5, seed=7)
    views = []
    for i in range(1, 101):  # 100 runs x 2 turns, one at a time (each reads the last)
        message = marker(i) + " " + "word " * (i % 17) * 5
        views.append(succeeded(mw.tight.run(conversation_id="it-two-hundred", message=message,
                                            timeout=TIMEOUT)).outputs["answer"])
    assert all(view["tokens"] == view["counted"] <= view["budget"] == 400 for view in views)
    statuses = fake.stats()["summarizer"]["statuses"]
    assert statuses.get("503") and statuses.get("200")  # both happened
    assert [t.seq for t in turns("it-two-hundred")] == list(range(1, 201))  # none lost


def test_a_retried_attempt_leaves_only_the_successful_turns(fake: FakeLLMServer) -> None:
    run = succeeded(mw.flaky.run(conversation_id="it-retry", message="hi", fail=2,
                                 timeout=TIMEOUT))
    assert run.steps["once_more"].attempts == 3
    assert [(t.role, t.content) for t in turns("it-retry")] == [
        ("user", "hi (attempt 3)"), ("assistant", "answered hi")]


def test_resume_and_a_duplicate_dispatch_do_not_append_again(
        fake: FakeLLMServer, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    run = mw.resumable.run(conversation_id="it-resume", message="m", gate_file=str(gate),
                           timeout=TIMEOUT)
    assert run.status is RunStatus.FAILED
    assert [t.content for t in turns("it-resume")] == ["m", "first m"]  # step 1 recorded
    gate.write_text("open")
    resumed = succeeded(resume(run.run_id).wait(timeout=TIMEOUT))
    assert [t.content for t in turns("it-resume")] == ["m", "first m", "second m"]
    # The whole run's messages sent again (a duplicate delivery of every step).
    mw.resumable.dispatch(run.run_id, dict(resumed.inputs))
    wait_until(lambda: get_run(run.run_id).status.is_terminal, timeout=TIMEOUT,
               what="the re-dispatched run to pass through")
    store = default_orchestrator().store
    wait_until(lambda: store.get_run(run.run_id).steps["second"].deliveries >= 2 or None,
               timeout=TIMEOUT, what="the duplicate delivery of the last step")
    assert [t.content for t in turns("it-resume")] == ["m", "first m", "second m"]


def test_a_step_redelivered_after_its_worker_died_appends_once(
        fake: FakeLLMServer, extra_workers: Workers, memory_env: dict[str, str],
        redis_service: redis.Redis) -> None:
    extra_workers.env = memory_env
    first = extra_workers.start("it-mem-crash-a", [mw.CRASH_QUEUE], pool="threads",
                                concurrency=2)
    run_id = mw.crashing.submit(conversation_id="it-crash", message="boom").run_id
    wait_until(lambda: redis_service.get(f"it-mem-crash:{run_id}"), timeout=TIMEOUT,
               what="the first delivery to hang")
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()
    extra_workers.start("it-mem-crash-b", [mw.CRASH_QUEUE], pool="threads", concurrency=2)
    run = wait_until(lambda: (r := get_run(run_id)).status.is_terminal and r, timeout=60,
                     what="the swept step to run again")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(first.process.pid, signal.SIGKILL)
    succeeded(run)
    assert run.steps["hang_first"].crashes == 1
    assert [(t.role, t.content) for t in turns("it-crash")] == [
        ("user", "boom"), ("assistant", "re boom")]


def test_eight_concurrent_runs_keep_every_turn_once_in_order(fake: FakeLLMServer,
                                                             redis_service: redis.Redis) -> None:
    redis_service.delete("it-mem:it-together")
    handles = [mw.together.submit(conversation_id="it-together", message=marker(i), expect=8)
               for i in range(8)]
    for handle in handles:
        succeeded(handle.wait(timeout=TIMEOUT))
    found = turns("it-together")
    assert [t.seq for t in found] == list(range(1, 17))
    assert sorted(t.content for t in found if t.role == "user") == [marker(i) for i in range(8)]
    for user, answer in zip(found[::2], found[1::2], strict=True):  # each append adjacent
        assert (user.role, answer.role, answer.content) == (
            "user", "assistant", f"re {user.content}")
        assert user.run_id == answer.run_id


def test_a_secret_in_a_turn_is_redacted(fake: FakeLLMServer) -> None:
    message = "token: sk-live-0123456789abcdef, write to alice@example.com"
    succeeded(mw.secret.run(conversation_id="it-secret", message=message, timeout=TIMEOUT))
    stored = turns("it-secret")[0].content
    assert "sk-live-0123456789abcdef" not in stored and "alice@example.com" not in stored
    assert "[REDACTED]" in stored and "[EMAIL]" in stored


def test_forget_leaves_no_row_that_mentions_the_conversation(fake: FakeLLMServer) -> None:
    key, content = "it-forget-me-7f3a", "my-private-marker-91c2"
    for i in range(12):  # enough for a summary too
        succeeded(mw.chat.run(conversation_id=key, message=f"{content} {i}", timeout=TIMEOUT))
    succeeded(mw.chat.run(conversation_id="it-keep-me", message="kept", timeout=TIMEOUT))
    store = default_orchestrator().store
    assert store.memory.summaries(key)
    assert mentions(key) and mentions(content)
    shown = CliRunner().invoke(cli, ["memory", "show", key, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["it_mem_chat"]["summary"]["upto_seq"] == 12
    result = CliRunner().invoke(cli, ["memory", "forget", key, "--yes"])
    assert result.exit_code == 0, result.output
    assert "24 turn(s)" in result.output and "12 run(s)" in result.output
    assert mentions(key) == [] and mentions(content) == []
    assert [t.content for t in turns("it-keep-me")] == ["kept", "re kept"]


def mentions(needle: str) -> list[str]:
    """Every row of every table in the results DB whose text mentions ``needle``."""
    engine = default_orchestrator().store.engine
    found = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            rows = conn.execute(text(f'SELECT * FROM "{table}"')).all()
            found += [f"{table}: {row}" for row in rows if needle in str(tuple(row))]
    return found


def test_stats_show_context_window_utilisation(fake: FakeLLMServer) -> None:
    succeeded(mw.chat.run(conversation_id="it-stats", message="x " * 50, timeout=TIMEOUT))
    # The summariser's calls carry their utilisation on the attempt's trace.
    for i in range(6):
        succeeded(mw.chat.run(conversation_id="it-stats", message=marker(i), timeout=TIMEOUT))
    result = CliRunner().invoke(cli, ["stats", "it_mem_chat", "--since", "all"])
    assert result.exit_code == 0, result.output
    assert "context p50" in result.output and "summarizer" in result.output
