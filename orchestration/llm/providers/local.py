"""An offline provider for demos and tests: deterministic, clearly labelled, no network."""

from __future__ import annotations

import hashlib
from typing import Any

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
        """A short, deterministic, labelled reply echoing the request."""
        prompt = messages[-1]["content"] if messages else ""
        digest = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
        subject = " ".join(prompt.split()[-12:])
        text = (f"{LABEL} {_OPENERS[digest % len(_OPENERS)]} We have received your message "
                f"(\"{subject}\") and a member of the team will follow up shortly.")
        words = sum(len(m.get("content", "").split()) for m in messages)
        return text, Usage(prompt_tokens=words, completion_tokens=len(text.split()))
