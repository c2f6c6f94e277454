"""The claim transaction: the shipped statement against the one before liveness checks.

Every step delivery claims its step in one transaction. Since worker heartbeats, the
claim also refuses a step whose run was cancelled and one a live worker holds under
another message (two subqueries). This measures what that adds, on SQLite and (with
``--database``) PostgreSQL: both statements take turns over rounds of fresh runs in the
same process, and the report prints the medians and their ratio.

    .venv/bin/python bench/claim.py [--runs 3000] [--database postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import bindparam, case, func, update  # noqa: E402

from orchestration.core.status import StepStatus  # noqa: E402
from orchestration.store import statements as sql  # noqa: E402
from orchestration.store.repository import PlannedStep, Store  # noqa: E402

ROUNDS = 8
STEPS = sql.steps
RUNNING = StepStatus.RUNNING.value

#: The claim as it was before worker liveness: no cancelled-run or live-holder check.
BEFORE = (
    update(STEPS)
    .where(STEPS.c.run_id == bindparam("b_run"), STEPS.c.name == bindparam("b_name"),
           STEPS.c.status.in_(sql.CLAIMABLE))
    .values(status=RUNNING, worker=bindparam("b_worker"), celery_task_id=bindparam("b_task"),
            deliveries=STEPS.c.deliveries + 1,
            started_at=func.coalesce(STEPS.c.started_at, bindparam("b_now")),
            crashes=STEPS.c.crashes + case(
                ((STEPS.c.status == RUNNING) & (STEPS.c.celery_task_id == bindparam("b_task")),
                 1), else_=0))
    .returning(STEPS.c.attempts, STEPS.c.started_at, STEPS.c.cost_usd, STEPS.c.crashes)
)


def _claims(store: Store, statement: Any, run_ids: list[str], extra: dict[str, Any]) -> float:
    """Microseconds per claim transaction over these runs."""
    now = datetime.now(UTC)
    started = time.perf_counter()
    for run_id in run_ids:
        with store.engine.begin() as conn:
            conn.execute(statement, {"b_run": run_id, "b_name": "a", "b_worker": "w",
                                     "b_task": "t", "b_now": now, **extra}).first()
    return (time.perf_counter() - started) / len(run_ids) * 1e6


def measure(url: str, runs: int) -> tuple[float, float]:
    """(median µs before, median µs now) of the claim transaction on ``url``."""
    store = Store(url)
    store.ensure_schema()
    run_ids = [str(uuid.uuid4()) for _ in range(runs)]
    for run_id in run_ids:
        store.create_run(run_id, "bench_claim", "v1", {}, [PlannedStep("a", "a", "q", None,
                                                                        True)])
    now_extra = {"b_holder": "bench", "b_released": -1,
                 "b_alive_since": datetime.now(UTC) - timedelta(seconds=20)}
    before: list[float] = []
    after: list[float] = []
    for index in range(ROUNDS):
        chunk = run_ids[index::ROUNDS]
        if index % 2 == 0:
            before.append(_claims(store, BEFORE, chunk, {}))
        else:
            after.append(_claims(store, sql.CLAIM_STEP, chunk, now_extra))
    store.dispose()
    return statistics.median(before), statistics.median(after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--database", default=None,
                        help="also measure on this (empty, throw-away) PostgreSQL database")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        targets = [("SQLite", f"sqlite:///{directory}/claim.db")]
        if args.database:
            targets.append(("PostgreSQL", args.database))
        print(f"claim transaction, {args.runs} runs, {ROUNDS} alternating rounds (median µs)")
        for label, url in targets:
            before, now = measure(url, args.runs)
            print(f"{label:<11} before liveness {before:7.0f}   now {now:7.0f}   "
                  f"ratio {now / before:.2f}x")


if __name__ == "__main__":
    main()
