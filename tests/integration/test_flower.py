"""Flower over the session's workers: steps by name ``<workflow>.<step>``, run id in kwargs,
no run data in args or results.

``orchestrate flower`` (``orchestration/exporter.py``) starts a real Flower process with
the test process's ``ORCH_*`` environment and ``FLOWER_BASIC_AUTH``; its REST API is
polled until the task events of a run sent through the session workers show up. Beyond
loopback, ``orchestrate flower`` refuses to start without basic auth.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestration import RunStatus
from tests.integration.support.observability import (
    ORCHESTRATE,
    ROOT,
    Server,
    background,
    obs_env,
    wait_for_http,
)
from tests.integration.support.workflows import common as wf
from tests.support.processes import free_port
from tests.support.workers import Workers

USER, PASSWORD = "test", "secret"
AUTH = (USER, PASSWORD)
FLOWER_START_S = 45.0
EVENTS_TIMEOUT_S = 30.0
STEPS = ("tokenize", "embed", "score")  # it_routing: it.default -> it.other -> it.threads


@pytest.fixture(scope="module")
def flower_server(workers: Workers,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Server]]:
    """A Flower process with basic auth; yields its base URL once its API answers."""
    port = free_port()
    env = obs_env(FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}")
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    with background([*ORCHESTRATE, "flower", "--address", "127.0.0.1", "--port", str(port)],
                    env, log) as server:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/api/workers", server, timeout=FLOWER_START_S, auth=AUTH,
                      what="Flower")
        yield base, server
        assert server.process.poll() is None, f"Flower died; log:\n{server.log()[-4000:]}"


@pytest.fixture(scope="module")
def flower(flower_server: tuple[str, Server]) -> str:
    """The base URL of the module's Flower."""
    return flower_server[0]


def step_tasks(base: str, run_id: str) -> dict[str, dict[str, Any]] | None:
    """The run's step tasks Flower knows, by step name, once all of them succeeded."""
    response = httpx.get(f"{base}/api/tasks", auth=AUTH, params={"limit": 1000}, timeout=5)
    response.raise_for_status()
    found = {task["name"].partition(".")[2]: task for task in response.json().values()
             if (task.get("name") or "").startswith("it_routing.")
             and run_id in (task.get("kwargs") or "")}
    if set(found) == set(STEPS) and all(t.get("state") == "SUCCESS" for t in found.values()):
        return found
    return None


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.workers
def test_flower_lists_steps_by_name_with_the_run_id(flower: str, workers: Workers) -> None:
    # Flower only sees events sent after its receiver connected: keep sending runs (one at
    # a time) until one is seen whole, within the deadline.
    deadline = time.monotonic() + EVENTS_TIMEOUT_S
    tasks = None
    while tasks is None:
        run = wf.routing.run(text="to be or not", timeout=30)
        assert run.status is RunStatus.SUCCEEDED, run.error
        settle = time.monotonic() + 5
        while tasks is None and time.monotonic() < settle:
            tasks = step_tasks(flower, run.run_id)
            if tasks is None:
                time.sleep(0.2)
        assert tasks is not None or time.monotonic() < deadline, (
            f"Flower never listed the steps of a run within {EVENTS_TIMEOUT_S:g} s")

    queues = {"tokenize": wf.QUEUE, "embed": wf.OTHER_QUEUE, "score": wf.THREADS_QUEUE}
    for step, task in tasks.items():
        assert task["name"] == f"it_routing.{step}"
        assert f"'run_id': '{run.run_id}'" in task["kwargs"]
        # Args and result name the run; its data (here the input text) stays out of Flower.
        assert task["args"] == f"(<envelope of run {run.run_id}>,)"
        assert "to be or not" not in f"{task['args']}{task['kwargs']}{task.get('result')}"
        assert task["state"] == "SUCCESS"
        assert task["worker"] in workers.serving(queues[step]), task

    response = httpx.get(f"{flower}/api/workers", auth=AUTH, params={"refresh": "1"},
                         timeout=15)
    assert response.status_code == 200
    listed = set(response.json())
    assert {w.nodename for w in workers.started} <= listed, listed


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.workers
def test_flower_api_requires_the_basic_auth(flower: str) -> None:
    for path in ("/api/tasks", "/api/workers", "/"):
        assert httpx.get(f"{flower}{path}", timeout=5).status_code == 401, path
        assert httpx.get(f"{flower}{path}", auth=(USER, "wrong"),
                         timeout=5).status_code == 401, path


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.workers
def test_flower_password_is_not_on_its_command_line(flower_server: tuple[str, Server]) -> None:
    base, server = flower_server
    # `orchestrate flower` execs Flower in place: the pid is Flower's.
    argv = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().split(b"\0")
    assert any(b"flower" in arg for arg in argv), argv
    assert not any(PASSWORD.encode() in arg for arg in argv), argv
    # ... and the credentials still reach Flower (from its environment).
    assert httpx.get(f"{base}/api/workers", auth=AUTH, timeout=5).status_code == 200
    assert httpx.get(f"{base}/api/workers", timeout=5).status_code == 401


@pytest.mark.parametrize("auth", [":", "admin:", ":pw"])
def test_flower_with_empty_credentials_is_refused(auth: str) -> None:
    done = subprocess.run([*ORCHESTRATE, "flower", "--address", "127.0.0.1",
                           "--port", str(free_port())], cwd=ROOT,
                          env=obs_env(FLOWER_BASIC_AUTH=auth), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert "FLOWER_BASIC_AUTH credential 1 must be user:password" in done.stderr


def test_flower_beyond_loopback_without_auth_is_refused(tmp_path: Path) -> None:
    env = obs_env()
    env.pop("FLOWER_BASIC_AUTH", None)
    done = subprocess.run([*ORCHESTRATE, "flower", "--address", "0.0.0.0",
                           "--port", str(free_port())],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "refusing to start Flower on 0.0.0.0 without authentication" in done.stderr
    assert "FLOWER_BASIC_AUTH" in done.stderr
