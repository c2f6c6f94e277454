"""``ctx.memory`` end to end on the embedded worker (SQLite) with the fake LLM server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from orchestration import RunStatus, StepContext, Workflow
from orchestration.core.clock import utcnow
from orchestration.core.status import StepStatus
from orchestration.store.memory import MemoryWrite, Summary, write_memory
from orchestration.store.models import MemorySummaryRow, MemoryTurnRow
from orchestration.store.repository import StepOutcome
from orchestration.testing import embedded_orchestrator
from tests.fakes.llm_server import FakeLLMServer
from tests.support.memory_flows import KEY_ENV, MEMORY_CATALOGUE, declare, marker


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    directory = tmp_path_factory.mktemp("memory")
    with FakeLLMServer() as server:
        models = directory / "models.yaml"
        models.write_text(MEMORY_CATALOGUE.replace("URL", server.url))
        with embedded_orchestrator(directory, models_file=models, redis_url=None) as orch:
            found = declare(orch)
            found.server, found.orch = server, orch
            yield found


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch, flows: SimpleNamespace) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-fake")
    flows.server.reset()


def stored(flows: SimpleNamespace, conversation: str) -> list[tuple[int, str, str]]:
    return [(t.seq, t.role, t.content) for turns in
            flows.orch.store.memory.turns(conversation).values() for t in turns]


def test_window_and_summary_across_30_turns(flows: SimpleNamespace) -> None:
    views = [flows.chat.run(conversation_id="thirty", message=marker(i), timeout=20)
             for i in range(1, 16)]  # 15 runs x (user, assistant) = 30 turns
    assert all(run.status is RunStatus.SUCCEEDED for run in views)
    last = flows.chat.run(conversation_id="thirty", message="next", timeout=20)
    view = last.outputs["answer"]
    # 30 turns, window 10: turns 21-30 verbatim; the summary covers exactly 1-20.
    assert view["upto"] == 20
    assert view["turns"] == [text for i in range(11, 16)
                             for text in (marker(i), f"re {marker(i)}")]
    for i in range(1, 11):
        assert view["summary"].count(marker(i)) == 2  # the user turn and its answer, once
    for i in range(11, 16):
        assert marker(i) not in view["summary"]
    assert view["tokens"] == view["counted"] <= view["budget"]
    summary = flows.orch.store.memory.summaries("thirty")["mem_chat"]
    assert summary.upto_seq == 20
    # Each summarising call folded the last summary and only the newly evicted turns in.
    assert flows.server.stats()["summarizer"]["requests"] == 10
    assert [seq for seq, *_ in stored(flows, "thirty")] == list(range(1, 33))


def test_summariser_down_keeps_turns_and_fits_then_catches_up(flows: SimpleNamespace) -> None:
    flows.server.configure("summarizer", error_status=503, error_rate=1.0)
    views = [flows.tight.run(conversation_id="down", message=marker(i) + " " + "word " * 40,
                             timeout=20).outputs["answer"] for i in range(1, 13)]
    # No summary could be made: every turn is kept, and the context (budget 400 tokens)
    # still fits: the oldest turns are left out, never more than the budget.
    assert all(view["upto"] == 0 and view["summary"] is None for view in views)
    assert all(view["tokens"] == view["counted"] <= view["budget"] == 400 for view in views)
    assert views[-1]["truncated"] and len(views[-1]["turns"]) < 22
    assert views[-1]["turns"][-1] == f"re {marker(11)} " + "word " * 40
    assert len(stored(flows, "down")) == 24
    flows.server.configure("summarizer")  # back up
    view = flows.tight.run(conversation_id="down", message="later", timeout=20).outputs["answer"]
    assert view["upto"] == 14  # every turn that left the window, at once
    assert view["tokens"] == view["counted"] <= 400
    summary = flows.orch.store.memory.summaries("down")["mem_tight"]
    assert summary.upto_seq == 14 and all(marker(i) in summary.content for i in range(1, 8))
    assert len(stored(flows, "down")) == 26


def test_a_backlog_is_summarised_in_parts_that_fit_the_summariser(
        flows: SimpleNamespace) -> None:
    flows.server.configure("small-summarizer", error_status=503, error_rate=1.0)
    for i in range(1, 6):  # 10 turns of ~100 tokens; none summarised
        flows.narrow.run(conversation_id="backlog", message=marker(i) + " w" * 200, timeout=20)
    flows.server.configure("small-summarizer")
    first = flows.narrow.run(conversation_id="backlog", message="a", timeout=20)
    second = flows.narrow.run(conversation_id="backlog", message="b", timeout=20)
    # 8 turns left the window; a 600-token summariser takes a few at a time.
    assert 0 < first.outputs["answer"]["upto"] < 8
    assert first.outputs["answer"]["upto"] < second.outputs["answer"]["upto"] <= 10
    prompt = flows.server.stats()["small-summarizer"]["last_request"]["messages"][0]["content"]
    assert len(prompt) / 4 < 600


def test_the_model_is_asked_with_the_conversation_as_history(flows: SimpleNamespace) -> None:
    first = flows.ask.run(conversation_id="history", message="I am Ada", timeout=20)
    flows.ask.run(conversation_id="history", message="Who am I?", timeout=20)
    sent = flows.server.stats()["chat"]["last_request"]["messages"]
    assert sent == [{"role": "user", "content": "I am Ada"},
                    {"role": "assistant", "content": first.outputs["reply"]},
                    {"role": "user", "content": "Who am I?"}]
    call = flows.orch.store.get_run(first.run_id).steps["reply"].attempt_log[0]["calls"][0]
    assert 0 < call["context_utilisation"] < 0.01  # a few tokens of a 4096-token window


def test_a_failed_or_retried_attempt_leaves_no_turn(flows: SimpleNamespace) -> None:
    run = flows.flaky.run(conversation_id="retry", message="hello", fail=2, timeout=20)
    assert run.status is RunStatus.SUCCEEDED
    assert run.steps["once_more"].attempts == 3
    assert run.steps["never"].status is StepStatus.FAILED
    # Only the attempt that succeeded appended; the step that failed appended nothing.
    assert [(role, text) for _, role, text in stored(flows, "retry")] == [
        ("user", "hello (attempt 3)"), ("assistant", "answered hello")]


def test_a_second_record_of_a_step_does_not_append_again(flows: SimpleNamespace) -> None:
    handle = flows.secret.submit(conversation_id="twice", message="once")
    assert handle.wait(timeout=20).status is RunStatus.SUCCEEDED
    # A duplicate delivery records the same step again: already terminal, nothing written.
    write = MemoryWrite("mem_secret", "twice", [("user", "duplicate", 1)])
    assert not flows.orch.store.record_step(
        handle.run_id, "remember", StepOutcome(StepStatus.SUCCEEDED, output="ok", memory=write))
    assert [text for *_, text in stored(flows, "twice")] == ["once", "noted"]


def test_turns_are_redacted_before_they_are_stored(flows: SimpleNamespace) -> None:
    message = "my api_key=sk-live-0123456789abcdef and mail alice@example.com"
    flows.secret.run(conversation_id="secret", message=message, timeout=20)
    (_, _, text), _ = stored(flows, "secret")
    assert "sk-live-0123456789abcdef" not in text and "alice@example.com" not in text
    assert "[REDACTED]" in text and "[EMAIL]" in text


def test_concurrent_runs_keep_every_turn_once_in_order(flows: SimpleNamespace) -> None:
    handles = [flows.secret.submit(conversation_id="busy", message=marker(i))
               for i in range(8)]
    assert all(h.wait(timeout=30).status is RunStatus.SUCCEEDED for h in handles)
    turns = stored(flows, "busy")
    assert [seq for seq, *_ in turns] == list(range(1, 17))
    users = [text for _, role, text in turns if role == "user"]
    assert sorted(users) == sorted(marker(i) for i in range(8))
    # The two turns of one append are adjacent.
    assert all(turns[i][1] == "user" and turns[i + 1][2] == "noted" for i in range(0, 16, 2))


def test_seq_allocation_survives_summaries_outliving_their_turns(flows: SimpleNamespace) -> None:
    store = flows.orch.store
    with store.engine.begin() as conn:
        write_memory(conn, MemoryWrite("mem_x", "gone", [], Summary(40, "old", 1)),
                     run_id="r", step="s", now=utcnow())
        seqs = write_memory(conn, MemoryWrite("mem_x", "gone", [("user", "new", 1)]),
                            run_id="r", step="s", now=utcnow())
    assert seqs == [41]  # numbers never go back, whatever retention deleted
    with store.reader.connect() as conn:
        assert conn.execute(select(MemoryTurnRow.seq).where(
            MemoryTurnRow.conversation == "gone")).scalars().all() == [41]
        assert conn.execute(select(MemorySummaryRow.upto_seq).where(
            MemorySummaryRow.conversation == "gone")).scalars().all() == [40]


def test_ctx_memory_without_memory_says_how_to_declare_it(tmp_path: Path) -> None:
    with embedded_orchestrator(tmp_path) as orch:
        plain = Workflow("mem_none", app=orch)

        @plain.task
        def step(ctx: StepContext) -> None:
            ctx.memory.context()

        run = plain.run(timeout=20)
    assert run.status is RunStatus.FAILED
    assert "memory=Memory(...)" in (run.steps["step"].error or "")
