"""Cost per 1,000 support tickets: a cost-aware model route against always the strongest model.

Each shipped sample ticket (tasks/support/data/sample_tickets.jsonl, 600 tickets the
classifier never trained on) is classified twice on the embedded default, with the shipped
catalogue (config/models.yaml):

- **route**: a step with ``model="support-tiered"`` (tiers local-small -> gpt-4o-mini ->
  gpt-4o, min_confidence 0.7): the engine starts it on local-small and escalates when the
  tier's confidence is below 0.7;
- **strongest**: the same step with ``model="gpt-4o"`` on every ticket.

What is real and what is simulated, plainly:

- REAL: the engine (each ticket is a run; the escalations, attempts and the costs summed
  on each step are the engine's, read back from the results DB); the local-small tier,
  which is the shipped classifier (tasks/support/models.py: TF-IDF + calibrated linear
  SVM) with its own calibrated probability as the confidence it reports; the prices (the
  catalogue's, per 1k tokens) and the token estimate of each prompt (the catalogue's
  estimator for the model, on the real prompt text).
- SIMULATED: no API model is called (no keys, no network). gpt-4o-mini and gpt-4o answer
  with the shipped label with an ASSUMED probability (``--mini-accuracy``, default 0.90;
  ``--strong-accuracy``, default 0.95; drawn deterministically per ticket and model),
  otherwise with another category; they report confidence 0.9, so the route never climbs
  past the first API tier it reaches. Their completions are taken as 12 tokens. The step
  records each simulated call's cost with ``ctx.record_cost``.

So the cost ratio depends on the real share of tickets the local classifier is sure of and
on the catalogue's prices; the quality of the API tiers is an assumption, shown beside
the measured quality of the local tier.

    .venv/bin/python bench/routing.py [--limit N] [--mini-accuracy 0.9] [--strong-accuracy 0.95]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from config import MODELS_FILE  # noqa: E402
from orchestration import RunStatus, StepContext, Workflow  # noqa: E402
from orchestration.app import Orchestrator  # noqa: E402
from orchestration.llm.catalogue import Catalogue, load_catalogue  # noqa: E402
from orchestration.llm.tokens import TokenCounter  # noqa: E402
from orchestration.testing import embedded_orchestrator  # noqa: E402
from tasks.support.models import load_sample_tickets, predict_category  # noqa: E402

ROUTE, STRONGEST, LOCAL = "support-tiered", "gpt-4o", "local-small"
PROMPT = ("Classify this support ticket into one of: {labels}. Reply with JSON "
          '{{"label": ..., "confidence": ...}}.\n\n{text}')
COMPLETION_TOKENS = 12
API_CONFIDENCE = 0.9  # what a simulated API tier reports (above the route's 0.7)


class Models:
    """The tiers' answers: the real local classifier, simulated API models (see above)."""

    def __init__(self, catalogue: Catalogue, labels: list[str],
                 accuracy: dict[str, float]) -> None:
        self.catalogue = catalogue
        self.labels = labels
        self.accuracy = accuracy

    def answer(self, model: str, ticket: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """({label, confidence}, the call's cost in USD at the catalogue's prices)."""
        config = self.catalogue.model(model)
        prompt = PROMPT.format(labels=", ".join(self.labels), text=ticket["text"])
        tokens = TokenCounter(config.tokens).count_messages([{"role": "user",
                                                               "content": prompt}])
        cost = config.cost(tokens, COMPLETION_TOKENS)
        if model == LOCAL:
            prediction = predict_category(ticket["text"])
            return {"label": prediction.label, "confidence": prediction.confidence}, cost
        right = _draw(model, ticket["ticket_id"]) < self.accuracy[model]
        label = ticket["category"] if right else self._wrong(ticket)
        return {"label": label, "confidence": API_CONFIDENCE}, cost

    def _wrong(self, ticket: dict[str, Any]) -> str:
        others = [label for label in self.labels if label != ticket["category"]]
        return others[int(_draw("wrong", ticket["ticket_id"]) * len(others))]


def _draw(salt: str, ticket_id: int) -> float:
    digest = hashlib.sha256(f"{salt}:{ticket_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def declare(orch: Orchestrator, models: Models,
            tickets: dict[int, dict[str, Any]]) -> dict[str, Workflow]:
    flows: dict[str, Workflow] = {}
    for key, model in (("route", ROUTE), ("strongest", STRONGEST)):
        flow = Workflow(f"bench_routing_{key}", inputs=["ticket_id"], app=orch)

        def classify(ticket_id: int, ctx: StepContext) -> dict[str, Any]:
            assert ctx.model is not None
            answer, cost = models.answer(ctx.model, tickets[ticket_id])
            ctx.record_cost(cost, model=ctx.model)
            return answer

        flow.task(name="classify", model=model)(classify)
        flows[key] = flow
    return flows


def measure(flow: Workflow, tickets: dict[int, dict[str, Any]]) -> dict[str, Any]:
    cost, agree, attempts = 0.0, 0, 0
    final: Counter[str] = Counter()
    right: Counter[str] = Counter()  # agreement by the model that answered
    started = time.perf_counter()
    for ticket_id, ticket in tickets.items():
        result = flow.run(ticket_id=ticket_id, timeout=60)
        if result.status is not RunStatus.SUCCEEDED:
            raise SystemExit(f"ticket {ticket_id}: run {result.status}: "
                             f"{result.steps['classify'].error}")
        step = result.steps["classify"]
        cost += step.cost_usd
        attempts += step.attempts
        final[step.model or "?"] += 1
        agree += step.output["label"] == ticket["category"]
        right[step.model or "?"] += step.output["label"] == ticket["category"]
    n = len(tickets)
    return {"per_1000": cost / n * 1000, "agreement": agree / n, "attempts": attempts / n,
            "final": final, "right": right, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="tickets (default: all 600)")
    parser.add_argument("--mini-accuracy", type=float, default=0.90,
                        help="ASSUMED agreement of the simulated gpt-4o-mini")
    parser.add_argument("--strong-accuracy", type=float, default=0.95,
                        help="ASSUMED agreement of the simulated gpt-4o")
    args = parser.parse_args()
    catalogue = load_catalogue(MODELS_FILE)
    route = catalogue.route(ROUTE)
    assert route is not None, f"{MODELS_FILE} has no route {ROUTE!r}"
    tickets = {t["ticket_id"]: t for t in load_sample_tickets(args.limit)}
    labels = sorted({t["category"] for t in tickets.values()})
    models = Models(catalogue, labels, {"gpt-4o-mini": args.mini_accuracy,
                                        "gpt-4o": args.strong_accuracy})
    predict_category("warm up")  # trains the local classifier once, outside the timing
    with tempfile.TemporaryDirectory() as directory, \
            embedded_orchestrator(Path(directory), models_file=MODELS_FILE,
                                  redis_url=None) as orch:
        flows = declare(orch, models, tickets)
        results = {key: measure(flow, tickets) for key, flow in flows.items()}
    print(f"{len(tickets)} shipped sample tickets, route {ROUTE}: tiers "
          f"{' -> '.join(route.tiers)}, min_confidence {route.min_confidence}")
    print(f"SIMULATED API tiers: gpt-4o-mini agreement {args.mini_accuracy:.2f}, gpt-4o "
          f"{args.strong_accuracy:.2f} (assumed); local-small is the real shipped classifier\n")
    print(f"{'':10} {'USD / 1,000 tickets':>20} {'agreement':>10} {'attempts/ticket':>16}  "
          "answered by")
    for key, row in results.items():
        shares = ", ".join(f"{model} {count / len(tickets):.0%}"
                           for model, count in row["final"].most_common())
        print(f"{key:10} {row['per_1000']:>20.4f} {row['agreement']:>10.1%} "
              f"{row['attempts']:>16.2f}  {shares}")
    ratio = results["route"]["per_1000"] / results["strongest"]["per_1000"]
    print(f"\nroute / strongest cost: {ratio:.3f} ({1 - ratio:.0%} saved); agreement "
          f"{results['route']['agreement']:.1%} vs {results['strongest']['agreement']:.1%}")
    local_kept = results["route"]["final"].get(LOCAL, 0)
    local_right = results["route"]["right"].get(LOCAL, 0)
    print(f"kept on local-small (confidence >= {route.min_confidence}): {local_kept} of "
          f"{len(tickets)}, agreeing on {local_right} ({local_right / max(1, local_kept):.1%}) "
          "(measured, not simulated)")


if __name__ == "__main__":
    main()
