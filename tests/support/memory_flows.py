"""Workflows with conversation memory, shared by the unit and integration memory tests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from orchestration import Memory, StepContext, Workflow

MEMORY_CATALOGUE = """
providers:
  fake: {kind: openai, base_url: "URL", api_key_env: TEST_FAKE_LLM_KEY}
models:
  chat: {provider: fake, context_window: 4096, tokens: "chars/4"}
  summarizer: {provider: fake, retries: 0, context_window: 100000,
               breaker: {fail_max: 1000, reset_timeout: 1}}
  small-summarizer: {provider: fake, retries: 0, context_window: 600,
                     breaker: {fail_max: 1000, reset_timeout: 1}}
default_model: chat
"""
KEY_ENV = "TEST_FAKE_LLM_KEY"


def marker(index: int) -> str:
    """A text that names one turn and is no substring of another's."""
    return f"<m{index:03d}>"


def seen(ctx: StepContext) -> dict[str, Any]:
    """What a step saw of its conversation."""
    context = ctx.memory.context()
    return {"summary": context.summary, "turns": [t["content"] for t in context.turns],
            "tokens": context.tokens, "budget": context.budget,
            "upto": context.summarized_upto, "truncated": context.truncated,
            "counted": ctx.services.tokens.get(ctx.model or "chat").count_messages(
                context.messages()) if ctx.services else None}


def chat_workflow(host: Any, name: str, max_tokens: int | None = None,
                  queue: str | None = None, summarizer: str = "summarizer",
                  window: int = 10) -> Workflow:
    """A chat whose step reads the context, then appends the message and an answer."""
    chat = Workflow(name, inputs=["conversation_id", "message"], app=host,
                    memory=Memory(key="conversation_id", window=window, max_tokens=max_tokens,
                                  summarize_with=summarizer))

    @chat.task(model="chat", queue=queue)
    def answer(message: str, ctx: StepContext) -> dict[str, Any]:
        view = seen(ctx)
        ctx.memory.append(user=message, assistant=f"re {message}")
        return view

    return chat


def declare(host: Any, prefix: str = "mem") -> SimpleNamespace:
    """The memory test workflows on ``host``."""
    chat = chat_workflow(host, f"{prefix}_chat")
    tight = chat_workflow(host, f"{prefix}_tight", max_tokens=400)
    narrow = chat_workflow(host, f"{prefix}_narrow", summarizer="small-summarizer", window=2)

    flaky = Workflow(f"{prefix}_flaky", inputs=["conversation_id", "message", "fail"],
                     app=host, memory=Memory(key="conversation_id", window=4))

    @flaky.task(retries=2, backoff=0.01)
    def once_more(message: str, fail: int, ctx: StepContext) -> int:
        ctx.memory.append(user=f"{message} (attempt {ctx.attempt})")
        if ctx.attempt <= fail:
            raise RuntimeError(f"attempt {ctx.attempt} fails after appending")
        ctx.memory.append("assistant", f"answered {message}")
        return ctx.attempt

    @flaky.task(critical=False)
    def never(message: str, ctx: StepContext) -> None:
        ctx.memory.append(user=f"never stored {message}")
        raise RuntimeError("fails for good")

    secret = Workflow(f"{prefix}_secret", inputs=["conversation_id", "message"], app=host,
                      memory=Memory(key="conversation_id"),
                      redact=lambda value: value.replace("alice@example.com", "[EMAIL]")
                      if isinstance(value, str) else value)

    @secret.task
    def remember(message: str, ctx: StepContext) -> str:
        ctx.memory.append(user=message, assistant="noted")
        return "ok"

    ask = Workflow(f"{prefix}_ask", inputs=["conversation_id", "message"], app=host,
                   memory=Memory(key="conversation_id", window=4))

    @ask.task(model="chat")
    def reply(message: str, ctx: StepContext) -> str:
        """The contract's example: the model answers with the conversation's history."""
        text = ctx.llm.complete(message, history=ctx.memory.context()).text
        ctx.memory.append(user=message, assistant=text)
        return text

    return SimpleNamespace(chat=chat, tight=tight, narrow=narrow, flaky=flaky, secret=secret,
                           ask=ask)
