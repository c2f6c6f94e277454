"""Rows of a results DB at scale: runs, their 4 steps and their attempts (bench/scale_db.py).

Deterministic (seeded). Runs are created over ``days`` days up to ``now``, in created_at
order (as a live table fills), with a mix of workflows and of statuses: mostly
succeeded, some failed or cancelled; pending, running and waiting runs are mostly recent
(a few old ones are stuck: what the reconciler looks for). Steps are succeeded, fallback,
failed, skipped, cancelled, running, waiting or pending as their run's status implies;
each step that ran has 1-3 attempts, and the LLM steps' attempts carry their model calls.

On PostgreSQL the rows go in with COPY, the tables' secondary indexes, unique and foreign
keys dropped during the load and built after it (what a bulk load does; the bench
measures queries, not the load).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

# (name, share of runs, its 4 steps, which of them call a model)
WORKFLOWS: list[tuple[str, float, tuple[str, ...], tuple[bool, ...]]] = [
    ("support_triage", 0.35, ("load", "classify", "draft", "send"), (False, True, True, False)),
    ("resume_screen", 0.20, ("parse", "score", "summarise", "store"), (False, True, True, False)),
    ("rag_answer", 0.15, ("embed", "retrieve", "answer", "cite"), (True, False, True, False)),
    ("invoice_extract", 0.10, ("ocr", "extract", "validate", "post"), (False, True, False, False)),
    ("lead_score", 0.08, ("fetch", "enrich", "score", "route"), (False, True, True, False)),
    ("call_summary", 0.06, ("transcribe", "summarise", "tag", "notify"),
     (True, True, True, False)),
    ("contract_review", 0.04, ("split", "review", "redline", "report"),
     (False, True, True, False)),
    ("nightly_report", 0.015, ("gather", "aggregate", "write", "mail"),
     (False, False, True, False)),
    ("gdpr_export", 0.005, ("find", "collect", "package", "mail"),
     (False, False, False, False)),
]
# Terminal runs: succeeded / failed / cancelled.
TERMINAL_MIX = [("succeeded", 0.945), ("failed", 0.05), ("cancelled", 0.005)]
LIVE = ("pending", "running", "waiting")
RECENT_S = 600.0  # runs created in the last 10 minutes: half of them still in flight
STUCK = 0.0005  # share of older runs left pending/running/waiting (lost messages)
MODELS = ("gpt-4o-mini", "gpt-4o", "claude-haiku", "local-small")
ERRORS = [("TimeoutError", "timeout", "step timed out after 30 s"),
          ("RateLimitError", "rate_limited", "429 from provider"),
          ("ValueError", "bad_output", "model answer did not match the schema")]


@dataclass
class Counts:
    """Rows generated, by table."""

    runs: int = 0
    steps: int = 0
    attempts: int = 0


Sink = Callable[[tuple[Any, ...]], None]


class Generator:
    """Writes ``runs`` runs (their steps and attempts) through one sink per table."""

    def __init__(self, runs: int, now: datetime, *, days: float = 30.0, seed: int = 17,
                 text_ts: Callable[[datetime], Any] = lambda t: t,
                 boolean: Callable[[bool], Any] = lambda b: b) -> None:
        self.runs, self.now, self.days = runs, now, days
        self.rng = random.Random(seed)
        self.ts, self.bool = text_ts, boolean
        self.counts = Counts()
        self._step_id = 0
        self._attempt_id = 0
        self.sample_ids: list[str] = []

    def created_times(self) -> Iterator[datetime]:
        """``runs`` instants over ``days`` up to ``now``, ascending (uniform spacing, jitter)."""
        span = self.days * 86400.0
        start = self.now - timedelta(seconds=span)
        gap = span / self.runs
        for index in range(self.runs):
            yield start + timedelta(seconds=gap * index + self.rng.random() * gap)

    def write(self, run_sink: Sink, step_sink: Sink, attempt_sink: Sink) -> Counts:
        """Generate everything into the sinks; returns how many rows each table got."""
        rng = self.rng
        names = [w[0] for w in WORKFLOWS]
        weights = [w[1] for w in WORKFLOWS]
        cumulative = [sum(weights[:i + 1]) for i in range(len(weights))]
        term_names = [t[0] for t in TERMINAL_MIX]
        term_cum = [sum(t[1] for t in TERMINAL_MIX[:i + 1]) for i in range(len(TERMINAL_MIX))]
        every = max(1, self.runs // 2000)
        for index, created in enumerate(self.created_times()):
            pick = rng.random() * cumulative[-1]
            w = next(i for i, c in enumerate(cumulative) if pick <= c)
            age = (self.now - created).total_seconds()
            if (age < RECENT_S and rng.random() < 0.5) or rng.random() < STUCK:
                status = LIVE[rng.randrange(3)] if rng.random() < 0.3 else \
                    ("running" if rng.random() < 0.8 else "pending")
            else:
                pick = rng.random()
                status = term_names[next(i for i, c in enumerate(term_cum) if pick <= c)]
            run_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            if index % every == 0:
                self.sample_ids.append(run_id)
            self._run(run_sink, step_sink, attempt_sink, run_id, names[w], WORKFLOWS[w],
                      status, created)
        return self.counts

    def _run(self, run_sink: Sink, step_sink: Sink, attempt_sink: Sink, run_id: str,
             workflow: str, spec: tuple[str, float, tuple[str, ...], tuple[bool, ...]],
             status: str, created: datetime) -> None:
        rng = self.rng
        steps, llm = spec[2], spec[3]
        # Which step the run stopped at (failed, cancelled, running, waiting).
        stop = rng.randrange(4)
        t = created + timedelta(milliseconds=5 + rng.random() * 40)
        started = t if status != "pending" else None
        run_cost = 0.0
        run_error = run_error_type = None
        for position, name in enumerate(steps):
            if status == "pending":
                state = "pending"
            elif status == "succeeded":
                pick = rng.random()
                state = "fallback" if pick < 0.04 else "skipped" if pick < 0.06 \
                    and position == 3 else "succeeded"
            elif position < stop:
                state = "succeeded"
            elif position == stop:
                state = {"failed": "failed", "cancelled": "cancelled", "running": "running",
                         "waiting": "waiting"}[status]
            else:
                state = {"failed": "skipped", "cancelled": "cancelled"}.get(status, "pending")
            t, cost = self._step(step_sink, attempt_sink, run_id, name, llm[position],
                                 state, t)
            run_cost += cost
            if state == "failed":
                run_error, run_error_type = f"step {name} failed: timed out", "StepFailed"
        finished = t if status in ("succeeded", "failed", "cancelled") else None
        if status == "cancelled":
            run_error, run_error_type = "cancelled", "Cancelled"
        run_sink((run_id, workflow, "v3", status,
                  json.dumps({"ticket": f"T-{rng.randrange(10**6)}", "lang": "en"}), "[]",
                  run_error, run_error_type, None, None, round(run_cost, 6),
                  self.ts(created), None if started is None else self.ts(started),
                  None if finished is None else self.ts(finished), 0))
        self.counts.runs += 1

    def _step(self, step_sink: Sink, attempt_sink: Sink, run_id: str, name: str, llm: bool,
              state: str, t: datetime) -> tuple[datetime, float]:
        rng = self.rng
        self._step_id += 1
        self.counts.steps += 1
        model = MODELS[rng.randrange(3)] if llm else None
        ran = state in ("succeeded", "fallback", "failed", "running", "waiting")
        tries = 0
        if ran:
            tries = 3 if state == "failed" else 2 if state == "fallback" else \
                1 if state in ("running", "waiting") else \
                (2 if rng.random() < 0.06 else 1)
        step_start = t if ran else None
        cost = 0.0
        tokens_in = tokens_out = 0
        recorded = 0 if state in ("running", "waiting") else tries
        error = error_type = None
        for attempt in range(1, recorded + 1):
            ok = attempt == tries and state != "failed"
            took = (400 + rng.random() * 2500) if llm else (2 + rng.random() * 60)
            end = t + timedelta(milliseconds=took)
            calls = None
            a_in = a_out = 0
            a_cost = 0.0
            used = model if (state != "fallback" or attempt == 1) else "local-small"
            kind = policy = None
            a_error = a_type = None
            if not ok:
                a_type, kind, a_error = ERRORS[rng.randrange(len(ERRORS))]
                policy = f"{kind}: route_to_fallback" if state == "fallback" else None
            if llm:
                a_in, a_out = 300 + rng.randrange(3000), 50 + rng.randrange(500)
                a_cost = (a_in * 0.15 + a_out * 0.6) / 1e6
                calls = json.dumps([{"model": used, "ok": ok, "tokens_in": a_in,
                                     "tokens_out": a_out, "latency_ms": round(took, 1),
                                     "context_utilisation": round(a_in / 128000, 4)}])
            self._attempt_id += 1
            self.counts.attempts += 1
            attempt_sink((self._attempt_id, run_id, name, attempt,
                          "succeeded" if ok else "failed", a_error, a_type, "w1@host-a",
                          used, a_cost, a_in, a_out, None, None, None, kind, policy, calls,
                          round(took, 3), self.ts(t), self.ts(end)))
            cost += a_cost
            tokens_in += a_in
            tokens_out += a_out
            if not ok:
                error, error_type = a_error, a_type
            t = end + timedelta(milliseconds=3 + rng.random() * 20)
        finished = t if state in ("succeeded", "fallback", "failed") else None
        if state in ("skipped", "cancelled"):
            finished = t
            error = "upstream step failed" if state == "skipped" else "cancelled"
        output = json.dumps({"label": "ok", "score": round(rng.random(), 3)}) \
            if state in ("succeeded", "fallback") else None
        step_sink((self._step_id, run_id, name, name, state, self.bool(True), output,
                   error if state in ("failed", "fallback", "skipped", "cancelled") else None,
                   error_type if state in ("failed", "fallback") else None,
                   recorded, max(tries, 0), "default", model,
                   "w1@host-a" if ran else None,
                   "h-1" if state == "running" else None, None, round(cost, 6),
                   tokens_in, tokens_out, None, 0, self.bool(False),
                   None if finished is None or step_start is None
                   else round((finished - step_start).total_seconds() * 1000, 3),
                   None if step_start is None else self.ts(step_start),
                   None if finished is None else self.ts(finished)))
        return t, cost


RUN_COLUMNS = ("id", "workflow", "workflow_version", "status", "inputs", "redacted_inputs",
               "error", "error_type", "idempotency_key", "parent_run_id", "cost_usd",
               "created_at", "started_at", "finished_at", "priority")
STEP_COLUMNS = ("id", "run_id", "name", "output_name", "status", "critical", "output",
                "error", "error_type", "attempts", "deliveries", "queue", "model", "worker",
                "holder", "celery_task_id", "cost_usd", "tokens_in", "tokens_out", "gate",
                "crashes", "cache_hit", "latency_ms", "started_at", "finished_at")
ATTEMPT_COLUMNS = ("id", "run_id", "step_name", "attempt", "status", "error", "error_type",
                   "worker", "model", "cost_usd", "tokens_in", "tokens_out", "gate",
                   "breaker", "map_index", "error_kind", "policy", "calls", "latency_ms",
                   "started_at", "finished_at")
