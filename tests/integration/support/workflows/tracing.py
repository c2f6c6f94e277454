"""Workflows of the tracing test: one run's steps on two queues, served by two workers.

Only the tracing test's workers import this module (their ``ORCH_IMPORTS`` adds it); the
test process imports it to submit runs. ``first`` fails its first attempt (two attempt
spans), ``second`` makes a model call (answered by the local provider: no key is set).
"""

from __future__ import annotations

from orchestration import Backoff, StepContext, Workflow
from tests.integration.support.workflows.common import count_call

QUEUE_A = "it.trace.a"
QUEUE_B = "it.trace.b"

traced = Workflow("it_traced", inputs=["text"])


@traced.task(queue=QUEUE_A, retries=1, backoff=Backoff(initial=0.01, maximum=0.01, jitter=0))
def first(text: str, ctx: StepContext) -> str:
    if count_call(ctx) == 1:
        raise RuntimeError("first attempt fails")
    return text.upper()


@traced.task(queue=QUEUE_B, depends_on=first, model="local-small")
def second(first: str, ctx: StepContext) -> str:
    return ctx.llm.complete(f"Summarise: {first}").text
