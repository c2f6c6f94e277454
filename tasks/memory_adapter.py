"""ADAPTER (temporary, to be removed): the example workflows' one door to ``ctx.memory``.

``Memory`` is declared on the workflows (``orchestration.define.memory``); ``ctx.memory``
(``context()`` / ``append(...)``) is being built alongside. Until a step's ``ctx`` has
it, :func:`history` returns no turns and :func:`remember` keeps nothing, so the
workflows run today and use memory the moment it lands. Once ``ctx.memory`` exists on
every ``StepContext``, replace the two calls with ``ctx.memory.context()`` and
``ctx.memory.append(user=..., assistant=...)`` and delete this module.
"""

from __future__ import annotations

from typing import Any

Messages = list[dict[str, str]]


def history(ctx: Any) -> Messages:
    """The conversation so far as chat messages (summary first), or [] without memory."""
    memory = getattr(ctx, "memory", None)
    if memory is None:
        return []
    return [dict(message) for message in memory.context().messages()]


def remember(ctx: Any, *, user: str, assistant: str) -> None:
    """Append this exchange to the conversation (nothing without memory)."""
    memory = getattr(ctx, "memory", None)
    if memory is not None:
        memory.append(user=user, assistant=assistant)
