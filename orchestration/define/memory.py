"""``Memory``: the conversation state a workflow keeps across its runs.

Declared on a workflow, ``Workflow("chat", inputs=["conversation_id", "message"],
memory=Memory(key="conversation_id", window=10, summarize_with="gpt-4o-mini"))``: the
input ``key`` names the conversation a run belongs to; a step reads
``ctx.memory.context()`` and writes ``ctx.memory.append(...)`` (see
:mod:`orchestration.execute.memory`). A *turn* is one message: a role and its content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from orchestration.core.names import identifier
from orchestration.errors import InvalidInput, WorkflowDefinitionError

MAX_KEY_LENGTH = 200  # the conversation column's width


@dataclass(frozen=True)
class Memory:
    """How a workflow remembers a conversation across its runs.

    - ``key``: the workflow input whose value names the conversation (a declared input,
      required by every run; its value a string or an integer);
    - ``window``: how many recent turns ``context()`` gives verbatim;
    - ``max_tokens``: the most tokens ``context()`` may return (None: only the model's
      context window bounds it);
    - ``summarize_with``: the catalogue model that folds turns leaving the window into a
      running summary (None: older turns are kept but left out of the context);
    - ``retention``: seconds a turn (and a summary) is kept; None keeps them until
      ``orchestrate memory forget``.

    Bad values raise :class:`WorkflowDefinitionError` naming the option.
    """

    key: str
    window: int = 10
    max_tokens: int | None = None
    summarize_with: str | None = None
    retention: float | None = None

    def __post_init__(self) -> None:
        where = f"Memory(key={self.key!r})"
        if not isinstance(self.key, str):
            raise WorkflowDefinitionError(f"Memory: key must be an input name, got {self.key!r}")
        identifier(self.key, "memory key", "Memory")
        _positive_int(self.window, "window", where)
        if self.max_tokens is not None:
            _positive_int(self.max_tokens, "max_tokens", where)
        if self.summarize_with is not None and (not isinstance(self.summarize_with, str)
                                                or not self.summarize_with.strip()):
            raise WorkflowDefinitionError(f"{where}: summarize_with must be a model name, "
                                          f"got {self.summarize_with!r}")
        retention = self.retention
        if retention is not None and (isinstance(retention, bool)
                                      or not isinstance(retention, int | float)
                                      or not 0 < retention < math.inf):
            raise WorkflowDefinitionError(f"{where}: retention must be a number of seconds "
                                          f"> 0 (or None: keep), got {retention!r}")

    def check_declared(self, workflow: str, inputs: frozenset[str] | None) -> None:
        """The key must be one of the workflow's declared inputs."""
        where = f"workflow {workflow!r}, Memory(key={self.key!r})"
        if inputs is None:
            raise WorkflowDefinitionError(
                f"{where}: declare the workflow's inputs (inputs=[...]) including {self.key!r}")
        if self.key not in inputs:
            raise WorkflowDefinitionError(
                f"{where}: {self.key!r} is not a declared input "
                f"(declared: {', '.join(sorted(inputs)) or 'none'})")

    def conversation(self, workflow: str, inputs: dict[str, Any]) -> str:
        """The conversation a run's inputs name; InvalidInput if the key's value cannot."""
        value = inputs.get(self.key)
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InvalidInput(f"workflow {workflow!r}: memory key input {self.key!r} must be "
                               f"a string or an integer, got {type(value).__name__}")
        text = str(value)
        if not text or len(text) > MAX_KEY_LENGTH:
            raise InvalidInput(f"workflow {workflow!r}: memory key input {self.key!r} must be "
                               f"1 to {MAX_KEY_LENGTH} characters, got {len(text)}")
        return text


def as_memory(value: object, workflow: str) -> Memory | None:
    """The ``memory=`` option of a workflow, checked."""
    if value is None or isinstance(value, Memory):
        return value
    raise WorkflowDefinitionError(f"workflow {workflow!r}: memory must be a Memory(...), "
                                  f"got {type(value).__name__}")


def _positive_int(value: object, name: str, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WorkflowDefinitionError(f"{where}: {name} must be an integer >= 1, got {value!r}")
