"""Workflows of the observability tests (redaction, logs, ``orchestrate`` CLI, metrics, stats).

Only the workers the observability tests start import this module (their ``ORCH_IMPORTS``
adds it); the test process imports it to submit runs. Every step here runs on a queue of
its own, so the session's shared workers never see these runs:

- ``OBS_QUEUE``: the observability threads worker (JSON logs, ``ORCH_METRICS_PORT``, the
  fake LLM catalogue);
- ``MULTIPROC_QUEUE``: the prefork worker of the multiprocess-metrics test;
- ``PARKED_QUEUE``: served by nothing, so its messages wait (queue-depth gauge).

The secrets below are what the redaction tests grep for in the results DB and the logs;
the step code never spells them out, so a traceback's source lines cannot carry them.
"""

from __future__ import annotations

import re
import time
from typing import Any

from orchestration import Backoff, NonRetryableError, StepContext, Workflow
from tests.integration.support.workflows.common import count_call

OBS_QUEUE = "it.obs"
MULTIPROC_QUEUE = "it.obs.multiproc"
PARKED_QUEUE = "it.obs.parked"

FAST_BACKOFF = Backoff(initial=0.01, maximum=0.02, jitter=0)  # under the inline retry limit
SLOW_BACKOFF = Backoff(initial=0.4, maximum=0.4, jitter=0)  # over ORCH_INLINE_RETRY_LIMIT=0.2

# -- secrets -------------------------------------------------------------------------------

API_KEY = "sk-live-SECRET123456789"
BEARER = "SECRET-TOKEN-abcdef123"
AUTH_HEADER = f"Authorization: Bearer {BEARER}"
PASSWORD = "hunter2-PASSWORD-9f8e7d"
EMAIL = "alice.secret@example.com"
EMAIL_MASK = "[EMAIL]"
SECRETS = (API_KEY, BEARER, PASSWORD, EMAIL)

_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


class UpstreamRejected(RuntimeError):
    """A provider error whose message echoes the request's credentials."""


def scrub_email(value: Any) -> Any:
    """The ``redact=`` hook of ``obs_redact``: e-mail addresses never reach the results DB."""
    if isinstance(value, dict):
        return {key: scrub_email(item) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub_email(item) for item in value]
    if isinstance(value, str):
        return _EMAIL_RE.sub(EMAIL_MASK, value)
    return value


# -- redaction: secrets in inputs, an error message and an output --------------------------

redact = Workflow("obs_redact", queue=OBS_QUEUE, redact=scrub_email)


@redact.task
def login(credentials: dict[str, Any]) -> dict[str, Any]:
    """Outputs a password (a deny-listed field) next to ordinary fields."""
    return {"user": credentials["user"], "password": PASSWORD, "session": "s-1"}


@redact.task(retries=1, backoff=FAST_BACKOFF, fallback="rejected", critical=False)
def call_upstream(credentials: dict[str, Any]) -> str:
    """Always fails with the Authorization header in its message (retried once)."""
    raise UpstreamRejected(f"upstream rejected the request; sent {AUTH_HEADER}")


@redact.task
def contact(login: dict[str, Any], call_upstream: str) -> dict[str, Any]:
    """An output with PII that only the workflow's redact= hook knows about."""
    return {"user": login["user"], "email": EMAIL, "note": f"mail {EMAIL} if it fails again"}


# Secrets through the other paths that store values: the step result cache, a map (whose
# element attempts are recorded per chunk) and a human wait (the parked step message).
# Each has secrets of its own, so a leak there never fails the main redaction test.

CACHE_PASSWORD = "hunter2-CACHE-4d3c2b1a"
MAP_TOKEN = "MAP-TOKEN-0a1b2c3d4e"
WAIT_API_KEY = "sk-live-WAITSECRET987654"

redact_cache = Workflow("obs_redact_cache", queue=OBS_QUEUE)


@redact_cache.task(cache=True)
def cached_login(user: str, password: str) -> dict[str, Any]:
    return {"user": user, "password": password}


redact_map = Workflow("obs_redact_map", queue=OBS_QUEUE)


@redact_map.task(map="headers", critical=False)
def probe(headers: str) -> str:
    """Fails for an element that is a bearer token, echoing it (as an HTTP client might)."""
    if headers.startswith("Bearer "):
        raise UpstreamRejected(f"probe failed; sent Authorization: {headers}")
    return f"ok:{headers}"


redact_wait = Workflow("obs_redact_wait", queue=OBS_QUEUE)


@redact_wait.task(fallback="timed out")
def review(credentials: dict[str, Any], ctx: StepContext) -> str:
    return str(ctx.wait_for_input("review", timeout=600))


# -- structured logs: a retried step with a model ------------------------------------------

logs = Workflow("obs_logs", queue=OBS_QUEUE)


@logs.task(retries=2, backoff=FAST_BACKOFF, model="obs-fast", queue=OBS_QUEUE)
def flaky_model(text: str, ctx: StepContext) -> str:
    """Fails on its first call (retried in the worker), then answers."""
    if count_call(ctx) <= 1:
        raise UpstreamRejected("provider returned 503")
    return text.upper()


broker_logs = Workflow("obs_broker_logs", queue=OBS_QUEUE)


@broker_logs.task(retries=3, backoff=SLOW_BACKOFF, model="obs-fast", queue=OBS_QUEUE)
def patient_model(text: str, ctx: StepContext) -> str:
    """Fails on its first two calls; each retry goes back through the broker."""
    if count_call(ctx) <= 2:
        raise UpstreamRejected("provider returned 503")
    return text.lower()


# -- `orchestrate show`: a retry and a fallback --------------------------------------------

show = Workflow("obs_show", queue=OBS_QUEUE)


@show.task(retries=2, backoff=FAST_BACKOFF)
def fetch(ticket_id: int, ctx: StepContext) -> str:
    """Fails once, then answers."""
    if count_call(ctx) <= 1:
        raise UpstreamRejected("ticket store returned 503")
    return f"ticket {ticket_id}"


@show.task(fallback="support_tier_1")
def route(fetch: str) -> str:
    raise NonRetryableError("router model is down")


@show.task
def reply(fetch: str, route: str) -> str:
    return f"{fetch} -> {route}"


# -- `orchestrate stats`: known latencies, a flaky step, a step that always falls back -----

QUICK_S = 0.05
SLOW_S = 0.2

latency = Workflow("obs_latency", queue=OBS_QUEUE)


@latency.task
def quick(n: int) -> int:
    time.sleep(QUICK_S)
    return n


@latency.task
def slow(quick: int) -> int:
    time.sleep(SLOW_S)
    return quick


@latency.task(retries=2, backoff=FAST_BACKOFF)
def wobbly(n: int, ctx: StepContext) -> int:
    """Fails on its first call in every run: exactly one retry per run."""
    if count_call(ctx) <= 1:
        raise UpstreamRejected("provider returned 503")
    return n


@latency.task(fallback=-1)
def degraded(n: int) -> int:
    raise NonRetryableError("scoring model is down")


# -- error rate per model (fake LLM server) ------------------------------------------------

models = Workflow("obs_models", queue=OBS_QUEUE)


@models.task(model="coin", queue=OBS_QUEUE, fallback="no answer")
def toss(prompt: str, ctx: StepContext) -> str:
    """One call to `coin` (fails half the time, no model retries): the step falls back."""
    return ctx.llm.complete(prompt, model="coin").model


@models.task(model="coin-backed", queue=OBS_QUEUE)
def toss_backed(prompt: str, ctx: StepContext) -> str:
    """One call to `coin-backed`, whose catalogue fallback `backup` answers its failures."""
    return ctx.llm.complete(prompt, model="coin-backed").model


# -- metrics: a priced model call, a retry, a fallback -------------------------------------

metered = Workflow("obs_metered", queue=OBS_QUEUE)


@metered.task(model="priced", queue=OBS_QUEUE)
def priced_call(prompt: str, ctx: StepContext) -> str:
    return ctx.llm.complete(prompt, model="priced").text


@metered.task(retries=2, backoff=FAST_BACKOFF)
def retried(prompt: str, ctx: StepContext) -> str:
    if count_call(ctx) <= 1:
        raise UpstreamRejected("provider returned 503")
    return prompt


@metered.task(fallback="fell back")
def fallen(prompt: str) -> str:
    raise NonRetryableError("model is down")


# -- multiprocess metrics: a prefork worker with two children ------------------------------

multiproc = Workflow("obs_multiproc", queue=MULTIPROC_QUEUE)


@multiproc.task
def busy(n: int) -> int:
    time.sleep(0.3)  # long enough that both pool children take messages
    return n


# -- queue depth: a queue no worker serves -------------------------------------------------

parked = Workflow("obs_parked", queue=PARKED_QUEUE)


@parked.task
def never_runs(n: int) -> int:
    return n
