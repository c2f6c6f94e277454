"""Where a single ``submit`` spends its time, against raw Celery's publish of the same shape.

    python bench/submit_cost.py [--count 1000] [--reps 5] [--database URL]

The single-submit row of ``bench/perf.py`` compares ``perf_linear.submit(x=i)`` (one run
row with its four step rows, then one fused message) with raw Celery's
``chain(noop.s(x), noop.s(), noop.s(), noop.s()).apply_async()``. This times the parts
of the engine's submit one by one, in one process, with no worker running (the queues
are purged afterwards), and the ways of publishing the same message Celery offers:

- ``Signature.apply_async()``: what ``submit`` does (``Celery.send_task``: routing,
  options, a producer from the pool, then ``amqp.send_task_message``);
- ``Celery.send_task`` with a producer kept across publishes;
- ``amqp.create_task_message`` + ``amqp.send_task_message`` on a kept producer: Celery's
  own publish without ``send_task``'s routing and options (the ``before/after_task_publish``
  signals and the task-sent event are sent by ``send_task_message``), with and without
  the task-sent event (``task_send_sent_event``; a second Redis round trip).

Median of ``--reps`` passes of ``--count`` calls each, in microseconds per call. Redis DB
14 (the bench's); a temporary SQLite results DB unless ``--database`` (PostgreSQL: a
fresh schema, dropped at the end).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import perf  # noqa: E402 - after the sys.path fix
from bench.providers import write_catalogue  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--database", default=None)
    return parser.parse_args()


def timed(label: str, fn: Callable[[int], Any], count: int, reps: int) -> float:
    passes = []
    for _ in range(reps):
        began = time.perf_counter()
        for i in range(count):
            fn(i)
        passes.append((time.perf_counter() - began) / count * 1e6)
    median = statistics.median(passes)
    print(f"  {label:<68}{median:>9.1f} us  ({min(passes):.1f}-{max(passes):.1f})", flush=True)
    return median


def measure(count: int, reps: int) -> None:
    from bench import perf_workflows as pw
    from bench.raw_celery import linear_canvas
    from orchestration import default_orchestrator
    from orchestration.submit import submission

    orchestrator = default_orchestrator()
    orchestrator.store.ensure_schema()
    flow = pw.perf_linear
    compiled = flow.validate()
    planned = submission.planned(compiled)
    app = orchestrator.celery
    for i in range(200):  # warm-up: connections, compiled statements, the workflow
        flow.submit(x=i)
        linear_canvas(i).apply_async()
    perf.purge_queues()
    signature = submission.canvas(orchestrator, flow, str(uuid.uuid4()), {"x": 1})
    name, args, kwargs = signature.task, signature.args, signature.kwargs
    options = dict(signature.options)
    print(f"{count} calls x {reps} passes, median (min-max) per call; "
          f"results DB {orchestrator.store.url.split(':')[0]}")
    raw = timed("raw Celery: chain of 4 .apply_async() (the row's baseline)",
                lambda i: linear_canvas(i).apply_async(), count, reps)
    whole = timed("engine: perf_linear.submit(x=i), whole",
                  lambda i: flow.submit(x=i), count, reps)
    perf.purge_queues()
    row = timed("  Store.create_run: run row + 4 step rows, committed",
                lambda i: orchestrator.store.create_run(
                    str(uuid.uuid4()), flow.name, compiled.version, {"x": i}, planned),
                count, reps)
    timed("  submission.canvas: envelope + signature, no I/O",
          lambda i: submission.canvas(orchestrator, flow, str(uuid.uuid4()), {"x": i}),
          count, reps)
    publish = timed("  Signature.apply_async() of the fused message (what submit does)",
                    lambda i: signature.apply_async(), count, reps)
    perf.purge_queues()
    amqp = app.amqp
    with app.producer_or_acquire() as producer:
        timed("    Celery.send_task on a kept producer",
              lambda i: app.send_task(name, args, kwargs, producer=producer, **options),
              count, reps)

        def lean(i: int) -> None:
            message = amqp.create_task_message(
                str(uuid.uuid4()), name, args, kwargs, reply_to=app.thread_oid,
                create_sent_event=app.conf.task_send_sent_event, ignore_result=True)
            amqp.send_task_message(producer, name, message, queue=options["queue"],
                                   priority=options.get("priority"))

        timed("    create_task_message + send_task_message, kept producer", lean, count,
              reps)
        sent_event = app.conf.task_send_sent_event
        app.conf.task_send_sent_event = False
        try:
            timed("      the same without the task-sent event", lean, count, reps)
        finally:
            app.conf.task_send_sent_event = sent_event
    perf.purge_queues()
    print(f"engine / raw: {raw / whole:.2f}x the raw rate; the run row alone is "
          f"{row / raw:.0%} of raw's whole publish, the engine's publish {publish / raw:.0%}")


def main() -> int:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="orch-submit-cost-"))
    cleanups = []
    try:
        catalogue = tmp / "models.yaml"
        write_catalogue(catalogue, "http://127.0.0.1:9", fallback=False)  # never called
        database = args.database or f"sqlite:///{tmp / 'submit.db'}"
        if database.startswith("postgresql"):
            from bench.overhead import isolated_postgres

            database, drop = isolated_postgres(database)
            cleanups.append(drop)
        perf.environment(tmp, catalogue, database, "http://127.0.0.1:9")
        perf.flush_bench_db(perf.REDIS_URL)
        measure(args.count, args.reps)
        return 0
    finally:
        from orchestration import default_orchestrator

        default_orchestrator().reset_store()
        for cleanup in cleanups:
            cleanup()
        perf.flush_bench_db(perf.REDIS_URL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
