"""Provider calls and cost per 1,000 candidate-scoring elements, with and without batching.

Each element is a run of its own on the embedded default (SQLite, in-process workers),
scoring one candidate's skills with ``ctx.llm`` against the fake OpenAI-compatible server
of ``tests/fakes/llm_server.py`` (real HTTP calls; the fake counts tokens as words and
the catalogue prices them as ``gpt-4o-mini`` in config/models.yaml). Three ways, measured
in the same process one after another:

- **unbatched** (the baseline): a step per run, one request per candidate: the scoring
  instructions plus the candidate;
- **batch_size=10, complete_many**: one call of the step for ten runs, which asks
  ``ctx.llm.complete_many`` for one request per candidate (same requests and tokens as
  the baseline: batching saves step executions here, not provider calls);
- **batch_size=10, one request**: one call of the step for ten runs, which sends the
  instructions once with the ten candidates numbered and reads a JSON list back.

Printed: provider requests, prompt/completion tokens and USD per 1,000 elements, the
wall time, and each way's ratio to the baseline. The fake's answers are canned (the
scores are not the point); the token counts are those of the real prompts.

    .venv/bin/python bench/batching.py [--elements 1000] [--concurrency 8] [--latency-ms 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from config import MODELS_FILE  # noqa: E402
from orchestration import RunStatus, StepContext, Workflow  # noqa: E402
from orchestration.app import Orchestrator  # noqa: E402
from orchestration.llm.catalogue import load_catalogue  # noqa: E402
from orchestration.testing import embedded_orchestrator  # noqa: E402
from tests.fakes.llm_server import FakeLLMServer  # noqa: E402

KEY_ENV = "BENCH_FAKE_LLM_KEY"
PRICED_AS = "gpt-4o-mini"
BATCH = 10
INSTRUCTIONS = (
    "You screen candidates for a senior backend engineer role. The role needs Python, "
    "distributed systems, PostgreSQL, message queues and production on-call experience; "
    "Kubernetes, Go and observability are a plus. Score each candidate from 0 to 10 for "
    "fit, weighting required skills twice as much as the pluses and years of experience "
    "up to eight. Penalise missing required skills, never guess skills that are not "
    "listed, ignore names, schools and anything that is not a skill or experience. Reply "
    "with JSON only: an object with the score and a one-line reason.")
MANY = " For several candidates, reply with a JSON list, one object per candidate, in order."
SKILLS = ["python", "go", "java", "postgresql", "redis", "kafka", "rabbitmq", "celery",
          "kubernetes", "terraform", "aws", "gcp", "prometheus", "grafana", "django",
          "fastapi", "react", "typescript", "spark", "airflow", "on-call", "sre", "grpc"]
ONE_REPLY = {"score": 7, "reason": "most required skills, several years in production"}


def candidates(count: int) -> list[dict[str, Any]]:
    rng = random.Random(15)
    return [{"candidate_id": i, "skills": sorted(rng.sample(SKILLS, rng.randint(4, 9))),
             "years": rng.randint(1, 15)} for i in range(count)]


def one_prompt(candidate: dict[str, Any]) -> str:
    return f"{INSTRUCTIONS}\n\nCandidate: {json.dumps(candidate)}"


def many_prompt(batch: list[dict[str, Any]]) -> str:
    listed = "\n".join(f"{i + 1}. {json.dumps(c)}" for i, c in enumerate(batch))
    return f"{INSTRUCTIONS}{MANY}\n\nCandidates:\n{listed}"


def declare(orch: Orchestrator, wait: float) -> dict[str, Workflow]:
    unbatched = Workflow("bench_batching_unbatched", inputs=["candidate"], app=orch)
    many = Workflow("bench_batching_many", inputs=["candidate"], app=orch)
    single = Workflow("bench_batching_one_request", inputs=["candidate"], app=orch)

    @unbatched.task(name="score", model="scorer")
    def score_one(candidate: dict[str, Any], ctx: StepContext) -> Any:
        return json.loads(ctx.llm.complete(one_prompt(candidate)).text)

    @many.task(name="score", model="scorer", batch_size=BATCH, batch_wait=wait)
    def score_many(candidate: list[dict[str, Any]], ctx: StepContext) -> list[Any]:
        answers = ctx.llm.complete_many([one_prompt(c) for c in candidate])
        return [json.loads(answer.text) for answer in answers]

    @single.task(name="score", model="scorer-batch", batch_size=BATCH, batch_wait=wait)
    def score_batch(candidate: list[dict[str, Any]], ctx: StepContext) -> list[Any]:
        scores = json.loads(ctx.llm.complete(many_prompt(candidate)).text)
        return list(scores[:len(candidate)])

    return {"unbatched": unbatched, f"batch_size={BATCH}, complete_many": many,
            f"batch_size={BATCH}, one request": single}


def measure(flow: Workflow, server: FakeLLMServer, elements: list[dict[str, Any]],
            store: Any) -> dict[str, float]:
    server.reset_stats()
    started = time.perf_counter()
    handles = flow.submit_many([{"candidate": c} for c in elements])
    results = [handle.wait(timeout=600) for handle in handles]
    seconds = time.perf_counter() - started
    bad = [r for r in results if r.status is not RunStatus.SUCCEEDED]
    if bad:
        raise SystemExit(f"{flow.name}: {len(bad)} runs did not succeed: "
                         f"{bad[0].steps['score'].error}")
    requests = sum(s.get("requests", 0) for s in server.stats().values())
    scale = 1000 / len(elements)
    steps = [r.steps["score"] for r in results]
    return {"requests": requests * scale, "usd": sum(s.cost_usd for s in steps) * scale,
            "tokens_in": sum(s.tokens_in for s in steps) * scale,
            "tokens_out": sum(s.tokens_out for s in steps) * scale, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8,
                        help="in-process worker threads per queue")
    parser.add_argument("--batch-wait", type=float, default=0.5)
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="the fake provider's latency per request")
    args = parser.parse_args()
    price = load_catalogue(MODELS_FILE).model(PRICED_AS)
    catalogue = (
        "providers:\n  fake: {kind: openai, base_url: \"URL\", api_key_env: BENCH_FAKE_LLM_KEY}\n"
        "models:\n"
        + "".join(f"  {name}: {{provider: fake, input_cost_per_1k: {price.input_cost_per_1k}, "
                  f"output_cost_per_1k: {price.output_cost_per_1k}}}\n"
                  for name in ("scorer", "scorer-batch"))
        + "default_model: scorer\n")
    os.environ[KEY_ENV] = "sk-bench"
    elements = candidates(args.elements)
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as directory, FakeLLMServer() as server:
        models = Path(directory) / "models.yaml"
        models.write_text(catalogue.replace("URL", server.url))
        server.configure("scorer", reply=json.dumps(ONE_REPLY), latency_ms=args.latency_ms)
        server.configure("scorer-batch", reply=json.dumps([ONE_REPLY] * BATCH),
                         latency_ms=args.latency_ms)
        with embedded_orchestrator(Path(directory), models_file=models, redis_url=None,
                                   embedded_concurrency=args.concurrency) as orch:
            flows = declare(orch, args.batch_wait)
            for label, flow in flows.items():
                rows[label] = measure(flow, server, elements, orch.store)
    base = rows["unbatched"]
    print(f"{args.elements} candidate-scoring elements, each a run on the embedded default; "
          f"fake provider, priced as {PRICED_AS} (${price.input_cost_per_1k}/1k in, "
          f"${price.output_cost_per_1k}/1k out), {args.latency_ms:g} ms per request; "
          f"figures per 1,000 elements")
    print(f"{'':34} {'requests':>9} {'tokens in':>10} {'tokens out':>10} {'USD':>9} "
          f"{'USD ratio':>9} {'wall s':>7}")
    for label, row in rows.items():
        print(f"{label:34} {row['requests']:>9.0f} {row['tokens_in']:>10.0f} "
              f"{row['tokens_out']:>10.0f} {row['usd']:>9.4f} "
              f"{row['usd'] / base['usd']:>8.2f}x {row['seconds']:>7.1f}")


if __name__ == "__main__":
    main()
