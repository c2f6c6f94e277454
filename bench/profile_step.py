"""Where the engine's per-step time goes, in-process: cProfile of the step path on SQLite.

    python bench/profile_step.py [--runs 300] [--database URL] [--top 25]

No broker and no worker: each run is created with ``Store.create_run`` (what ``submit``
writes) and its four steps are executed with ``orchestration.execute.runtime.run_step`` exactly as a
worker would (same BoundStep, envelope, Delivery), the last one finalising the run; then
the client side of ``handle.wait`` (``run_status`` + ``get_run``) is called once per run.
Prints the time per step of the main parts, the top functions, and micro-benchmarks
of the store's transaction pattern (NullPool: one new SQLite connection + 4 PRAGMAs per
transaction) against the same statements on a pooled connection.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.experiments import EXPERIMENTS  # noqa: E402 - after the sys.path fix


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--database", default=None, help="results DB URL (default: temp SQLite)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--experiment", choices=EXPERIMENTS, default=None,
                        help="apply a what-if patch from bench/experiments.py first")
    return parser.parse_args()


def one_run(workflow: Any, store: Any, delivery: Any, x: int) -> str:
    """Create a run and execute its steps in plan order, as the worker would."""
    from orchestration.core.envelope import Envelope
    from orchestration.execute.runtime import run_step
    from orchestration.store.repository import PlannedStep

    compiled = workflow.validate()
    run_id = str(uuid.uuid4())
    planned = [PlannedStep(name, bound.spec.output, bound.queue, bound.spec.model,
                           bound.spec.critical) for name, bound in compiled.steps.items()]
    store.create_run(run_id, workflow.name, compiled.version, {"x": x}, planned)
    message: Any = Envelope.for_inputs(run_id, {"x": x}, delivery.inline_limit).to_message()
    names = list(compiled.steps)
    for index, name in enumerate(names):
        message = run_step(compiled.steps[name], message, store, delivery,
                           finalize=index == len(names) - 1)
    return run_id


def client_wait(store: Any, run_id: str) -> None:
    """What ``handle.wait`` does once the run is terminal: one status read, one full read."""
    if store.run_status(run_id).is_terminal:
        store.get_run(run_id)


PARTS = [
    # (label, (file suffix, function name))
    ("run_step (whole step, incl. below)", ("orchestration/runtime.py", "run_step")),
    ("  Store.claim_step", ("orchestration/store/repository.py", "claim_step")),
    ("  _execute (policies + call)", ("orchestration/runtime.py", "_execute")),
    ("    tenacity Retrying(...)()", ("tenacity/__init__.py", "__call__")),
    ("  Store.record_step", ("orchestration/store/repository.py", "record_step")),
    ("  finalize_run (last step only)", ("orchestration/runtime.py", "finalize_run")),
    ("Store.create_run (submit)", ("orchestration/store/repository.py", "create_run")),
    ("Store.run_status (wait poll)", ("orchestration/store/repository.py", "run_status")),
    ("Store.get_run (wait result)", ("orchestration/store/repository.py", "get_run")),
    ("SQLite connect (NullPool, per tx)", ("sqlalchemy/engine/create.py", "connect")),
    ("  PRAGMAs on connect (_on_connect)", ("orchestration/store/engine.py", "_on_connect")),
]


def part_times(stats: pstats.Stats) -> dict[tuple[str, str], tuple[int, float]]:
    found: dict[tuple[str, str], tuple[int, float]] = {}
    wanted = {key for _, key in PARTS}
    for (filename, _line, function), (_cc, calls, _tt, cum, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        for suffix, name in wanted:
            if function == name and filename.endswith(suffix):
                prev = found.get((suffix, name), (0, 0.0))
                found[(suffix, name)] = (prev[0] + calls, prev[1] + cum)
    return found


def micro(store: Any, repeats: int = 1000) -> list[tuple[str, float]]:
    """Cost of one small write transaction: the store's engines vs a pooled connection.

    The UPDATE touches a real step row (so commits write a page, as claim/record do).
    """
    from sqlalchemy import bindparam, select, update

    from bench.experiments import _pooled_sqlite_engine
    from orchestration.store.models import StepRow

    rows: list[tuple[str, float]] = []
    with store._reader.connect() as conn:
        run_id, name = conn.execute(select(StepRow.run_id, StepRow.name).limit(1)).one()
    stmt = (update(StepRow).where(StepRow.run_id == run_id, StepRow.name == name)
            .values(deliveries=StepRow.deliveries + 1))

    def timed(label: str, fn: Any) -> None:
        for _ in range(50):
            fn()
        began = time.perf_counter()
        for _ in range(repeats):
            fn()
        rows.append((label, (time.perf_counter() - began) / repeats))

    def tx_on(engine: Any) -> Any:
        def tx() -> None:
            with engine.begin() as conn:
                conn.execute(stmt)
        return tx

    timed("store writer engine: begin + 1 UPDATE + commit (claim/record pattern)",
          tx_on(store._writer))
    timed("store reader engine: connect + 1 SELECT (run_status pattern)",
          lambda: store.run_status(run_id))
    timed("store writer engine: connect + close only", lambda: store._writer.connect().close())
    if store._writer.dialect.name == "sqlite":
        pooled = _pooled_sqlite_engine(store.url, immediate=True)
        timed("pooled SQLite engine (same PRAGMAs, once): begin + 1 UPDATE + commit",
              tx_on(pooled))

        def claim_like_per_call() -> None:  # the shape of claim_step's main statement
            with pooled.begin() as conn:
                conn.execute(
                    update(StepRow)
                    .where(StepRow.run_id == run_id, StepRow.name == name,
                           StepRow.status.in_(["pending", "running", "retrying"]))
                    .values(deliveries=StepRow.deliveries + 1, worker="w", celery_task_id="t")
                    .returning(StepRow.attempts)).first()

        steps = StepRow.__table__
        prebuilt = (update(steps)
                    .where(steps.c.run_id == bindparam("r"), steps.c.name == bindparam("n"),
                           steps.c.status.in_(["pending", "running", "retrying"]))
                    .values(deliveries=steps.c.deliveries + 1, worker=bindparam("w"),
                            celery_task_id=bindparam("t"))
                    .returning(steps.c.attempts))

        def claim_like_prebuilt() -> None:
            with pooled.begin() as conn:
                conn.execute(prebuilt, {"r": run_id, "n": name, "w": "w", "t": "t"}).first()

        timed("pooled: claim-shaped ORM UPDATE built per call (as the store does)",
              claim_like_per_call)
        timed("pooled: same UPDATE prebuilt once on the Core table, bindparams",
              claim_like_prebuilt)
        driver = pooled.raw_connection()
        sql = "UPDATE steps SET deliveries = deliveries + 1 WHERE run_id = ? AND name = ?"

        def driver_tx() -> None:
            cursor = driver.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute(sql, (run_id, name))
            cursor.execute("COMMIT")
            cursor.close()

        timed("sqlite3 driver on one kept connection: 1-UPDATE transaction", driver_tx)
        driver.close()
        pooled.dispose()

    def build_claim() -> None:
        (update(StepRow).where(StepRow.run_id == "r", StepRow.name == "n",
                               StepRow.status.in_(["pending", "running", "retrying"]))
         .values(status="running", worker="w", celery_task_id="t",
                 deliveries=StepRow.deliveries + 1).returning(StepRow.attempts))

    timed("build claim_step's UPDATE statement object only (no I/O)", build_claim)
    return rows


def main() -> int:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="orch-profile-"))
    os.environ.pop("ORCH_BROKER_URL", None)
    os.environ.pop("ORCH_RESULT_BACKEND", None)
    cleanups = []
    try:
        database = args.database or f"sqlite:///{tmp / 'profile.db'}"
        if database.startswith("postgresql"):  # a fresh schema of its own, dropped at the end
            from bench.overhead import isolated_postgres

            database, drop_schema = isolated_postgres(database)
            cleanups.append(drop_schema)
        os.environ["ORCH_DATABASE_URL"] = database
        if args.experiment:
            from bench import experiments

            experiments.apply(args.experiment)
            print(f"EXPERIMENT {args.experiment}: engine patched in-process by "
                  "bench/experiments.py (not the engine as shipped)")
        from bench.workflows import linear
        from orchestration import default_orchestrator
        from orchestration.execute.runtime import Delivery

        orchestrator = default_orchestrator()
        store = orchestrator.store
        store.ensure_schema()
        settings = orchestrator.settings
        delivery = Delivery(worker="profile@local", task_id="t-1",
                            inline_limit=settings.inline_output_limit,
                            inline_retry_limit=settings.inline_retry_limit)
        for i in range(20):  # warm-up: compile caches, schema check
            client_wait(store, one_run(linear, store, delivery, i))

        began = time.perf_counter()
        for i in range(args.runs):
            client_wait(store, one_run(linear, store, delivery, i))
        plain = (time.perf_counter() - began) / args.runs

        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(args.runs):
            client_wait(store, one_run(linear, store, delivery, i))
        profiler.disable()

        steps = 4 * args.runs
        stats = pstats.Stats(profiler)
        total = stats.total_tt  # type: ignore[attr-defined]
        print(f"database: {store._redacted_url()}")
        print(f"unprofiled: {plain * 1000:.2f} ms per 4-step run "
              f"(create_run + 4 x run_step + finalize + status/get_run), "
              f"{plain / 4 * 1000:.2f} ms per step")
        print(f"profiled:   {total / args.runs * 1000:.2f} ms per run under cProfile "
              "(cProfile inflates Python-heavy code; compare parts by share)")
        print()
        print(f"{'part':<42}{'calls/run':>10}{'ms/run':>9}{'share':>8}")
        found = part_times(stats)
        for label, key in PARTS:
            calls, cum = found.get(key, (0, 0.0))
            print(f"{label:<42}{calls / args.runs:>10.1f}{cum / args.runs * 1000:>9.3f}"
                  f"{cum / total * 100:>7.1f}%")
        print(f"(per step = ms/run / 4; {steps} steps profiled)")
        for sort in ("tottime", "cumulative"):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(sort).print_stats(args.top)
            text = out.getvalue()
            print(f"\n== top {args.top} by {sort} ==")
            print(text[text.find("   ncalls"):].rstrip())
        print("\n== micro-benchmarks (per call) ==")
        for label, seconds in micro(store):
            print(f"  {seconds * 1e6:8.1f} us  {label}")
        orchestrator.shutdown()
        return 0
    finally:
        for cleanup in cleanups:
            cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
