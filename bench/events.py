"""Events per second from ``emit`` to a recorded run, beside plain ``submit`` (and webhooks).

``emit(name, payload, event_id=...)`` does what ``submit`` does (validate, write the run
row, publish) plus finding the triggers, mapping the payload, the idempotency key's
unique check and one events row. This measures what that costs: the same workflow
(``bench/webhook_workflows.py``, whose trigger maps ``$.ticket.id`` and
``$.ticket.description``) is started by ``submit`` and by ``emit`` (each a new event id)
from this process, with the same client threads, against the same results database and
broker, in alternating rounds (submit, emit, [webhook], submit, ...). With ``--webhook``
a real ``orchestrate serve`` also takes HMAC-signed ``POST /events`` deliveries (the row
of ``bench/webhooks.py``). A run counts when its row is written and its message
published: no worker consumes the queue. Every run and every ``started`` event is
checked in the database at the end. Prints each rate's median and the ratios to submit.

    .venv/bin/python bench/events.py [--events 1000] [--concurrency 8] [--rounds 3]
        [--webhook] [--admin-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
        [--broker redis://127.0.0.1:6379/13]

The database is a fresh PostgreSQL database created on the server of ``--admin-url`` and
dropped at the end; of the broker's Redis DB only the bench's queue keys are deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.webhooks import (  # noqa: E402 - needs the sys.path fix
    SECRET,
    _drop_queue,
    _rate,
    fresh_database,
    served,
    submit_rate,
    webhook_rate,
)
from orchestration import default_orchestrator, emit  # noqa: E402

WARM_UP = 50
LABELS = {"submit": "submit (this process)", "emit": "emit -> recorded run",
          "webhook": "POST /events -> recorded run"}


def emit_rate(event: str, count: int, concurrency: int) -> float:
    """``emit`` calls per second, each a new event id that must come back ``started``."""

    def one(index: int) -> None:
        [outcome] = emit(event, {"ticket": {"id": index, "description": "cannot log in"}},
                         event_id=f"bench-{uuid.uuid4()}")
        if not outcome.started:
            raise SystemExit(f"emit did not start a run: {outcome}")

    return _rate(count, concurrency, one)


def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    """Rates per round of each path (events or runs per second to a recorded run)."""
    with fresh_database(args.admin_url) as database, \
            tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        env = {key: value for key, value in os.environ.items()
               if key not in ("ORCH_SERVE_TOKEN", "ORCH_RESULT_BACKEND")}
        env.update({"ORCH_DATABASE_URL": database, "ORCH_BROKER_URL": args.broker,
                    "ORCH_RESULT_BACKEND": args.broker, "ORCH_DEPLOYMENT": "",
                    "ORCH_IMPORTS": "bench.webhook_workflows", "ORCH_WEBHOOK_SECRET": SECRET,
                    "ORCH_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)})
        os.environ.update(env)  # this process's default orchestrator: the same deployment
        # Imported once the environment names the deployment: it declares the workflow.
        from bench.webhook_workflows import EVENT, QUEUE, ticket

        store = default_orchestrator().store
        paths = ["submit", "emit"] + (["webhook"] if args.webhook else [])
        rates: dict[str, list[float]] = {path: [] for path in paths}
        warm = min(WARM_UP, args.events)
        try:
            with contextlib.ExitStack() as stack:
                url = stack.enter_context(served(env, Path(tmp) / "serve.log")) \
                    if args.webhook else ""
                run = _runners(args, EVENT, ticket, url)
                for path in paths:
                    run[path](warm)
                for _ in range(args.rounds):
                    for path in paths:
                        rates[path].append(run[path](args.events))
            per_path = warm + args.rounds * args.events
            recorded = len(store.list_runs(workflow=ticket.name,
                                           limit=len(paths) * per_path + 10))
            if recorded != len(paths) * per_path:
                raise SystemExit(f"{recorded} runs recorded, expected {len(paths) * per_path}")
            started = store.events.count(name=EVENT, outcome="started")
            if started != (len(paths) - 1) * per_path:
                raise SystemExit(f"{started} started events recorded, expected "
                                 f"{(len(paths) - 1) * per_path}")
        finally:
            default_orchestrator().shutdown()
            _drop_queue(args.broker, QUEUE)
        return rates


def _runners(args: argparse.Namespace, event: str, workflow: Any, url: str) -> dict[str, Any]:
    return {
        "submit": lambda count: submit_rate(workflow, count, args.concurrency),
        "emit": lambda count: emit_rate(event, count, args.concurrency),
        "webhook": lambda count: webhook_rate(url, event, count, args.concurrency),
    }


def report(args: argparse.Namespace, rates: dict[str, list[float]]) -> None:
    """Median rates and each path's ratio to ``submit``."""
    print(f"{args.events} runs per round and path, {args.rounds} rounds, {args.concurrency} "
          f"client threads, load average {os.getloadavg()[0]:.2f}")
    print(f"{'path':<38}{'median /s':>10}   rounds")
    for path, values in rates.items():
        rounds = ", ".join(f"{rate:.0f}" for rate in values)
        print(f"{LABELS[path]:<38}{statistics.median(values):>10.0f}   {rounds}")
    submit = statistics.median(rates["submit"])
    for path in rates:
        if path != "submit":
            print(f"ratio {path}/submit: {statistics.median(rates[path]) / submit:.2f}x")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1000, help="runs per round and path")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--webhook", action="store_true",
                        help="also measure POST /events through orchestrate serve")
    parser.add_argument("--admin-url", default=os.environ.get(
        "ORCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/13")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure and print."""
    args = parse_args(argv)
    report(args, measure(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
