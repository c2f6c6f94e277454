"""``ctx.memory``: a step's view of its run's conversation, and what it appends to it.

``context()`` gives the newest summary of older turns and the last ``window`` turns,
fitted to a token budget: ``min(Memory.max_tokens, the step's model's context window -
reserve)``. When turns have left the window since the last summary, they are folded
into a new summary first (the last summary + the evicted turns -> ``summarize_with``,
through ``ctx.llm``: breakers, fallbacks, budgets and cost apply, on this step; a
backlog larger than the summariser's context window is folded in over several calls). If
that call fails, nothing is lost: the turns stay, the context still fits (the oldest turns
are left out, the newest cut if need be), and a later call summarises them.

``append(...)`` buffers turns on this attempt; they are written with the step's outcome
(see :mod:`orchestration.store.memory`), so a failed attempt leaves nothing and a
re-delivered step that was already recorded does not append twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from orchestration.core.envelope import Envelope
from orchestration.core.redaction import Redactor
from orchestration.define.memory import Memory
from orchestration.define.step import BoundStep
from orchestration.llm.tokens import MESSAGE_OVERHEAD, TokenCounter
from orchestration.store.memory import MemoryStore, MemoryWrite, Summary, Turn
from orchestration.store.repository import Store

if TYPE_CHECKING:
    from orchestration.llm.client import LLMClient
    from orchestration.llm.resilience import Resilience

log = structlog.get_logger("orchestration.execute.memory")

DEFAULT_CONTEXT_WINDOW = 8192  # tokens, for a model the catalogue does not know
DEFAULT_RESERVE = 1024  # tokens context() leaves for the prompt and the answer
SUMMARIZE_SHARE = 0.75  # of the summariser's context window a summarising prompt may fill
SUMMARY_PREFIX = "Summary of the earlier conversation: "
CHAT_ROLES = frozenset({"system", "user", "assistant"})
MAX_ROLE_LENGTH = 32
_ELLIPSIS = "…"
SUMMARIZE_PROMPT = (
    "You maintain the memory of a conversation for an assistant. Update the summary with "
    "the new turns: keep facts, names, numbers, decisions, preferences and open "
    "questions; drop small talk. Reply with the updated summary only.\n\n"
    "Summary so far:\n{summary}\n\nNew turns:\n{turns}"
)


class MemoryHost(Protocol):
    """What ``ctx.memory`` needs from its step attempt (``StepContext`` is one)."""

    run_id: str
    step: str
    model: str | None
    services: Resilience | None

    @property
    def llm(self) -> LLMClient:
        """The attempt's model client."""


@dataclass(frozen=True)
class MemoryBinding:
    """A step's memory for one run: the declaration, the conversation, where it is kept."""

    memory: Memory
    workflow: str
    conversation: str
    store: MemoryStore
    redactor: Redactor | None = None


def bind_memory(step: BoundStep, envelope: Envelope, store: Store,
                redactor: Redactor | None) -> MemoryBinding | None:
    """The memory of one delivery of a step (None: its workflow declares none)."""
    memory = step.memory
    if memory is None:
        return None
    key = memory.key
    value = envelope.inline[key] if key in envelope.inline else \
        store.load_inputs(envelope.run_id).get(key)
    workflow = step.spec.workflow
    return MemoryBinding(memory, workflow, memory.conversation(workflow, {key: value}),
                         store.memory, redactor)


@dataclass(frozen=True)
class MemoryContext:
    """What ``ctx.memory.context()`` returns: a summary and recent turns within a budget.

    ``turns`` are ``{"role", "content"}`` dicts, oldest first; ``tokens`` is what
    :meth:`messages` costs (never more than ``budget``); ``truncated`` says that turns
    were left out or cut to fit; ``summarized_upto`` is the last turn the summary covers.
    """

    summary: str | None
    turns: list[dict[str, str]]
    tokens: int
    budget: int
    truncated: bool = False
    summarized_upto: int = 0

    def messages(self) -> list[dict[str, str]]:
        """Chat messages: the summary as a system message, then the turns.

        A role other than system/user/assistant becomes a user message ``[role] content``.
        """
        messages = [{"role": "system", "content": SUMMARY_PREFIX + self.summary}] \
            if self.summary else []
        return messages + [_chat(turn["role"], turn["content"]) for turn in self.turns]

    def __str__(self) -> str:
        lines = [f"summary: {self.summary}"] if self.summary else []
        return "\n".join(lines + [f"{t['role']}: {t['content']}" for t in self.turns])


@dataclass
class _Pending:
    turns: list[tuple[str, str, int]] = field(default_factory=list)
    summary: Summary | None = None


class ConversationMemory:
    """``ctx.memory``: read the conversation's context, append turns (written with the step)."""

    def __init__(self, binding: MemoryBinding, host: MemoryHost) -> None:
        self._binding = binding
        self._host = host
        self._pending = _Pending()

    @property
    def conversation(self) -> str:
        """The conversation this run belongs to (the value of the memory's key input)."""
        return self._binding.conversation

    # -- writing -----------------------------------------------------------------------

    def append(self, role: str | None = None, content: str | None = None, /,
               **roles: str) -> None:
        """Add turns: ``append(user="...", assistant="...")`` (in that order) or
        ``append("tool", "...")``. Content is stored redacted, with the step's outcome."""
        turns = ([(role, content)] if role is not None or content is not None else []) + \
            list(roles.items())
        if not turns:
            raise TypeError("ctx.memory.append() needs turns: append(user=..., assistant=...)"
                            " or append(role, content)")
        checked = [_checked(role_, text) for role_, text in turns]
        counter = self._counter(None)
        redactor = self._binding.redactor
        for role_, text in checked:
            stored = str(redactor(text)) if redactor is not None else text
            self._pending.turns.append((role_, stored, counter.count(stored)))

    def pending(self) -> MemoryWrite | None:
        """What this attempt wrote (to record with the step's outcome), or None."""
        write = MemoryWrite(self._binding.workflow, self._binding.conversation,
                            list(self._pending.turns), self._pending.summary)
        return write if write else None

    # -- reading -----------------------------------------------------------------------

    def context(self, *, reserve: int = DEFAULT_RESERVE, model: str | None = None
                ) -> MemoryContext:
        """The summary of older turns and the last ``window`` turns, within the budget.

        The budget is ``min(max_tokens, context window of model - reserve)``; ``model``
        defaults to the step's model. Turns appended by this attempt are included.
        """
        memory = self._binding.memory
        name = model or self._host.model or self._default_model()
        counter = self._counter(name)
        budget = max(0, min(memory.max_tokens or math.inf,
                            self._context_window(name) - reserve))
        summary, stored = self._binding.store.load(self._binding.workflow,
                                                   self._binding.conversation)
        if self._pending.summary is not None:
            summary = self._pending.summary
            stored = [turn for turn in stored if turn.seq > summary.upto_seq]
        turns = stored + [Turn(0, role, content, tokens)
                          for role, content, tokens in self._pending.turns]
        evicted = [turn for turn in turns[:max(0, len(turns) - memory.window)] if turn.seq]
        if evicted and memory.summarize_with:
            evicted = self._what_fits(summary, evicted, memory.summarize_with)
            summarised = self._summarise(summary, evicted, counter)
            if summarised is not None:
                summary, turns = summarised, turns[len(evicted):]
        elif not memory.summarize_with:
            turns = turns[-memory.window:]
        return fit(summary, turns, int(budget), counter)

    def _summarise(self, summary: Summary | None, evicted: list[Turn],
                   counter: TokenCounter) -> Summary | None:
        """Fold the evicted turns into a new summary (kept for the outcome); None on failure."""
        memory = self._binding.memory
        prompt = SUMMARIZE_PROMPT.format(
            summary=summary.content if summary else "(none yet)",
            turns="\n".join(f"{turn.role}: {turn.content}" for turn in evicted))
        try:
            text = self._host.llm.complete(prompt, model=memory.summarize_with).text.strip()
        except Exception as exc:  # the turns stay; a later call summarises them
            log.warning("could not summarise the conversation; its turns are kept",
                        run_id=self._host.run_id, step=self._host.step,
                        conversation=self._binding.conversation, model=memory.summarize_with,
                        error=f"{type(exc).__name__}: {exc}")
            return None
        redactor = self._binding.redactor
        stored = str(redactor(text)) if redactor is not None else text
        new = Summary(evicted[-1].seq, stored, counter.count(stored), self._host.run_id)
        self._pending.summary = new
        return new

    def _what_fits(self, summary: Summary | None, evicted: list[Turn],
                   model: str) -> list[Turn]:
        """The oldest evicted turns whose summarising prompt fits the summariser's context
        window (the rest wait for the next call); at least one."""
        counter = self._counter(model)
        room = int(self._context_window(model) * SUMMARIZE_SHARE)
        room -= counter.count(SUMMARIZE_PROMPT) + counter.count(summary.content if summary
                                                                else "")
        taken = 0
        for index, turn in enumerate(evicted):
            taken += counter.count(f"{turn.role}: {turn.content}\n")
            if taken > room:
                return evicted[:max(1, index)]
        return evicted

    # -- the model catalogue -----------------------------------------------------------

    def _counter(self, model: str | None) -> TokenCounter:
        services = self._host.services
        if services is None:
            return TokenCounter()
        return services.tokens.get(model or self._host.model or self._default_model())

    def _default_model(self) -> str | None:
        services = self._host.services
        return services.catalogue.default_model if services is not None else None

    def _context_window(self, model: str | None) -> int:
        services = self._host.services
        if services is None or model is None or model not in services.catalogue.models:
            return DEFAULT_CONTEXT_WINDOW
        return services.catalogue.models[model].context_window


def fit(summary: Summary | None, turns: list[Turn], budget: int,
        counter: TokenCounter) -> MemoryContext:
    """The newest turns and the summary within ``budget`` tokens (as ``messages()`` costs).

    The turns get the budget less the summary's share (its size, at most half the
    budget), newest first; the summary gets what is left, cut from its start if need
    be. A newest turn that alone does not fit is cut from its start.
    """
    def cost(text: str) -> int:
        return counter.count(text) + MESSAGE_OVERHEAD

    summary_text = summary.content if summary else None
    share = min(cost(SUMMARY_PREFIX + summary_text), budget // 2) if summary_text else 0
    kept: list[dict[str, str]] = []
    used = 0
    for turn in reversed(turns):
        message = _chat(turn.role, turn.content)
        if used + cost(message["content"]) > budget - share:
            break
        kept.append({"role": turn.role, "content": turn.content})
        used += cost(message["content"])
    truncated = len(kept) < len(turns)
    if not kept and turns:  # the newest turn alone is too big: keep its end
        newest = turns[-1]
        prefix = _chat(newest.role, "")["content"]
        content = _cut(newest.content, budget - share - MESSAGE_OVERHEAD,
                       lambda text: counter.count(prefix + text))
        if content:
            kept.append({"role": newest.role, "content": content})
            used += cost(_chat(newest.role, content)["content"])
    kept.reverse()
    text = None
    if summary_text:
        text = _cut(summary_text, budget - used - MESSAGE_OVERHEAD,
                    lambda part: counter.count(SUMMARY_PREFIX + part))
        truncated = truncated or text != summary_text
        used += cost(SUMMARY_PREFIX + text) if text else 0
    return MemoryContext(text or None, kept, used, budget, truncated,
                         summary.upto_seq if summary else 0)


def _cut(text: str, limit: int, count: Callable[[str], int]) -> str:
    """The longest end of ``text`` (marked with an ellipsis) that counts at most ``limit``."""
    if count(text) <= limit:
        return text
    low, high = 0, len(text)  # characters kept from the end
    while low < high:
        middle = (low + high + 1) // 2
        if count(_ELLIPSIS + text[len(text) - middle:]) <= limit:
            low = middle
        else:
            high = middle - 1
    return _ELLIPSIS + text[len(text) - low:] if low else ""


def _chat(role: str, content: str) -> dict[str, str]:
    if role in CHAT_ROLES:
        return {"role": role, "content": content}
    return {"role": "user", "content": f"[{role}] {content}"}


def _checked(role: Any, content: Any) -> tuple[str, str]:
    if not isinstance(role, str) or not role or len(role) > MAX_ROLE_LENGTH:
        raise TypeError(f"ctx.memory.append(): a role is a name of 1 to {MAX_ROLE_LENGTH} "
                        f"characters, got {role!r}")
    if not isinstance(content, str):
        raise TypeError(f"ctx.memory.append(): the content of role {role!r} must be a "
                        f"string, got {type(content).__name__}")
    return role, content
