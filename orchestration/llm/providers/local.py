"""An offline provider for demos and tests: deterministic, clearly labelled, no network.

A request that carries choices (a line written by
:func:`orchestration.core.choices.instruction`, as a pipeline's model step with
``choices`` sends) is answered with one of them: the choice its user messages mention
first (whole words, any case), else the last choice. That is a keyword match on the
choices' names, never a judgement, and the answer is labelled like any other.
"""

from __future__ import annotations

import hashlib
from typing import Any

from orchestration.core import choices
from orchestration.llm.providers.base import Messages, Provider, Usage

LABEL = "[local fallback: no LLM provider configured]"

_OPENERS = (
    "Thanks for reaching out, and sorry for the trouble.",
    "Thank you for contacting us.",
    "Thanks for the detailed report.",
)


class LocalProvider(Provider):
    """Answers from a template; every answer starts with :data:`LABEL` so no one mistakes it."""

    name = "local"

    def complete(self, messages: Messages, *, model: str, timeout: float | None,
                 **params: Any) -> tuple[str, Usage]:
        """A short, deterministic, labelled reply echoing the request (or naming a choice)."""
        words = sum(len(m.get("content", "").split()) for m in messages)
        options = choices.requested(messages)
        if options:
            asked = "\n".join(choices.without_instruction(m.get("content", ""))
                              for m in messages if m.get("role", "user") == "user")
            text = f"{LABEL} {choices.pick(asked, options)}"
            return text, Usage(prompt_tokens=words, completion_tokens=len(text.split()))
        prompt = messages[-1]["content"] if messages else ""
        digest = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
        subject = " ".join(prompt.split()[-12:])
        text = (f"{LABEL} {_OPENERS[digest % len(_OPENERS)]} We have received your message "
                f"(\"{subject}\") and a member of the team will follow up shortly.")
        return text, Usage(prompt_tokens=words, completion_tokens=len(text.split()))

    async def acomplete(self, messages: Messages, *, model: str, timeout: float | None,
                        **params: Any) -> tuple[str, Usage]:
        """:meth:`complete`, on the loop (nothing to wait for)."""
        return self.complete(messages, model=model, timeout=timeout, **params)

