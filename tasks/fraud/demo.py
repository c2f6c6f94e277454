"""Demo: the fraud-voting workflow over the shipped sample transactions.

``python -m tasks.fraud.demo --transactions 200``. With no ``ORCH_*`` settings it runs on
the embedded default (in-process worker, SQLite under ./var/). Prints each model's
validation accuracy (its vote weight), the decisions, and how the workflow's merged
probability scores against the labels.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from rich.console import Console
from rich.table import Table

from orchestration import RunHandle
from tasks.fraud.models import MODEL_DESCRIPTIONS, MODEL_KEYS, fraud_model, load_sample_transactions
from tasks.fraud.workflow import fraud


def main(argv: list[str] | None = None) -> int:
    """Run the batch and print the summary; exit 1 if any run did not succeed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=200, help="how many transactions")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait per run")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)

    started = time.perf_counter()
    weights = Table(title="models (trained at first use)")
    for column in ("step", "model", "validation accuracy (vote weight)"):
        weights.add_column(column)
    for key in MODEL_KEYS:
        weights.add_row(f"model_{key}", MODEL_DESCRIPTIONS[key],
                        f"{fraud_model(key).validation_accuracy:.3f}")
    console.print(weights)
    console.print(f"models ready in {time.perf_counter() - started:.1f} s")

    transactions = load_sample_transactions(args.transactions)
    started = time.perf_counter()
    handles: list[RunHandle] = [fraud.submit(transaction=t) for t in transactions]
    results = [h.wait(timeout=args.timeout) for h in handles]
    elapsed = time.perf_counter() - started

    verdicts = [r.outputs.get("aggregate") or {} for r in results]
    decisions = Counter(str(v.get("decision")) for v in verdicts)
    methods = Counter(str(v.get("method")) for v in verdicts)
    hits = sum((float(v.get("fraud_probability") or 0.0) >= 0.5) == bool(t["is_fraud"])
               for v, t in zip(verdicts, transactions, strict=True))
    blocked_fraud = sum(v.get("decision") == "block" and t["is_fraud"]
                        for v, t in zip(verdicts, transactions, strict=True))
    console.print(f"{len(results)} runs in {elapsed:.1f} s; statuses "
                  f"{dict(Counter(str(r.status) for r in results))}")
    console.print(f"decisions {dict(decisions)}; aggregation {dict(methods)}")
    console.print(f"accuracy of the merged probability (>= 0.5 is fraud): "
                  f"{hits / max(1, len(results)):.3f}; fraud blocked "
                  f"{blocked_fraud}/{sum(t['is_fraud'] for t in transactions)}")
    return 0 if all(r.succeeded for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
