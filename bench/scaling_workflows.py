"""Engine workflows measured by ``bench/scaling.py``.

Workers import this module through ``ORCH_IMPORTS`` (after ``bench.sql_counter``); it
binds to the default orchestrator, so ``ORCH_*`` must be set before it is imported.

- ``scale_linear``: four no-op steps on one queue (the compiler fuses them into one
  message per run), as ``perf_linear`` in ``bench/perf_workflows.py``.
- ``scale_support``: the shape of ``tasks/support``'s ``support_ticket`` with no-op
  bodies: classify (queue ``bench.scale.classifier``, retries 3, timeout 30) -> urgency
  (``bench.scale.urgency``, retries 2, timeout 30) -> route (fallback) -> respond
  (``critical=False``, retries 2, timeout 60, a fallback function), the last two on the
  default queue of the workflow. Three queues, so three messages per run: what the
  engine costs a support ticket, without the models' own CPU and the LLM's latency.
"""

from __future__ import annotations

from orchestration import Workflow

QUEUE = "bench.scale"
CLASSIFIER_QUEUE = "bench.scale.classifier"
URGENCY_QUEUE = "bench.scale.urgency"
QUEUES = {"linear": (QUEUE,), "support": (QUEUE, CLASSIFIER_QUEUE, URGENCY_QUEUE)}

scale_linear = Workflow("scale_linear", queue=QUEUE, inputs=["x"])


@scale_linear.task
def s1(x: int) -> int:
    return x


@scale_linear.task
def s2(s1: int) -> int:
    return s1


@scale_linear.task
def s3(s2: int) -> int:
    return s2


@scale_linear.task
def s4(s3: int) -> int:
    return s3


scale_support = Workflow("scale_support", queue=QUEUE, inputs=["x"])


@scale_support.task(retries=3, timeout=30, queue=CLASSIFIER_QUEUE)
def classify(x: int) -> int:
    return x


@scale_support.task(retries=2, timeout=30, queue=URGENCY_QUEUE)
def urgency(x: int, classify: int) -> int:
    return classify


@scale_support.task(fallback=0)
def route(classify: int, urgency: int) -> int:
    return urgency


def _fallback_reply(route: int, **_: object) -> int:
    return route


@scale_support.task(critical=False, retries=2, timeout=60, fallback=_fallback_reply)
def respond(route: int) -> int:
    return route


WORKFLOWS = {"linear": scale_linear, "support": scale_support}
FINAL = {"linear": "s4", "support": "respond"}
