"""No run data in what Celery keeps in Redis or shows: task keys and ``inspect active``.

A Redis server of the test's own (so every key in it belongs to this test) is the
broker and result backend of a threads worker serving ``it_backend_secrets``, whose
inputs carry a ``password``, an ``api_key`` and a ``token`` and whose steps echo them into
their outputs. Its chord has a complex header (a chain ending in a group beside a slow
step). While the slow step runs, every key of the Redis DB is read (strings, lists,
hashes, sets, sorted sets; kombu message bodies decoded), and ``celery inspect active``
is asked; once the run is over, every key is read again.

Expected: task keys (``celery-task-meta-*``) hold ``<envelope of run ...>`` only, and
``inspect active`` shows the summaries of the running step; the only copy of values
during the run is the chord's own parts set (``.j``, read by its join) and the broker's
messages (steps need their inputs); after the run, no key holds a secret in any form,
and the join received every value exactly.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery.app.task import Context

from orchestration import Orchestrator, RunStatus, Workflow, default_orchestrator
from orchestration.core.settings import Settings
from tests.integration.support.workflows import backend_secrets as bsw
from tests.support.own_redis import own_redis as own_redis_server
from tests.support.polling import wait_until
from tests.support.processes import CLI_TIMEOUT_S, ROOT, child_env, orchestrate
from tests.support.workers import Workers

MODULE = bsw.__name__
RUN_TIMEOUT_S = 60.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test (no persistence); its URL."""
    with own_redis_server(tmp_path) as server:
        yield server.url


def env_for(redis_url: str) -> dict[str, str]:
    """The session's environment, on the test's own Redis, importing the secret workflows."""
    return child_env(ORCH_BROKER_URL=redis_url, ORCH_RESULT_BACKEND=redis_url,
                     ORCH_REDIS_URL=redis_url, ORCH_IMPORTS=MODULE)


def every_value(client: redis.Redis) -> dict[str, str]:
    """Every key of the DB with all it holds as text, kombu message bodies decoded."""
    found: dict[str, str] = {}
    for raw_key in client.keys("*"):
        key = raw_key.decode()
        kind = client.type(raw_key).decode()
        if kind == "string":
            items = [client.get(raw_key)]
        elif kind == "list":
            items = client.lrange(raw_key, 0, -1)
        elif kind == "hash":
            items = [part for pair in client.hgetall(raw_key).items() for part in pair]
        elif kind == "set":
            items = list(client.smembers(raw_key))
        elif kind == "zset":
            items = client.zrange(raw_key, 0, -1)
        else:
            items = []
        texts = [item.decode(errors="replace") for item in items if item is not None]
        found[key] = "\n".join([*texts, *(_bodies(text) for text in texts)])
    return found


def _bodies(text: str) -> str:
    """kombu keeps a message's body base64-encoded in its JSON payload: decode it."""
    with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError, IndexError):
        payload = json.loads(text)
        if isinstance(payload, list):  # the unacked hash keeps [message, exchange, key]
            payload = payload[0]
        return base64.b64decode(payload["body"]).decode(errors="replace")
    return ""


def holding(values: dict[str, str], secrets: list[str]) -> dict[str, list[str]]:
    """Keys whose content holds any of ``secrets``, with which."""
    return {key: hits for key, text in values.items()
            if (hits := [secret for secret in secrets if secret in text])}


def submit(env: dict[str, str], inputs: dict[str, str]) -> str:
    done = orchestrate("submit", "it_backend_secrets", "--inputs", json.dumps(inputs), env=env,
                       check=True)
    return done.stdout.strip().splitlines()[-1]


def inspect_active(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "orchestration", "inspect",
                           "active", "--json", "--timeout", "10"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.postgres
def test_celery_keeps_and_shows_no_secret(own_redis: str, postgres_database: str,
                                          tmp_path: Path) -> None:
    env = env_for(own_redis)
    client = redis.Redis.from_url(own_redis)
    tag = f"t{os.getpid()}"
    inputs = {"password": f"pw-{tag}-Zq81", "api_key": f"sk-{tag}-Kq27",
              "token": f"tok-{tag}-Xr55", "run_tag": tag}
    secrets = [inputs["password"], inputs["api_key"], inputs["token"]]
    workers = Workers(tmp_path, env)
    try:
        workers.start("it-backend-secrets", [bsw.SECRETS_QUEUE], pool="threads",
                      concurrency=4)
        run_id = submit(env, inputs)
        wait_until(lambda: client.exists(bsw.SLOW_STARTED_KEY.format(run=tag)),
                   timeout=RUN_TIMEOUT_S, what="the slow step to start")
        # The chord's other branch (intake -> check, enrich) is done once both parts are in.
        store = default_orchestrator().store
        wait_until(lambda: {s.name: s.status.value for s in store.get_run(run_id).steps.values()
                            if s.name in ("check", "enrich")} == {"check": "succeeded",
                                                                  "enrich": "succeeded"},
                   timeout=RUN_TIMEOUT_S, what="the chord's first parts")

        active = inspect_active(env)
        assert "it_backend_secrets.slow" in active, active
        assert f"<envelope of run {run_id}>" in active, active
        assert not [secret for secret in secrets if secret in active], active

        during = every_value(client)
        task_keys = {key: text for key, text in during.items()
                     if key.startswith("celery-task-meta-")}
        assert task_keys, sorted(during)
        assert all(f'"result": "<envelope of run {run_id}>"' in text
                   for text in task_keys.values()), task_keys
        # Values are only where they must be while the run is in flight: the chord's parts
        # (its join reads them) and the broker's messages (the running step's delivery).
        allowed = ("unacked", ".j")
        assert not {key: hits for key, hits in holding(during, secrets).items()
                    if not key.endswith(allowed)}, during

        client.set(bsw.SLOW_RELEASE_KEY.format(run=tag), 1, ex=600)
        wait_until(lambda: store.get_run(run_id).status.is_terminal, timeout=RUN_TIMEOUT_S,
                   what="the run to end")
        run = store.get_run(run_id)
        assert run.status is RunStatus.SUCCEEDED, run.error
        assert run.outputs["join"] == "exact"
        # Celery acknowledges a message just after the task returns: let it settle.
        wait_until(lambda: not holding(every_value(client), secrets),
                   timeout=10, what="no secret left in Redis")
        after = every_value(client)
        assert not holding(after, secrets), after
        assert any(key.startswith("celery-task-meta-") for key in after)
    finally:
        workers.stop_all()
        client.close()


def test_a_chord_whose_join_failed_keeps_no_parts(own_redis: str, tmp_path: Path) -> None:
    # A part that fails (an engine error raised out of a step) makes the join fail; Celery
    # then drops the chord's size but would keep the other parts' values until they expire.
    app = Orchestrator(Settings(broker_url=own_redis, result_backend=own_redis, imports=[],
                                database_url=f"sqlite:///{tmp_path / 'r.db'}"))
    flow = Workflow("it_backend_chord_error", app=app)

    @flow.task
    def part(text: str) -> str:
        return text

    flow.validate()
    client = redis.Redis.from_url(own_redis)
    try:
        backend = app.celery.backend
        body = app.celery.signature("orchestration.finalize", options={"task_id": "body-1"})
        backend.set_chord_size("g1", 2)

        def request(index: int) -> Context:
            return Context(id=f"t{index}", group="g1", group_index=index, chord=dict(body),
                           task="it_backend_chord_error.part", ignore_result=False)

        secret = f"pw-{os.getpid()}-Jc40"
        backend.mark_as_done("t0", {"run": "r-1", "out": {"password": secret}},
                             request=request(0))
        assert holding(every_value(client), [secret]).keys() == {"celery-taskset-meta-g1.j"}
        backend.mark_as_failure("t1", ValueError("engine error"), request=request(1))
        assert not holding(every_value(client), [secret])
        assert not client.exists("celery-taskset-meta-g1.j")
    finally:
        client.close()
        app.shutdown()
