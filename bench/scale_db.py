"""A results DB at millions of runs: generate it, time the operator's queries on it, before
and after the indexes of migration 0018, with their plans, and the write cost of those
indexes on the step hot path.

    .venv/bin/python bench/scale_db.py                     # PostgreSQL, 1,000,000 runs
    .venv/bin/python bench/scale_db.py --runs 100000 --reps 10
    .venv/bin/python bench/scale_db.py --sqlite            # SQLite, 100,000 runs

PostgreSQL: a database of its own (``--db``, default ``orch_scale``) on 127.0.0.1:5432
(user postgres, trust auth), created fresh (dropped first if it exists) and dropped at the
end unless ``--keep``; the schema comes from the project's migrations, the rows go in with
COPY (synchronous_commit off, secondary indexes and keys built after the load), then
VACUUM ANALYZE. Each run has 4 steps and 1-3 attempts per step that ran (bench/scale_data.py).
Passes: "before" (0018's index change undone, and the
reconciler's scan and workflow list as shipped before), "after" (built), each query's p50/p95 over
``--reps`` calls and its plans (bench/results/scale_plans_<before|after>.txt), then the
step hot path (create run; claim + record each step) with and without the new indexes,
rounds alternating. ``--skip-before`` / ``--skip-writes`` leave passes out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench.scale_data import (  # noqa: E402
    ATTEMPT_COLUMNS,
    RUN_COLUMNS,
    STEP_COLUMNS,
    WORKFLOWS,
    Counts,
    Generator,
)
from bench.scale_queries import (  # noqa: E402
    explain,
    p50_p95,
    queries,
    set_new_indexes,
    time_queries,
    write_cost,
)
from orchestration.store.repository import Store  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SERVER = "host=127.0.0.1 port=5432 user=postgres"
REFUSED = {"test", "postgres", "template0", "template1", "root"}
TABLES = ("runs", "steps", "step_attempts")


def _pg(dbname: str, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(f"{SERVER} dbname={dbname}", **kwargs)


def create_database(name: str) -> str:
    """A fresh database ``name`` on the local server; its SQLAlchemy URL."""
    if name in REFUSED or not name.replace("_", "").isalnum():
        raise SystemExit(f"--db {name!r}: refused (a bench database of its own, e.g. "
                         "orch_scale)")
    with _pg("postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    """Drop the bench's database (never another: ``create_database`` refused those)."""
    with _pg("postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _keys_and_indexes(conn: psycopg.Connection[Any]) -> tuple[list[tuple[str, str, str]],
                                                              list[tuple[str, str]]]:
    """The foreign and unique keys, and the other non-primary indexes, of the big tables."""
    keys = conn.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid::regclass::text = ANY(%s) AND contype IN ('f', 'u')"
        " ORDER BY contype", [list(TABLES)]).fetchall()
    indexes = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ANY(%s) AND indexname"
        " NOT IN (SELECT conname FROM pg_constraint)", [list(TABLES)]).fetchall()
    return [tuple(k) for k in keys], [tuple(i) for i in indexes]


def load_postgres(dbname: str, generator: Generator) -> Counts:
    """COPY the generated rows in; keys and indexes dropped during the load, rebuilt after."""
    with _pg(dbname, autocommit=True) as conn:
        keys, indexes = _keys_and_indexes(conn)
        for table, name, _ in keys:
            conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
    columns = {"runs": RUN_COLUMNS, "steps": STEP_COLUMNS, "step_attempts": ATTEMPT_COLUMNS}
    with contextlib.ExitStack() as stack:
        copies = []
        for table in TABLES:
            conn = stack.enter_context(_pg(dbname))
            conn.execute("SET synchronous_commit = off")
            cursor = stack.enter_context(conn.cursor())
            copies.append(stack.enter_context(cursor.copy(
                f"COPY {table} ({', '.join(columns[table])}) FROM STDIN")))
        counts = generator.write(copies[0].write_row, copies[1].write_row, copies[2].write_row)
    print(f"  rows copied in {time.perf_counter() - START:.0f} s; building keys and indexes",
          flush=True)
    with _pg(dbname, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        for table, name, definition in reversed(keys):  # unique keys before foreign ones
            conn.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
        for _, definition in indexes:
            conn.execute(definition)
        for table in ("steps", "step_attempts"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                         f"(SELECT max(id) FROM {table}))")
        conn.execute("VACUUM ANALYZE")
    return counts


def load_sqlite(path: str, generator: Generator) -> Counts:
    """Insert the generated rows (indexes in place) in one transaction."""
    import sqlite3
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    buffers: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLES}
    columns = {"runs": RUN_COLUMNS, "steps": STEP_COLUMNS, "step_attempts": ATTEMPT_COLUMNS}

    def flush(table: str) -> None:
        cols = columns[table]
        conn.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                         f"({', '.join('?' * len(cols))})", buffers[table])
        buffers[table].clear()

    def sink(table: str) -> Any:
        def add(row: tuple[Any, ...]) -> None:
            buffers[table].append(row)
            if len(buffers[table]) >= 20000:
                flush(table)
        return add

    conn.execute("BEGIN")
    counts = generator.write(sink("runs"), sink("steps"), sink("step_attempts"))
    for table in TABLES:
        flush(table)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return counts


def _table(before: dict[str, tuple[float, float]] | None,
           after: dict[str, tuple[float, float]]) -> str:
    lines = ["| query | before p50 | before p95 | after p50 | after p95 |", "|---|---|---|---|---|"]
    for label, (p50, p95) in after.items():
        was = before.get(label) if before else None
        lines.append(f"| {label} | {f'{was[0]:.2f}' if was else '-'} | "
                     f"{f'{was[1]:.2f}' if was else '-'} | {p50:.2f} | {p95:.2f} |")
    return "\n".join(lines)


START = time.perf_counter()


def main() -> None:
    global START
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None,
                        help="runs to generate (default 1,000,000; 100,000 with --sqlite)")
    parser.add_argument("--sqlite", action="store_true", help="a SQLite file instead")
    parser.add_argument("--db", default="orch_scale", help="PostgreSQL database to create")
    parser.add_argument("--reps", type=int, default=20, help="calls per query per pass")
    parser.add_argument("--write-runs", type=int, default=100,
                        help="4-step runs per write round (hot path)")
    parser.add_argument("--write-rounds", type=int, default=5,
                        help="rounds with and rounds without the new indexes")
    parser.add_argument("--passes", type=int, default=2,
                        help="before/after query passes, alternating")
    parser.add_argument("--pg-options", default=None,
                        help="server settings for the bench's connections, e.g. "
                             "'-c random_page_cost=1.1'")
    parser.add_argument("--skip-before", action="store_true")
    parser.add_argument("--skip-writes", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--reuse", action="store_true",
                        help="measure on the database a --keep run left (no generation)")
    args = parser.parse_args()
    runs = args.runs or (100_000 if args.sqlite else 1_000_000)
    now = datetime.now(UTC)
    label = "sqlite" if args.sqlite else "postgresql"
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/scale.db" if args.sqlite else \
            f"postgresql+psycopg://postgres@127.0.0.1:5432/{args.db}" if args.reuse \
            else create_database(args.db)
        if args.pg_options and not args.sqlite:
            url += "?options=" + quote(args.pg_options)
        store: Store | None = None
        try:
            store = Store(url)
            store.ensure_schema()
            print(f"{label}: " + (f"reusing database {args.db}" if args.reuse else
                                  f"generating {runs:,} runs over 30 days") +
                  f" (load {os.getloadavg()[0]:.1f})", flush=True)
            START = time.perf_counter()
            if args.reuse:
                counts, generator = Counts(), Generator(0, now)
            elif args.sqlite:
                generator = Generator(runs, now, text_ts=lambda t: t.strftime(
                    "%Y-%m-%d %H:%M:%S.%f"), boolean=int)
                counts = load_sqlite(f"{directory}/scale.db", generator)
            else:
                counts = load_postgres(args.db, Generator(runs, now))
                generator = Generator(0, now)  # sample ids below
            took = time.perf_counter() - START
            samples = generator.sample_ids if args.sqlite else _samples(store)
            if not args.reuse:
                print(f"generated {counts.runs:,} runs, {counts.steps:,} steps, "
                      f"{counts.attempts:,} attempts in {took:.0f} s", flush=True)
            _report(store, args, label, samples)
        finally:
            if store is not None:
                store.dispose()
            if not args.sqlite and not args.keep and not args.reuse:
                drop_database(args.db)
                print(f"dropped database {args.db}")
            elif not args.sqlite:
                print(f"kept database {args.db}")


def _samples(store: Store) -> list[str]:
    with store.reader.connect() as conn:
        return [row[0] for row in conn.exec_driver_sql(
            "SELECT id FROM runs TABLESAMPLE SYSTEM (1) LIMIT 2000")]


def _report(store: Store, args: argparse.Namespace, label: str, samples: list[str]) -> None:
    popular, rare = WORKFLOWS[0][0], WORKFLOWS[-1][0]
    items = {False: queries(popular, rare, before=True), True: queries(popular, rare)}
    took: dict[bool, dict[str, list[float]]] = {False: {}, True: {}}
    states = [True] if args.skip_before else [False, True] * args.passes
    for present in states:  # passes alternate, so the machine's load falls on both
        set_new_indexes(store.engine, present)
        for query, values in time_queries(store, items[present], samples, args.reps).items():
            took[present].setdefault(query, []).extend(values)
        name = RESULTS / f"scale_plans_{'after' if present else 'before'}_{label}.txt"
        if len(took[present][items[present][0].label]) == args.reps:
            name.write_text(explain(store, items[present], samples[0]))
    before = {q: p50_p95(v) for q, v in took[False].items()} if took[False] else None
    after = {q: p50_p95(v) for q, v in took[True].items()}
    print(f"\nquery times, ms, {args.reps} calls x {len(states) // 2 or 1} pass(es) each "
          f"(load {os.getloadavg()[0]:.1f}); plans in "
          f"{RESULTS.relative_to(ROOT)}/scale_plans_*_{label}.txt")
    print(_table(before, after))
    if not args.skip_writes:
        cost = write_cost(store, args.write_runs, args.write_rounds)
        without, with_ = cost["without"], cost["with"]
        print(f"\nstep hot path, median of {args.write_rounds} rounds of {args.write_runs} "
              f"4-step runs each way, alternating (µs): create run {without[0]:.0f} -> "
              f"{with_[0]:.0f} ({with_[0] / without[0]:.2f}x); claim + record a step "
              f"{without[1]:.0f} -> {with_[1]:.0f} ({with_[1] / without[1]:.2f}x)")


if __name__ == "__main__":
    main()
