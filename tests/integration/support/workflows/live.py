"""Workflows of the run stream tests (``tests/integration/test_run_stream.py``).

A DAG with parallel branches whose middle step streams a model answer through
``ctx.llm.stream`` (the fake LLM server, through the catalogue the test writes) and shows
a partial output. Only the stream test's worker imports this module.
"""

from __future__ import annotations

from orchestration import StepContext, Workflow

LIVE_QUEUE = "it.live"
STREAM_MODEL = "streamer"

live = Workflow("it_live", inputs=["text"], queue=LIVE_QUEUE)


@live.task
def intake(text: str, ctx: StepContext) -> str:
    ctx.partial({"chars": len(text)})
    return text.strip()


@live.task(depends_on=intake)
def draft(intake: str, ctx: StepContext) -> str:
    return "".join(ctx.llm.stream(f"Draft a reply to: {intake}", model=STREAM_MODEL))


@live.task(depends_on=intake)
def score(intake: str) -> int:
    return len(intake.split())


@live.task(depends_on=[draft, score])
def publish(draft: str, score: int) -> dict[str, object]:
    return {"draft": draft, "score": score}
