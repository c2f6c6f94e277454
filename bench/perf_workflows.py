"""Engine workflows measured by ``bench/perf.py`` (the issue's target rows beyond latency).

Workers import this module through ``ORCH_IMPORTS=bench.perf_workflows``; it binds to the
default orchestrator, so ``ORCH_*`` (and ``ORCH_MODELS_FILE``: a catalogue with the model
``sim`` on the fake LLM server) must be set before it is imported.

- ``perf_linear``: four no-op steps on one queue (one fused message per run): throughput
  and memory rows.
- ``perf_diamond`` and ``perf_agent``: the embedded default's diamond a -> (b, c) -> d
  and the stateful-agent shape (``tasks/agent/workflow.py`` with no-op steps: three
  parallel steps, a ``when=`` branch, a join taking the branch's output or None).
- ``perf_fanout``: a map of no-op elements (``map="items"``, default chunking) and a join
  summing them: the engine's way to fan out.
- ``perf_fanout_static``: the same fan-out written as 100 declared branch steps and a join
  (one message per branch, like a raw chord): the like-for-like shape.
- ``perf_llm_map``: 1,000 model calls in one run: ``map="prompts"`` with
  ``chunk_size=250, concurrency=50`` (4 chunks x 50 threads = 200 calls in flight on a
  ``-P threads -c 4`` worker), each element ``ctx.llm.complete``.
- ``perf_llm_one``: one step, one ``ctx.llm.complete``: 1,000 one-call runs.
- ``perf_llm_amap`` / ``perf_llm_aone``: the same two shapes as ``async def`` steps, each
  ``await ctx.llm.acomplete`` (the call made on the worker's event loop).
- ``perf_http_map`` / ``perf_http_one``: the same two shapes with a plain ``httpx`` call
  instead of ``ctx.llm`` (``--diagnose``): separates the cost of the model client
  (breaker, catalogue, cost and call records) from the step machinery.
- ``perf_lean_map`` / ``perf_lean_one``: the same with ``http.client``, one connection per
  thread (``--diagnose``): what the step machinery does with an HTTP client whose
  per-call CPU is small.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from typing import Any
from urllib.parse import urlparse

from bench.fake_llm_call import FAKE_URL_ENV, KEY_ENV, MODEL, http_call
from orchestration import StepContext, Workflow

QUEUE = "bench.perf"  # no-op shapes: served by a -P prefork -c 2 worker
LLM_MAP_QUEUE = "bench.perf.llm_map"  # served by a -P threads -c 4 worker
LLM_ONE_QUEUE = "bench.perf.llm_one"  # served by a -P threads -c 200 worker
FANOUT = 100
MAP_CHUNK_SIZE = 250
MAP_CONCURRENCY = 50

# -- linear: s1 -> s2 -> s3 -> s4, one queue (fused into one message) ---------------------

perf_linear = Workflow("perf_linear", queue=QUEUE, inputs=["x"])


@perf_linear.task
def s1(x: int) -> int:
    return x


@perf_linear.task
def s2(s1: int) -> int:
    return s1


@perf_linear.task
def s3(s2: int) -> int:
    return s2


@perf_linear.task
def s4(s3: int) -> int:
    return s3


# -- diamond, and the stateful agent's shape (embedded rows) ---------------------------------

perf_diamond = Workflow("perf_diamond", queue=QUEUE, inputs=["x"])


@perf_diamond.task(name="a")
def d_a(x: int) -> int:
    return x


@perf_diamond.task(name="b")
def d_b(a: int) -> int:
    return a


@perf_diamond.task(name="c")
def d_c(a: int) -> int:
    return a


@perf_diamond.task(name="d")
def d_d(b: int, c: int) -> int:
    return b + c


perf_agent = Workflow("perf_agent", queue=QUEUE, inputs=["x"])


@perf_agent.task
def load_state(x: int) -> int:
    return x


@perf_agent.task
def extract_intent(x: int) -> int:
    return x


@perf_agent.task
def analyze_sentiment(x: int) -> int:
    return x


@perf_agent.task(when=lambda load_state: load_state < 0)  # taken for x < 0
def verify_identity(load_state: int, extract_intent: int) -> int:
    return -load_state


@perf_agent.task
def respond(load_state: int, extract_intent: int, analyze_sentiment: int,
            verify_identity: int | None = None) -> int:
    return load_state + extract_intent + analyze_sentiment + (verify_identity or 0)


# -- fan-out as a map, then a join ---------------------------------------------------------

perf_fanout = Workflow("perf_fanout", queue=QUEUE, inputs=["items"])


@perf_fanout.task(map="items")
def fan(items: int) -> int:
    """One element (``items`` is the element here)."""
    return items


@perf_fanout.task
def join(fan: list[int]) -> int:
    return sum(fan)


# -- fan-out as 100 declared branches, then a join -----------------------------------------

perf_fanout_static = Workflow("perf_fanout_static", queue=QUEUE, inputs=["x"])
BRANCHES = [f"b{i:03d}" for i in range(FANOUT)]


def _branch(x: int) -> int:
    return x


for _name in BRANCHES:
    perf_fanout_static.task(name=_name)(_branch)

# The join binds every branch output by name: a function with 100 named parameters.
_namespace: dict[str, Any] = {}
exec(
    f"def join_all({', '.join(BRANCHES)}):\n    return sum(({', '.join(BRANCHES)},))\n",
    _namespace)
perf_fanout_static.task(name="join_all")(_namespace["join_all"])


# -- model calls ----------------------------------------------------------------------------

perf_llm_map = Workflow("perf_llm_map", queue=LLM_MAP_QUEUE, inputs=["prompts"])


@perf_llm_map.task(map="prompts", chunk_size=MAP_CHUNK_SIZE, concurrency=MAP_CONCURRENCY,
                   model=MODEL, queue=LLM_MAP_QUEUE)
def ask_many(prompts: str, ctx: StepContext) -> str:
    """One element: one chat completion; the output is the model that answered."""
    return ctx.llm.complete(prompts).model


perf_llm_one = Workflow("perf_llm_one", queue=LLM_ONE_QUEUE, inputs=["prompt"])


@perf_llm_one.task(model=MODEL, queue=LLM_ONE_QUEUE)
def ask_one(prompt: str, ctx: StepContext) -> str:
    return ctx.llm.complete(prompt).model


# -- the same two shapes as async def steps: each call awaited on the worker's event loop ---

perf_llm_amap = Workflow("perf_llm_amap", queue=LLM_MAP_QUEUE, inputs=["prompts"])


@perf_llm_amap.task(map="prompts", chunk_size=MAP_CHUNK_SIZE, concurrency=MAP_CONCURRENCY,
                    model=MODEL, queue=LLM_MAP_QUEUE)
async def aask_many(prompts: str, ctx: StepContext) -> str:
    return (await ctx.llm.acomplete(prompts)).model


perf_llm_aone = Workflow("perf_llm_aone", queue=LLM_ONE_QUEUE, inputs=["prompt"])


@perf_llm_aone.task(model=MODEL, queue=LLM_ONE_QUEUE)
async def aask_one(prompt: str, ctx: StepContext) -> str:
    return (await ctx.llm.acomplete(prompt)).model


# -- the same, with a plain httpx call (diagnosis: the step machinery without ctx.llm) ------

perf_http_map = Workflow("perf_http_map", queue=LLM_MAP_QUEUE, inputs=["prompts"])


@perf_http_map.task(map="prompts", chunk_size=MAP_CHUNK_SIZE, concurrency=MAP_CONCURRENCY,
                    queue=LLM_MAP_QUEUE)
def http_many(prompts: str) -> str:
    return http_call(prompts)


perf_http_one = Workflow("perf_http_one", queue=LLM_ONE_QUEUE, inputs=["prompt"])


@perf_http_one.task(queue=LLM_ONE_QUEUE)
def http_one(prompt: str) -> str:
    return http_call(prompt)


_local = threading.local()


def lean_call(prompt: str) -> str:
    """One chat completion over this thread's own ``http.client`` connection."""
    connection = getattr(_local, "connection", None)
    url = urlparse(os.environ[FAKE_URL_ENV])
    if connection is None:
        connection = _local.connection = http.client.HTTPConnection(
            url.hostname or "127.0.0.1", url.port, timeout=60)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": prompt}]})
    connection.request("POST", f"{url.path}/chat/completions", body, {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {os.environ.get(KEY_ENV, '')}"})
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}")
    return str(json.loads(data)["model"])


perf_lean_map = Workflow("perf_lean_map", queue=LLM_MAP_QUEUE, inputs=["prompts"])


@perf_lean_map.task(map="prompts", chunk_size=MAP_CHUNK_SIZE, concurrency=MAP_CONCURRENCY,
                    queue=LLM_MAP_QUEUE)
def lean_many(prompts: str) -> str:
    return lean_call(prompts)


perf_lean_one = Workflow("perf_lean_one", queue=LLM_ONE_QUEUE, inputs=["prompt"])


@perf_lean_one.task(queue=LLM_ONE_QUEUE)
def lean_one(prompt: str) -> str:
    return lean_call(prompt)


WORKFLOWS = {"linear": perf_linear, "diamond": perf_diamond, "agent": perf_agent,
             "fanout": perf_fanout, "fanout_static": perf_fanout_static,
             "llm_map": perf_llm_map, "llm_one": perf_llm_one, "llm_amap": perf_llm_amap,
             "llm_aone": perf_llm_aone, "http_map": perf_http_map,
             "http_one": perf_http_one, "lean_map": perf_lean_map,
             "lean_one": perf_lean_one}


def fanout_static_expected(x: int) -> int:
    return FANOUT * x
