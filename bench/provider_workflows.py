"""Engine workflows measured by ``bench/providers.py``: one step, one model call.

Workers import this module through ``ORCH_IMPORTS=bench.provider_workflows``; it binds to
the default orchestrator, so ``ORCH_*`` (including ``ORCH_MODELS_FILE``, the bench's
catalogue with the models ``sim`` and ``sim-backup``) must be set before it is imported.

The two workflows are the same step under two names, so their runs are told apart in
the results DB: ``bench_llm`` for the row without a fallback model, ``bench_llm_fallback``
for the row whose catalogue gives ``sim`` the fallback ``sim-backup``. The step has no
step-level retries: every retry measured is ``ctx.llm``'s, per call (``retries:`` in the
catalogue).

``BENCH_PROVIDERS_WHAT_IF`` (set by ``bench/providers.py --what-if``) patches the engine in
the process that imports this module, to measure a proposed change without editing it:
``breaker-memory`` keeps breaker state in process memory instead of Redis, and
``breaker-off`` calls providers without a breaker. Results so measured are labelled as
not the engine as shipped.
"""

from __future__ import annotations

import os
from typing import Any

from orchestration import StepContext, Workflow

WHAT_IFS = ("breaker-memory", "breaker-off")


def _apply_what_if(name: str) -> None:
    if not name:
        return
    from orchestration.llm import breakers
    if name == "breaker-memory":
        original = breakers.Breakers.__init__

        def in_memory(self: breakers.Breakers, client: Any, policies: Any = None) -> None:
            original(self, None, policies)

        breakers.Breakers.__init__ = in_memory  # type: ignore[method-assign]
    elif name == "breaker-off":
        def unguarded(self: breakers.ModelBreaker, func: Any, *args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)

        breakers.ModelBreaker.call = unguarded  # type: ignore[method-assign]
    else:
        raise ValueError(f"unknown BENCH_PROVIDERS_WHAT_IF {name!r}; known: {WHAT_IFS}")


_apply_what_if(os.environ.get("BENCH_PROVIDERS_WHAT_IF", ""))

QUEUE = "bench.llm"
MODEL = "sim"
BACKUP_MODEL = "sim-backup"


def _ask(i: int, ctx: StepContext) -> str:
    """One chat completion; the output is the model that answered."""
    return ctx.llm.complete(f"bench request {i}").model


def _workflow(name: str) -> Workflow:
    workflow = Workflow(name, queue=QUEUE, inputs=["i"])
    workflow.task(name="ask", queue=QUEUE, model=MODEL)(_ask)
    return workflow


primary = _workflow("bench_llm")
with_fallback = _workflow("bench_llm_fallback")

WORKFLOWS = {"primary": primary, "fallback": with_fallback}
