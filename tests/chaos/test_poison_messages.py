"""Scenario 4: poison (malformed) messages on every queue, next to real runs.

Redis DB 12 of the shared server is broker, result backend and instrumentation; a fresh
PostgreSQL database holds the results. A prefork worker (-c 2) and a threads worker (-c 4)
serve the 4 per-step queues of ``chaos_poison`` (the ticket chain, 50-150 ms per step).
40 runs are submitted, then raw kombu messages are published on every queue: valid
protocol-2 task headers (the task name of a step on that queue, an id) and a body of the
wrong shape (``{"a": 1}``, ``[1, 2, 3, 4, 5]``, ``null``, a string, an ``[args, kwargs,
embed]`` whose message is not an envelope or is missing), plus the same under an engine
task's name and under a task name nobody registered.

What must hold: no worker exits (one that did would crash-loop: the message is put back
and kills the next one), every poison message leaves the broker (rejected: dead-lettered
or dropped, not re-queued), each is logged with its id, and every real run succeeds,
recorded once.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import redis
from kombu import Connection
from sqlalchemy import Engine

from tests.chaos.harness import chaos_env, log, replace_dead, run_cli, submit
from tests.chaos.verdict import analyse, dump_evidence, install_audit, terminal_count, wait_for
from tests.chaos.workflows import POISON_QUEUE, STEPS, queues
from tests.support.services import queue_lists
from tests.support.workers import Workers

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

RUNS = 40
QUEUES = queues(POISON_QUEUE, hops=True)
DEADLINE_S = 90  # from submission: every run terminal, every poison message gone
BODIES: tuple[Any, ...] = (
    {"a": 1},
    [1, 2, 3, 4, 5],
    None,
    "not a task body",
    [[{"not": "an envelope"}], {"run_id": "0" * 36}, {}],
    [[], {}, {}],  # the right shape, but the step's message is missing
)


def _headers(task: str, task_id: str) -> dict[str, Any]:
    """Celery protocol-2 headers: all valid, so only the body is wrong."""
    return {"lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": task_id, "parent_id": None,
            "argsrepr": "()", "kwargsrepr": "{}", "origin": "chaos-poison",
            "ignore_result": False}


def publish_poison(broker_url: str) -> dict[str, str]:
    """Publish every poison body on every queue; {task id: what it was}."""
    sent: dict[str, str] = {}
    with Connection(broker_url) as connection, connection.Producer() as producer:
        for queue, step in zip(QUEUES, STEPS, strict=True):
            names = [f"chaos_poison.{step}"]
            if queue == QUEUES[0]:
                names += ["orchestration.finalize", "chaos_poison.no_such_step"]
            for name in names:
                for body in BODIES:
                    task_id = str(uuid.uuid4())
                    producer.publish(body, exchange="", routing_key=queue,
                                     serializer="json", headers=_headers(name, task_id),
                                     correlation_id=task_id, delivery_mode=2)
                    sent[task_id] = f"{queue} {name} {json.dumps(body)}"
    return sent


def _still_held(client: redis.Redis, ids: dict[str, str]) -> list[str]:
    """Poison messages still queued or unacknowledged in the broker."""
    held = []
    raw = [item for queue in QUEUES for name in queue_lists(queue)
           for item in client.lrange(name, 0, -1)]
    raw += list(client.hvals("unacked"))
    for item in raw:
        text = item.decode(errors="replace")
        held.extend(task_id for task_id in ids if task_id in text)
    return held


def test_poison_messages_are_rejected_and_kill_no_worker(
        counters: redis.Redis, results_db: tuple[str, Engine], worker_pool: Workers) -> None:
    database_url, engine = results_db
    kwargs = counters.connection_pool.connection_kwargs
    redis_url = f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs['db']}"
    env = chaos_env(ORCH_BROKER_URL=redis_url, ORCH_RESULT_BACKEND=redis_url,
                    ORCH_REDIS_URL=redis_url, ORCH_CHAOS_COUNTER_URL=redis_url,
                    ORCH_DATABASE_URL=database_url)
    worker_pool.env = env
    run_cli(env, "db", "upgrade")
    install_audit(engine)
    first = worker_pool.start("poison-prefork", QUEUES, pool="prefork", concurrency=2,
                              wait=False)
    second = worker_pool.start("poison-threads", QUEUES, pool="threads", concurrency=4,
                               wait=False)
    worker_pool.wait_ready(first)
    worker_pool.wait_ready(second)
    log(f"workers ready; logs in {worker_pool.log_dir}")

    run_ids = submit(env, RUNS, "chaos_poison")
    submitted, submitted_at = time.monotonic(), time.time()
    poison = publish_poison(redis_url)
    log(f"submitted {RUNS} runs and {len(poison)} poison messages")
    deaths: list[str] = []

    def tick(_done: int) -> None:
        ended = replace_dead(worker_pool)
        for line in ended:
            log(f"worker died, restarted: {line}")
        deaths.extend(ended)

    done, all_done_at = wait_for(engine, RUNS, submitted + DEADLINE_S, tick=tick)
    held = _still_held(counters, poison)
    while held and time.monotonic() < submitted + DEADLINE_S:
        tick(done)
        time.sleep(0.5)
        held = _still_held(counters, poison)
    time.sleep(2)  # anything re-queued late shows up
    tick(done)
    held = _still_held(counters, poison)
    logs = "\n".join(path.read_text(errors="replace")
                     for path in worker_pool.log_dir.glob("*.log"))
    unlogged = [task_id for task_id in poison if task_id not in logs]
    worker_pool.stop_all()

    verdict = analyse(engine, counters, run_ids)
    verdict.figures.update({
        "poison messages published": len(poison),
        "poison messages still in the broker": len(held),
        "poison messages no worker logged (by id)": len(unlogged),
        "workers that died (restarted by the supervisor)": deaths,
        "time to all terminal since submit (s)": (
            round(all_done_at - submitted_at, 1) if all_done_at else None),
        "terminal runs at the end": terminal_count(engine),
    })
    verdict.print("scenario 4: poison messages")
    dump_evidence(engine, verdict, worker_pool.log_dir / "evidence.txt")
    problems = list(verdict.violations)
    if deaths:
        problems.append(f"workers died of poison messages: {deaths}")
    problems += [f"poison message still in the broker: {poison[i]}" for i in held[:5]]
    problems += [f"poison message never logged with its id {i}: {poison[i]}"
                 for i in unlogged[:5]]
    assert not problems, "\n".join(problems)
