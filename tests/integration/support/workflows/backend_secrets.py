"""Workflows whose runs carry secrets, for the tests of what Celery stores and shows.

Imported by the test's own workers (through ``ORCH_IMPORTS``). ``it_backend_secrets`` has a
chord whose header holds a chain ending in a group (a "complex" chord, whose join Celery
reads from each part's stored result) beside a slow step, which waits until the test
sets ``SLOW_RELEASE_KEY`` for its run in Redis (so the test can look at Redis and at
``inspect active`` while it runs). Every step echoes a secret into its output.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from orchestration import Workflow

SECRETS_QUEUE = "it.backend_secrets"
SLOW_RELEASE_KEY = "it-backend-secrets:release:{run}"
SLOW_STARTED_KEY = "it-backend-secrets:started:{run}"
SLOW_LIMIT_S = 120.0

secrets = Workflow("it_backend_secrets", queue=SECRETS_QUEUE)


def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["ORCH_BROKER_URL"])


@secrets.task
def intake(password: str, run_tag: str) -> dict[str, Any]:
    return {"password": password, "tag": run_tag}


@secrets.task
def check(intake: dict[str, Any], api_key: str) -> dict[str, Any]:
    return {"api_key": api_key, "ok": True}


@secrets.task
def enrich(intake: dict[str, Any], token: str) -> str:
    return f"token={token}"


@secrets.task
def slow(run_tag: str, token: str) -> dict[str, Any]:
    # Poll with a deadline: the test releases this step once it has looked around.
    client = _redis()
    client.set(SLOW_STARTED_KEY.format(run=run_tag), "1", ex=600)
    deadline = time.monotonic() + SLOW_LIMIT_S
    while not client.exists(SLOW_RELEASE_KEY.format(run=run_tag)):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never released the slow step")
        time.sleep(0.05)
    return {"token": token}


@secrets.task
def join(check: dict[str, Any], enrich: str, slow: dict[str, Any], password: str,
         api_key: str, token: str) -> str:
    # The join gets every part's values exactly (the chord's parts, not task keys).
    seen = (check["api_key"], enrich, slow["token"])
    return "exact" if seen == (api_key, f"token={token}", token) and password else "changed"
