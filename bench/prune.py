"""Retention's prune rate on PostgreSQL, alone and while the step hot path writes.

    .venv/bin/python bench/prune.py [--runs 20000] [--admin-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

A fresh database (created on the server of ``--admin-url``, dropped at the end) gets
``--runs`` finished runs of 4 steps with one attempt row each, aged 40 days, written in
bulk. Then, in one run of the bench:

- **alone**: ``prune_runs(older_than=30d)`` deletes half of them (batches of 500 runs,
  one short transaction each); rows deleted per second over every table;
- **under load**: the other half is pruned while 4 writer threads do what workers do for
  each step (``claim_step`` then ``record_step``, a run of 4 steps at a time); the prune
  rate, and the writers' steps per second during the prune against the same writers
  with no prune running (measured just before).

Prints both rates and the ratios. Nothing is timed inside tests; this is the figure.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, insert, text, update  # noqa: E402

from orchestration.core.clock import utcnow  # noqa: E402
from orchestration.core.status import RunStatus, StepStatus  # noqa: E402
from orchestration.store.models import AttemptRow, RunRow, StepRow  # noqa: E402
from orchestration.store.repository import (  # noqa: E402
    AttemptRecord,
    PlannedStep,
    RunFinish,
    StepOutcome,
    Store,
)
from orchestration.submit.retention import prune_runs  # noqa: E402

STEPS = [PlannedStep(f"s{i}", f"s{i}", "default", None, True) for i in range(4)]
WORKFLOW, VERSION = "bench_prune", "v1"


def _populate(store: Store, runs: int) -> list[str]:
    """Finished runs of 4 succeeded steps with one attempt each, 40 days old."""
    ids: list[str] = []
    old = utcnow() - timedelta(days=40)
    for start in range(0, runs, 1000):
        batch = [(str(uuid.uuid4()), {"n": n}) for n in range(start, min(runs, start + 1000))]
        store.create_runs(WORKFLOW, VERSION, batch, STEPS)
        batch_ids = [run_id for run_id, _ in batch]
        with store.engine.begin() as conn:
            conn.execute(update(StepRow).where(StepRow.run_id.in_(batch_ids)).values(
                status=StepStatus.SUCCEEDED.value, output=1, attempts=1, started_at=old,
                finished_at=old))
            conn.execute(update(RunRow).where(RunRow.id.in_(batch_ids)).values(
                status=RunStatus.SUCCEEDED.value, started_at=old, finished_at=old))
            conn.execute(insert(AttemptRow), [
                {"run_id": run_id, "step_name": step.name, "attempt": 1, "status": "succeeded",
                 "started_at": old, "finished_at": old, "latency_ms": 1.0}
                for run_id in batch_ids for step in STEPS])
        ids.extend(batch_ids)
    return ids


def _writer(store: Store, stop: threading.Event, counts: list[int], slot: int) -> None:
    """What a worker writes per step: claim, then record (the last step ends the run)."""
    while not stop.is_set():
        run_id = str(uuid.uuid4())
        store.create_run(run_id, WORKFLOW, VERSION, {"n": 0}, STEPS)
        for index, step in enumerate(STEPS):
            claim = store.claim_step(run_id, step.name, worker="bench", task_id=run_id,
                                     first=index == 0)
            now = utcnow()
            last = index == len(STEPS) - 1
            store.record_step(run_id, step.name, StepOutcome(
                StepStatus.SUCCEEDED, output=index, attempts=[AttemptRecord(
                    1, "succeeded", claim.claimed_at or now, now)]),
                worker="bench", claimed_at=claim.claimed_at,
                finish=RunFinish(RunStatus.SUCCEEDED) if last else None)
            counts[slot] += 1


def _write_rate(store: Store, seconds: float, threads: int = 4) -> float:
    stop, counts = threading.Event(), [0] * threads
    workers = [threading.Thread(target=_writer, args=(store, stop, counts, i))
               for i in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts) / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--admin-url",
                        default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args(argv)
    name = f"orch_bench_prune_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    store = Store(url)
    try:
        store.ensure_schema()
        started = time.perf_counter()
        ids = _populate(store, args.runs)
        print(f"{len(ids)} finished runs (4 steps, 4 attempts each) written in "
              f"{time.perf_counter() - started:.1f} s")
        host = SimpleNamespace(store=store, settings=SimpleNamespace(retention=None),
                               workflows={})
        half = len(ids) // 2
        # Alone: the older half (move the newer half forward so a cutoff splits them).
        with store.engine.begin() as conn:
            conn.execute(update(RunRow).where(RunRow.id.in_(ids[half:]))
                         .values(finished_at=utcnow() - timedelta(days=35)))
        started = time.perf_counter()
        alone = prune_runs(host, older_than=38 * 86400)  # type: ignore[arg-type]
        alone_s = time.perf_counter() - started
        # The writers alone, then the writers while the rest is pruned.
        calm = _write_rate(store, 5.0)
        stop, counts = threading.Event(), [0] * 4
        writers = [threading.Thread(target=_writer, args=(store, stop, counts, i))
                   for i in range(4)]
        for writer in writers:
            writer.start()
        time.sleep(0.5)
        started = time.perf_counter()
        before = sum(counts)
        loaded = prune_runs(host, older_than=30 * 86400)  # type: ignore[arg-type]
        loaded_s = time.perf_counter() - started
        during = (sum(counts) - before) / loaded_s
        stop.set()
        for writer in writers:
            writer.join()
        print(f"\nprune alone      : {len(alone.runs)} runs, {alone.total} rows in "
              f"{alone_s:.2f} s = {alone.total / alone_s:,.0f} rows/s "
              f"({len(alone.runs) / alone_s:,.0f} runs/s)")
        print(f"prune under load : {len(loaded.runs)} runs, {loaded.total} rows in "
              f"{loaded_s:.2f} s = {loaded.total / loaded_s:,.0f} rows/s "
              f"({len(loaded.runs) / loaded_s:,.0f} runs/s); ratio to alone "
              f"{(loaded.total / loaded_s) / (alone.total / alone_s):.2f}x")
        print(f"writers (4 threads, claim+record per step): {calm:,.0f} steps/s alone, "
              f"{during:,.0f} steps/s during the prune ({during / calm:.2f}x)")
        print(f"rows per table (alone): {dict(sorted(alone.rows.items()))}")
        return 0
    finally:
        store.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
