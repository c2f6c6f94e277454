"""Workflows of the on_error tests (``tests/integration/test_on_error.py``).

Every step asks one model through ``ctx.llm``; in the on_error worker that reaches the
fake LLM server through the catalogue the test writes (``ORCH_MODELS_FILE``). The worker
imports this module by ``ORCH_IMPORTS``; the test process imports it to submit runs.
"""

from __future__ import annotations

from typing import Any

from orchestration import StepContext, Workflow

QUEUE = "it.on_error"
FALLBACK = {"model": None, "text": "step fallback"}
ROUTE = {"model_unavailable": "route_to_fallback"}


def _ask(model: str, ctx: StepContext) -> dict[str, Any]:
    completion = ctx.llm.complete("Classify: my invoice is wrong", model=model)
    return {"model": completion.model, "text": completion.text}


def _after(ask: dict[str, Any] | None) -> str:
    return f"after got {None if ask is None else ask['model']}"


def _flow(name: str, **options: Any) -> Workflow:
    workflow = Workflow(name, queue=QUEUE)
    workflow.task(name="ask", backoff=0.01, **options)(_ask)
    workflow.task(name="after")(_after)
    return workflow


plain = _flow("onerr_it_plain")  # no policy: the defaults
route = _flow("onerr_it_route", retries=3, on_error=ROUTE)
route_value = _flow("onerr_it_route_value", retries=3, on_error=ROUTE, fallback=FALLBACK)
timeout_retry = _flow("onerr_it_timeout", on_error={"timeout": "retry(3)"})
skip = _flow("onerr_it_skip", retries=3, on_error={"model_unavailable": "skip"})
escalate = _flow("onerr_it_escalate", retries=3, on_error={"model_unavailable": "escalate"})
