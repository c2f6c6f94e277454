"""Workflows of the memory tests (``tests/integration/test_memory.py``).

Only the memory workers import this module (their ``ORCH_IMPORTS``), with a catalogue
whose ``chat`` and ``summarizer`` models are the fake LLM server; the test process
imports it to submit runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import redis

from orchestration import Backoff, Memory, StepContext, Workflow
from tests.support.memory_flows import chat_workflow

QUEUE = "it.memory"
CRASH_QUEUE = "it.memory.crash"
FAST = Backoff(initial=0.01, maximum=0.05, jitter=0)

chat = chat_workflow(None, "it_mem_chat", queue=QUEUE)
tight = chat_workflow(None, "it_mem_tight", max_tokens=400, queue=QUEUE)

flaky = Workflow("it_mem_flaky", inputs=["conversation_id", "message", "fail"],
                 memory=Memory(key="conversation_id", window=4), queue=QUEUE)


@flaky.task(retries=2, backoff=FAST)
def once_more(message: str, fail: int, ctx: StepContext) -> int:
    ctx.memory.append(user=f"{message} (attempt {ctx.attempt})")
    if ctx.attempt <= fail:
        raise RuntimeError(f"attempt {ctx.attempt} fails after appending")
    ctx.memory.append("assistant", f"answered {message}")
    return ctx.attempt


resumable = Workflow("it_mem_resume", inputs=["conversation_id", "message", "gate_file"],
                     memory=Memory(key="conversation_id"), queue=QUEUE)


@resumable.task
def first(message: str, ctx: StepContext) -> str:
    ctx.memory.append(user=message, assistant=f"first {message}")
    return message


@resumable.task
def second(first: str, gate_file: str, ctx: StepContext) -> str:
    if not Path(gate_file).exists():
        raise RuntimeError("the gate file is missing: resume once it exists")
    ctx.memory.append("assistant", f"second {first}")
    return first


together = Workflow("it_mem_together", inputs=["conversation_id", "message", "expect"],
                    memory=Memory(key="conversation_id"), queue=QUEUE)


@together.task(timeout=30)
def meet(message: str, expect: int, ctx: StepContext) -> str:
    """Every run waits until ``expect`` runs got here, so their records collide."""
    client = redis.Redis.from_url(os.environ["ORCH_REDIS_URL"])
    key = f"it-mem:{ctx.memory.conversation}"
    client.incr(key)
    client.expire(key, 120)
    deadline = time.monotonic() + 20
    while int(client.get(key) or 0) < expect and time.monotonic() < deadline:
        time.sleep(0.01)
    ctx.memory.append(user=message, assistant=f"re {message}")
    return message


crashing = Workflow("it_mem_crash", inputs=["conversation_id", "message"],
                    memory=Memory(key="conversation_id"), queue=CRASH_QUEUE)


@crashing.task
def hang_first(message: str, ctx: StepContext) -> str:
    """Appends, then hangs on its first delivery (the test kills the worker there)."""
    ctx.memory.append(user=message, assistant=f"re {message}")
    client = redis.Redis.from_url(os.environ["ORCH_REDIS_URL"])
    if client.set(f"it-mem-crash:{ctx.run_id}", os.getpid(), nx=True, ex=300):
        time.sleep(120)
    return message


def secret_hook(value: Any) -> Any:
    """A workflow's own redaction: e-mail addresses."""
    return value.replace("alice@example.com", "[EMAIL]") if isinstance(value, str) else value


secret = Workflow("it_mem_secret", inputs=["conversation_id", "message"],
                  memory=Memory(key="conversation_id"), redact=secret_hook, queue=QUEUE)


@secret.task
def remember(message: str, ctx: StepContext) -> str:
    ctx.memory.append(user=message, assistant="noted")
    return "ok"
