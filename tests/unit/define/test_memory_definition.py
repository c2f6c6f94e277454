"""``Memory`` is checked where it is declared: bad values name the culprit."""

from __future__ import annotations

from typing import Any

import pytest

from orchestration import InvalidInput, Memory, Workflow, WorkflowDefinitionError
from orchestration.app import Orchestrator


@pytest.mark.parametrize(("options", "culprit"), [
    ({"key": 3}, "key"),
    ({"key": "not an identifier"}, "memory key"),
    ({"key": "c", "window": 0}, "window"),
    ({"key": "c", "window": True}, "window"),
    ({"key": "c", "max_tokens": 1.5}, "max_tokens"),
    ({"key": "c", "summarize_with": ""}, "summarize_with"),
    ({"key": "c", "retention": -1}, "retention"),
    ({"key": "c", "retention": float("inf")}, "retention"),
])
def test_bad_values_are_refused_naming_the_option(options: dict[str, Any], culprit: str) -> None:
    with pytest.raises(WorkflowDefinitionError, match=culprit):
        Memory(**options)


def test_the_key_must_be_a_declared_input(orchestrator: Orchestrator) -> None:
    with pytest.raises(WorkflowDefinitionError, match="'conversation_id' is not a declared input"):
        Workflow("mem_undeclared", inputs=["message"], app=orchestrator,
                 memory=Memory(key="conversation_id"))
    with pytest.raises(WorkflowDefinitionError, match="declare the workflow's inputs"):
        Workflow("mem_no_inputs", app=orchestrator, memory=Memory(key="conversation_id"))
    with pytest.raises(WorkflowDefinitionError, match="memory must be a Memory"):
        Workflow("mem_dict", inputs=["c"], app=orchestrator,
                 memory={"key": "c"})  # type: ignore[arg-type]


def test_the_key_is_required_and_must_name_a_conversation(orchestrator: Orchestrator) -> None:
    chat = Workflow("mem_required", inputs=["conversation_id", "message"], app=orchestrator,
                    memory=Memory(key="conversation_id"))

    @chat.task
    def answer(message: str) -> str:
        return message

    compiled = chat.validate()
    assert "conversation_id" in compiled.required_inputs  # no step reads it: memory does
    assert compiled.steps["answer"].memory == chat.memory
    with pytest.raises(InvalidInput, match="missing input"):
        chat.check_inputs(compiled, {"message": "hi"})
    with pytest.raises(InvalidInput, match="string or an integer"):
        chat.check_inputs(compiled, {"conversation_id": {"id": 1}, "message": "hi"})
    with pytest.raises(InvalidInput, match="1 to 200 characters"):
        chat.check_inputs(compiled, {"conversation_id": "x" * 201, "message": "hi"})
    assert chat.check_inputs(compiled, {"conversation_id": 7, "message": "hi"})
