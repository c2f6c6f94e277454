"""Workflows of the provider tests (``tests/integration/test_providers.py``).

Every step calls models through ``ctx.llm``, which in the provider workers reaches the
fault-injecting fake LLM server (``tests/fakes/llm_server.py``) through the catalogue the
tests write at run time (``ORCH_MODELS_FILE``). Only the provider workers import this
module (their ``ORCH_IMPORTS``); the test process imports it to submit runs.

Steps return JSON-ready dicts: the text, the model that answered, the call's cost and
the worker process id.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel

from orchestration import Backoff, StepContext, Workflow
from orchestration.llm.providers.base import Completion

# Both provider workers consume PROVIDERS_QUEUE; each also has a queue of its own, so a
# test can send a run to one worker process in particular.
PROVIDERS_QUEUE = "it.providers"
W1_QUEUE = "it.providers.w1"
W2_QUEUE = "it.providers.w2"

FAST_BACKOFF = Backoff(initial=0.01, maximum=0.05, jitter=0)  # under the inline retry limit
MAX_COST = 0.008  # USD; two calls of `priced-a` (0.005 each) exceed it
RUN_BUDGET = 0.008  # USD; allows two calls of `priced-a`, not a third
GATE_START_TEMPERATURE = 0.2
GATE_TEMPERATURE_STEP = 0.3


def answer(completion: Completion) -> dict[str, Any]:
    """What a step returns about one completion."""
    return {"text": completion.text, "model": completion.model, "cost": completion.cost_usd,
            "pid": os.getpid()}


# -- one model call, on the shared queue or on one worker's queue --------------------------


def _ask(prompt: str, model: str, ctx: StepContext) -> dict[str, Any]:
    return answer(ctx.llm.complete(prompt, model=model))


def _on_each_queue(name: str, fn: Any) -> tuple[Workflow, Workflow, Workflow]:
    """Workflows of one step ``ask`` running ``fn``: on the shared queue, on w1's, on w2's."""
    flows = (Workflow(name, queue=PROVIDERS_QUEUE), Workflow(f"{name}_w1", queue=W1_QUEUE),
             Workflow(f"{name}_w2", queue=W2_QUEUE))
    for flow in flows:
        flow.task(name="ask")(fn)
    return flows


ask, ask_w1, ask_w2 = _on_each_queue("prov_ask", _ask)


# -- a step timeout around a model call that never answers ---------------------------------

STEP_FALLBACK = {"text": "step fallback", "model": None, "cost": 0.0, "pid": None}
hang = Workflow("prov_hang", queue=PROVIDERS_QUEUE)
hang.task(name="ask", timeout=1, fallback=STEP_FALLBACK)(_ask)


# -- cost: per step, summed on the run -------------------------------------------------------

costs = Workflow("prov_costs", queue=PROVIDERS_QUEUE)


@costs.task
def first(prompt: str, ctx: StepContext) -> dict[str, Any]:
    return answer(ctx.llm.complete(prompt, model="priced-a"))


@costs.task
def second(first: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return answer(ctx.llm.complete(first["text"], model="priced-b"))


# -- max_cost: a step that keeps calling until its budget stops it ---------------------------

max_cost = Workflow("prov_max_cost", queue=PROVIDERS_QUEUE)


@max_cost.task(max_cost=MAX_COST, retries=2, backoff=FAST_BACKOFF)
def spend(prompt: str, ctx: StepContext) -> int:
    for call in range(5):
        ctx.llm.complete(f"{prompt} #{call}", model="priced-a")
    return 5


# -- a run budget over a chain of three model steps ------------------------------------------

budget = Workflow("prov_budget", queue=PROVIDERS_QUEUE, budget=RUN_BUDGET)


@budget.task
def s1(prompt: str, ctx: StepContext) -> dict[str, Any]:
    return answer(ctx.llm.complete(prompt, model="priced-a"))


@budget.task(retries=2, backoff=FAST_BACKOFF)
def s2(s1: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return answer(ctx.llm.complete(s1["text"], model="priced-a"))


@budget.task(retries=2, backoff=FAST_BACKOFF)
def s3(s2: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return answer(ctx.llm.complete(s2["text"], model="priced-a"))


# -- JSON answers ----------------------------------------------------------------------------


class Person(BaseModel):
    """The pydantic schema of the JSON tests."""

    name: str
    score: int


# Numbers from {1, 2} only: the engine's re-ask ("That answer is not valid: 5 is not one of
# [1, 2]. ...") echoed back by the fake contains the valid answer [1, 2].
PICK_SCHEMA: dict[str, Any] = {"type": "array", "items": {"enum": [1, 2]}}

json_person = Workflow("prov_json_person", queue=PROVIDERS_QUEUE)


@json_person.task
def person(prompt: str, model: str, ctx: StepContext) -> dict[str, Any]:
    return ctx.llm.complete_json(prompt, schema=Person, model=model, attempts=3).model_dump()


json_pick = Workflow("prov_json_pick", queue=PROVIDERS_QUEUE)


@json_pick.task
def pick(prompt: str, ctx: StepContext) -> Any:
    return ctx.llm.complete_json(prompt, schema=PICK_SCHEMA, model="json-echo", attempts=3)


# -- quality gate: retried with a higher temperature, then the step's fallback ---------------


def approved(output: dict[str, Any]) -> str | None:
    """Gate: the answer must contain APPROVED (the fake's echo never does)."""
    return None if "APPROVED" in output["text"] else "the answer is not APPROVED"


def warmer(attempt: int, exc: BaseException, params: dict[str, Any]) -> dict[str, Any]:
    """on_retry: raise the temperature, and ask the next attempt's own model (gate-<n>).

    The fake keeps only each model's last request body, so one model per attempt is how
    the test sees every attempt's request.
    """
    temperature = params.get("temperature", GATE_START_TEMPERATURE) + GATE_TEMPERATURE_STEP
    return {"temperature": round(temperature, 3), "model": f"gate-{attempt + 1}"}


GATE_FALLBACK = {"text": "gate fallback", "model": None, "cost": 0.0, "pid": None}
gated = Workflow("prov_gate", queue=PROVIDERS_QUEUE)


@gated.task(gate=approved, on_retry=warmer, retries=2, backoff=FAST_BACKOFF,
            fallback=GATE_FALLBACK)
def review(prompt: str, ctx: StepContext) -> dict[str, Any]:
    model = ctx.params.get("model", "gate-1")
    temperature = ctx.params.get("temperature", GATE_START_TEMPERATURE)
    return answer(ctx.llm.complete(prompt, model=model, temperature=temperature))


# -- async def steps: each call awaited on the worker process's event loop -------------------


async def _aask(prompt: str, model: str, ctx: StepContext) -> dict[str, Any]:
    return answer(await ctx.llm.acomplete(prompt, model=model))


aask, aask_w1, aask_w2 = _on_each_queue("prov_aask", _aask)

amap = Workflow("prov_amap", inputs=["prompts", "model"], queue=PROVIDERS_QUEUE)


@amap.task(name="ask", map="prompts", concurrency=50)
async def ask_each(prompts: str, model: str, ctx: StepContext) -> dict[str, Any]:
    return answer(await ctx.llm.acomplete(prompts, model=model))
