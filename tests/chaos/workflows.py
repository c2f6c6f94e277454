"""Workflows of the chaos tests, and the instrumentation the tests read back.

Imported by every worker of a chaos test (``ORCH_IMPORTS=tests.chaos.workflows``), by
the submitter subprocess and by ``orchestrate reconcile``. Workflows of the
support-ticket shape (4 steps in a chain, with the shipped workflow's step policies):

- ``chaos_kills``: every step on ``chaos.kills`` (the compiler fuses the chain into one
  message per run), 50-150 ms per step;
- ``chaos_kills_hops``: each step on its own queue (``chaos.kills.classifier``, ...),
  like the shipped workflow's per-model queues: a broker hop between steps;
- ``chaos_broker``: the hop layout on ``chaos.broker.*``, ~0.3 s per step;
- ``chaos_threads``: the hop layout on ``chaos.threads.*``, 0.8-1.6 s per step (broker
  loss under a threads worker: steps in flight at the kill);
- ``chaos_db``: the hop layout on ``chaos.db.*``, 0.2-0.4 s per step (results-DB outages);
- ``chaos_poison``: the hop layout on ``chaos.poison.*``, next to poison messages;
- ``chaos_fatal_prefork`` / ``chaos_fatal_threads`` / ``chaos_exit_threads``: ``blow``
  (returns, raises ``BaseException`` / ``SystemExit`` / ``KeyboardInterrupt``, or calls
  ``os._exit``, as its ``kind`` input says) then ``after``;
- ``chaos_repro``: two steps, the first one slow (``repro_duplicates.py``);
- ``chaos_hosts``: the hop layout on ``chaos.hosts.*``, 0.3-0.6 s per step (workers on
  several "hosts", network namespaces: ``test_hosts.py``).

Instrumentation, all in the *counter* Redis (``ORCH_CHAOS_COUNTER_URL``; never the
broker of scenario 2, which is killed and restarted empty):

- ``chaos:exec:<run>:<step>``: INCR once per execution of the step function (a claim
  that proceeded), so the test can count re-executions;
- ``chaos:executions``: one JSON line per execution (run, step, start time, pid, and
  the worker's ``ORCH_CHAOS_HOST`` if set), so a re-execution can be matched with an
  outage it was in flight during, or with the host that ran it;
- ``chaos:deliveries``: one JSON line per task delivery (Celery's ``task_prerun``) with
  the task and root ids, ``redelivered``, pid, node and time;
- ``chaos:published``: one JSON line per message sent (``after_task_publish``) with its
  sender's role (``ORCH_CHAOS_ROLE``: submit, reconcile, or a worker passing a chain on),
  so a reconciler re-dispatch (a new root id) can be told from the run's earlier messages;
- ``chaos:busy:<pid>``: the (run, step) a pool process is running (set at delivery and
  at each step of a fused message, deleted after the task), read by the killer just
  before a SIGKILL, so every kill is attributed to the step it interrupted.

Outputs carry their lineage: each step returns ``<its input>|<step>:<execution token>``,
so a recorded output that is not built on its predecessor's *recorded* output shows
that an execution whose outcome was discarded still fed a later step.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
import uuid
from typing import Any

import redis
from celery import signals

from orchestration import StepContext, Workflow
from tests.support.redis_clients import process_client

KILLS_QUEUE = "chaos.kills"
BROKER_QUEUE = "chaos.broker"
THREADS_QUEUE = "chaos.threads"
DB_QUEUE = "chaos.db"
POISON_QUEUE = "chaos.poison"
HOSTS_QUEUE = "chaos.hosts"
STEPS = ("classify_ticket", "extract_urgency", "route_to_team", "generate_response")
# The shipped ticket workflow's per-model queues, under a prefix of the test's own.
HOP_QUEUES = ("classifier", "urgency", "default", "llm")

DELIVERIES_KEY = "chaos:deliveries"
PUBLISHED_KEY = "chaos:published"
EXEC_PREFIX = "chaos:exec:"
BUSY_PREFIX = "chaos:busy:"
EXECUTIONS_KEY = "chaos:executions"
KEY_TTL_S = 3600

def counter_url() -> str:
    """The Redis that holds the instrumentation (never the broker a test kills)."""
    return (os.environ.get("ORCH_CHAOS_COUNTER_URL") or os.environ.get("ORCH_REDIS_URL")
            or os.environ["ORCH_BROKER_URL"])


def counters() -> redis.Redis:
    """This process's client of the counter Redis (a prefork child opens its own)."""
    return process_client(counter_url(), socket_timeout=5, socket_connect_timeout=5)


def exec_key(run_id: str, step: str) -> str:
    """The key counting executions of ``step`` in run ``run_id``."""
    return f"{EXEC_PREFIX}{run_id}:{step}"


def _busy_key() -> str:
    return f"{BUSY_PREFIX}{os.getpid()}"


def _work(ctx: StepContext, upstream: str, low: float, high: float) -> str:
    token = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    client = counters()
    key = exec_key(ctx.run_id, ctx.step)
    busy = json.dumps({"run": ctx.run_id, "step": ctx.step, "t": time.time()})
    # busy: this pool process now runs this step (a fused message runs several in turn).
    started = json.dumps({"run": ctx.run_id, "step": ctx.step, "t": time.time(),
                          "pid": os.getpid(), "host": os.environ.get("ORCH_CHAOS_HOST")})
    client.pipeline(transaction=False).incr(key).expire(key, KEY_TTL_S).set(
        _busy_key(), busy, ex=KEY_TTL_S).rpush(EXECUTIONS_KEY, started).execute()
    time.sleep(random.uniform(low, high))  # the "model call"
    return f"{upstream}|{ctx.step}:{token}"


def queues(prefix: str, *, hops: bool) -> tuple[str, ...]:
    """The queues of a chaos workflow: one, or one per step (the ticket's layout)."""
    return tuple(f"{prefix}.{q}" for q in HOP_QUEUES) if hops else (prefix,)


def _ticket_workflow(name: str, prefix: str, low: float, high: float, *,
                     hops: bool) -> Workflow:
    """classify -> urgency -> route -> respond, with the support workflow's policies.

    ``hops``: each step on its own queue, as the shipped workflow's per-model queues (a
    broker round trip between steps); otherwise one queue, which the compiler fuses
    into one message per run that runs the four steps in turn.
    """
    q = queues(prefix, hops=hops) if hops else (prefix,) * 4
    wf = Workflow(name, inputs=["ticket_id", "text"], queue=q[2])

    @wf.task(retries=3, timeout=30, queue=q[0])
    def classify_ticket(ticket_id: int, text: str, ctx: StepContext) -> str:
        return _work(ctx, f"t{ticket_id}", low, high)

    @wf.task(retries=2, timeout=30, queue=q[1])
    def extract_urgency(classify_ticket: str, ctx: StepContext) -> str:
        return _work(ctx, classify_ticket, low, high)

    @wf.task(fallback="support_tier_1", queue=q[2])
    def route_to_team(extract_urgency: str, ctx: StepContext) -> str:
        return _work(ctx, extract_urgency, low, high)

    @wf.task(critical=False, retries=2, timeout=60, queue=q[3])
    def generate_response(route_to_team: str, ctx: StepContext) -> str:
        return _work(ctx, route_to_team, low, high)

    return wf


chaos_kills = _ticket_workflow("chaos_kills", KILLS_QUEUE, 0.05, 0.15, hops=False)
chaos_kills_hops = _ticket_workflow("chaos_kills_hops", KILLS_QUEUE, 0.05, 0.15, hops=True)
chaos_broker = _ticket_workflow("chaos_broker", BROKER_QUEUE, 0.25, 0.35, hops=True)
# Broker loss under a threads worker: steps long enough to be in flight at the kill.
chaos_threads = _ticket_workflow("chaos_threads", THREADS_QUEUE, 0.8, 1.6, hops=True)
# Results-DB outages: short steps, so many are claiming or recording when the DB stops.
chaos_db = _ticket_workflow("chaos_db", DB_QUEUE, 0.2, 0.4, hops=True)
# Poison messages sit on these queues next to real runs.
chaos_poison = _ticket_workflow("chaos_poison", POISON_QUEUE, 0.05, 0.15, hops=True)
# Workers on several hosts (network namespaces): a host partitioned or lost mid-batch.
chaos_hosts = _ticket_workflow("chaos_hosts", HOSTS_QUEUE, 0.3, 0.6, hops=True)


# -- steps that end their process or raise past Exception (test_fatal_steps.py) -------------

FATAL_KINDS = ("ok", "base", "systemexit", "keyboard", "exit")


def _fatal(kind: str) -> None:
    """What a step of ``kind`` does after its work: return, raise, or end the process."""
    if kind == "base":
        raise BaseException("chaos: a bare BaseException from a step")
    if kind == "systemexit":
        raise SystemExit(3)
    if kind == "keyboard":
        raise KeyboardInterrupt
    if kind == "exit":
        os._exit(13)  # no cleanup, no exception: the process is gone


def _fatal_workflow(name: str, queue: str) -> Workflow:
    """``blow`` (does what its ``kind`` input says) -> ``after``, both on ``queue``."""
    wf = Workflow(name, inputs=["ticket_id", "kind"], queue=queue)

    @wf.task(retries=1, timeout=30, queue=queue)
    def blow(ticket_id: int, kind: str, ctx: StepContext) -> str:
        output = _work(ctx, f"t{ticket_id}", 0.1, 0.3)
        _fatal(kind)
        return output

    @wf.task(queue=queue)
    def after(blow: str, ctx: StepContext) -> str:
        return _work(ctx, blow, 0.05, 0.1)

    return wf


FATAL_PREFORK_QUEUE = "chaos.fatal.prefork"
FATAL_THREADS_QUEUE = "chaos.fatal.threads"
EXIT_THREADS_QUEUE = "chaos.exit.threads"  # os._exit takes a threads worker down whole
chaos_fatal_prefork = _fatal_workflow("chaos_fatal_prefork", FATAL_PREFORK_QUEUE)
chaos_fatal_threads = _fatal_workflow("chaos_fatal_threads", FATAL_THREADS_QUEUE)
chaos_exit_threads = _fatal_workflow("chaos_exit_threads", EXIT_THREADS_QUEUE)

WORKFLOWS = {wf.name: wf for wf in (chaos_kills, chaos_kills_hops, chaos_broker, chaos_threads,
                                    chaos_db, chaos_poison, chaos_fatal_prefork,
                                    chaos_fatal_threads, chaos_exit_threads, chaos_hosts)}


# -- delivery instrumentation (runs in the worker processes) --------------------------------


def _is_chaos(task: Any) -> bool:
    return str(getattr(task, "name", "")).split(".", 1)[0] in WORKFLOWS


def _on_prerun(task_id: str | None = None, task: Any = None,
               kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    if task is None or not _is_chaos(task):
        return
    request = task.request
    info = request.delivery_info or {}
    entry = {
        "run": (kwargs or {}).get("run_id"), "step": task.name.partition(".")[2],
        "task_id": task_id, "root_id": request.root_id,
        "redelivered": bool(info.get("redelivered")), "retries": request.retries,
        "pid": os.getpid(), "node": request.hostname, "t": time.time(),
    }
    line = json.dumps(entry)
    with contextlib.suppress(redis.RedisError):  # never change what the engine does
        counters().pipeline(transaction=False).rpush(DELIVERIES_KEY, line).set(
            _busy_key(), line, ex=KEY_TTL_S).execute()


def _on_postrun(task: Any = None, **_: Any) -> None:
    if task is None or not _is_chaos(task):
        return
    with contextlib.suppress(redis.RedisError):
        counters().delete(_busy_key())


def _on_published(sender: Any = None, headers: dict[str, Any] | None = None,
                  body: Any = None, **_: Any) -> None:
    """Every message a chaos step is sent as: by whom (submit, reconcile, a worker)."""
    if str(sender or "").partition(".")[0] not in WORKFLOWS:
        return
    headers = headers or {}
    kwargs = body[1] if isinstance(body, list | tuple) and len(body) > 1 else {}
    entry = {
        "run": (kwargs or {}).get("run_id"), "step": str(sender).partition(".")[2],
        "task_id": headers.get("id"), "root_id": headers.get("root_id"),
        "role": os.environ.get("ORCH_CHAOS_ROLE", "worker"), "pid": os.getpid(),
        "t": time.time(),
    }
    with contextlib.suppress(redis.RedisError):
        counters().rpush(PUBLISHED_KEY, json.dumps(entry))


signals.task_prerun.connect(_on_prerun, weak=False)
signals.task_postrun.connect(_on_postrun, weak=False)
signals.after_task_publish.connect(_on_published, weak=False)


# -- the duplicate-delivery repro (tests/chaos/repro_duplicates.py) ---------------------------

REPRO_QUEUES = ("chaos.repro.a", "chaos.repro.b")
REPRO_FIRST_S = 4.0  # long enough for duplicates to arrive while it runs

chaos_repro = Workflow("chaos_repro", inputs=["label"], queue=REPRO_QUEUES[0])


@chaos_repro.task(queue=REPRO_QUEUES[0])
def first(label: str, ctx: StepContext) -> str:
    """A slow step (a long model call); every execution gets its own token."""
    counters().incr(exec_key(ctx.run_id, ctx.step))
    time.sleep(REPRO_FIRST_S)
    return f"{label}|first:{os.getpid()}.{uuid.uuid4().hex[:8]}"


@chaos_repro.task(queue=REPRO_QUEUES[1])
def second(first: str, ctx: StepContext) -> str:
    """Slow on its first execution, fast after (model latency varies)."""
    calls = int(counters().incr(exec_key(ctx.run_id, ctx.step)))
    time.sleep(3.0 if calls == 1 else 0.2)
    return f"{first}|second:{os.getpid()}.{uuid.uuid4().hex[:8]}"


WORKFLOWS[chaos_repro.name] = chaos_repro
