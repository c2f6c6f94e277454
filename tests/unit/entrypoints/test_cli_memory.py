"""``orchestrate memory show / forget / prune`` on a results DB with a conversation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from click.testing import CliRunner, Result

import orchestration.define.host as host_module
from orchestration import Memory, StepContext, Workflow
from orchestration.cli import main
from orchestration.testing import embedded_orchestrator


@pytest.fixture(scope="module")
def conversation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with embedded_orchestrator(tmp_path_factory.mktemp("cli-memory")) as app:
        wf = Workflow("cli_memory", app=app, inputs=["conversation_id", "message"],
                      memory=Memory(key="conversation_id"))

        @wf.task
        def talk(message: str, ctx: StepContext) -> str:
            ctx.memory.append(user=message, assistant=f"re {message}")
            return message

        runs = [wf.run(conversation_id=key, message=f"hello from {key}", timeout=20)
                for key in ("c-show", "c-forget", "c-forget")]
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ORCH_DATABASE_URL", app.settings.database_url)
            patch.setenv("ORCH_IMPORTS", "")
            patch.setenv("COLUMNS", "250")
            patch.delenv("ORCH_BROKER_URL", raising=False)
            patch.delenv("ORCH_REDIS_URL", raising=False)
            patch.setattr(host_module, "_default", None)  # rebuilt from the environment
            yield SimpleNamespace(app=app, runs=runs)
            built = host_module._default
            if built is not None:
                built.shutdown()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_show_prints_the_turns_as_stored(conversation: SimpleNamespace) -> None:
    result = invoke("memory", "show", "c-show")
    assert result.exit_code == 0, result.output
    assert "cli_memory: 2 turn(s)" in result.output and "re hello from c-show" in result.output
    shown = json.loads(invoke("memory", "show", "c-show", "--json").output)
    assert [(t["seq"], t["role"]) for t in shown["cli_memory"]["turns"]] == [
        (1, "user"), (2, "assistant")]
    assert "no memory of conversation" in invoke("memory", "show", "nobody").output


def test_forget_erases_the_conversation_and_its_runs(conversation: SimpleNamespace) -> None:
    assert invoke("memory", "forget", "c-forget").exit_code != 0  # asks first; no answer
    result = invoke("memory", "forget", "c-forget", "--yes")
    assert result.exit_code == 0, result.output
    assert "4 turn(s)" in result.output and "2 run(s)" in result.output
    assert conversation.app.store.memory.turns("c-forget") == {}
    kept = {run.run_id for run in conversation.app.store.list_runs(limit=10)}
    assert kept == {conversation.runs[0].run_id}
    assert invoke("memory", "prune").exit_code == 0
